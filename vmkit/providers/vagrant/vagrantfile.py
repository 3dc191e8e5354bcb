"""Vagrantfiles from jinja2 templates, with every value written as a Ruby literal.

A Vagrantfile is Ruby, so a value pasted into it as text can end a string early (a student
called ``O'Brien``) or run code (``#{...}`` inside double quotes). Here the template cannot
forget to escape: every ``{{ expression }}`` passes through ``ruby_literal``, so a string
always comes out as a double-quoted Ruby string with ``"``, ``\\``, ``#`` and control
characters escaped, numbers as numbers, ``True`` as ``true``, lists as arrays. Ruby syntax a
template needs (``:id``, ``do |vb|``) is written in the template text itself.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jinja2

from vmkit import resources
from vmkit.errors import InvalidInput, NotFound

#: The templates shipped with vmkit.
TEMPLATE_SUFFIX = ".Vagrantfile.j2"

#: A name Vagrant takes as machine name and as host name (one DNS label, lowercase).
MACHINE_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")


def templates_dir() -> Path:
    """The folder of the shipped ``*.Vagrantfile.j2`` templates."""
    return resources.data_dir(resources.VAGRANTFILE_TEMPLATES)


def ruby_literal(value: Any) -> str:
    """``value`` as Ruby source: strings, ints, floats, bools, None, lists and dicts of them."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return ruby_string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(ruby_literal(v) for v in value) + "]"
    if isinstance(value, Mapping):
        items = (f"{ruby_literal(k)} => {ruby_literal(v)}" for k, v in value.items())
        return "{" + ", ".join(items) + "}"
    raise TypeError(f"cannot write a {type(value).__name__} into a Vagrantfile")


_ESCAPES = {'"': '\\"', "\\": "\\\\", "#": "\\#", "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def ruby_string(text: str) -> str:
    """``text`` as a double-quoted Ruby string that evaluates back to exactly ``text``."""
    out = []
    for ch in text:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{{{ord(ch):x}}}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _finalize(value: Any) -> str:
    if isinstance(value, jinja2.Undefined):
        # StrictUndefined raises UndefinedError, naming the variable, when made a string.
        return str(value)
    return ruby_literal(value)


@functools.lru_cache(maxsize=8)
def _environment(folder: str) -> jinja2.Environment:
    # A teacher's own template can include the shipped partials (``_machine.j2``).
    loaders = [jinja2.FileSystemLoader(folder), jinja2.FileSystemLoader(str(templates_dir()))]
    return jinja2.Environment(
        loader=jinja2.ChoiceLoader(loaders),
        undefined=jinja2.StrictUndefined,
        finalize=_finalize,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def find_template(name_or_path: str | Path) -> Path:
    """A shipped template by short name (``"oommf"``) or a template file by path."""
    path = Path(name_or_path)
    if path.suffix == ".j2" or len(path.parts) > 1:
        if not path.is_file():
            raise NotFound(f"Vagrantfile template {path} does not exist")
        return path.resolve()
    shipped = templates_dir() / f"{name_or_path}{TEMPLATE_SUFFIX}"
    if not shipped.is_file():
        names = ", ".join(shipped_templates()) or "none"
        raise NotFound(
            f"no Vagrantfile template named {str(name_or_path)!r}",
            hint=f"shipped templates: {names}; or give the path of a .j2 file",
        )
    return shipped


def shipped_templates() -> list[str]:
    """Short names of the templates that ship with vmkit."""
    folder = templates_dir()
    if not folder.is_dir():
        return []
    return sorted(p.name[: -len(TEMPLATE_SUFFIX)] for p in folder.glob(f"*{TEMPLATE_SUFFIX}"))


def render(template: str | Path, variables: Mapping[str, Any]) -> str:
    """The Vagrantfile text of ``template`` with ``variables``.

    A variable the template uses but ``variables`` lacks is an ``InvalidInput`` naming it,
    never an empty string in the output.
    """
    path = find_template(template)
    env = _environment(str(path.parent))
    try:
        return env.get_template(path.name).render(**variables)
    except jinja2.UndefinedError as e:
        raise InvalidInput(
            f"Vagrantfile template {path.name} needs a value that was not given: {e.message}"
        ) from e
    except jinja2.TemplateSyntaxError as e:
        raise InvalidInput(f"Vagrantfile template {path} line {e.lineno}: {e.message}") from e
    except TypeError as e:
        raise InvalidInput(f"Vagrantfile template {path.name}: {e}") from e


def validate_name(name: str, what: str = "machine name") -> str:
    """``name`` if Vagrant accepts it as a machine and host name, else ``InvalidInput``.

    Vagrant refuses ``[]{}/`` in machine names and wants host names of letters, digits, ``-``
    and ``.`` not starting with ``-`` or ``.``; vmkit uses one name for both, without dots.
    """
    if not MACHINE_NAME.match(name):
        raise InvalidInput(
            f"{what} {name!r} cannot be a Vagrant machine name",
            hint="use 1-63 lowercase letters, digits and '-', not starting or ending with '-'",
        )
    return name
