"""The box catalog: which boxes vmkit knows, where each comes from, what is in it.

The catalog ships as ``boxes/catalog.toml``; a teacher can add boxes of their own in
``<data dir>/catalog.toml`` (same format; an entry with the same name and arch replaces the
shipped one). Every problem in a file is collected and reported at once, with the file and the
entry it is in, so a broken catalog is fixed in one go.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import attrs

from vmkit import home, resources
from vmkit.errors import BoxNotFound, InvalidInput

SOURCES = ("local", "vagrant-cloud", "url")
PROVIDERS = ("qemu", "libvirt", "virtualbox")
ARCHES = ("amd64", "i386", "arm64")

_KEYS = {
    "name",
    "arch",
    "description",
    "source",
    "providers",
    "build",
    "url",
    "checksum",
    "contents",
    "notes",
}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
_CHECKSUM = re.compile(r"^sha256:[0-9a-f]{64}$")


class CatalogInvalid(InvalidInput):
    """A catalog file cannot be read or has entries that break its rules."""

    default_hint = "fix the entries named above; boxes/catalog.toml documents every key"


@attrs.frozen
class CatalogEntry:
    """One box in the catalog."""

    name: str
    arch: str
    description: str
    source: str
    providers: tuple[str, ...]
    build: str = ""
    url: str = ""
    checksum: str = ""  # "sha256:HEX", empty when the box is built locally or not pinned
    contents: tuple[str, ...] = ()
    notes: str = ""

    @property
    def key(self) -> tuple[str, str]:
        return (self.name, self.arch)


def builtin_path() -> Path:
    """The catalog that ships with vmkit."""
    return resources.data_dir(resources.BOXES) / "catalog.toml"


def user_path() -> Path:
    """The teacher's own additions, if the file exists."""
    return home.data_dir() / "catalog.toml"


def load(paths: Sequence[Path] | None = None) -> list[CatalogEntry]:
    """All catalog entries, sorted by name and arch.

    Reads ``paths`` in order (default: the shipped catalog, then the user's if it exists); a
    later entry with the same name and arch replaces an earlier one.
    """
    if paths is None:
        paths = [builtin_path()] + ([user_path()] if user_path().is_file() else [])
    merged: dict[tuple[str, str], CatalogEntry] = {}
    for path in paths:
        for entry in load_file(path):
            merged[entry.key] = entry
    return sorted(merged.values(), key=lambda e: e.key)


def load_file(path: Path) -> list[CatalogEntry]:
    """The entries of one catalog file; ``CatalogInvalid`` listing every problem in it."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise CatalogInvalid(f"box catalog {path} does not exist", hint="") from e
    except tomllib.TOMLDecodeError as e:
        raise CatalogInvalid(f"box catalog {path} is not valid TOML: {e}") from e
    return parse(data, str(path))


def parse(data: dict[str, Any], where: str = "catalog") -> list[CatalogEntry]:
    """Entries from already-parsed TOML ``data``; ``where`` names the source in errors."""
    problems: list[str] = []
    schema = data.get("schema", 1)
    if schema != 1:
        raise CatalogInvalid(f"{where}: schema {schema!r} is not supported (vmkit reads schema 1)")
    boxes = data.get("box", [])
    if not isinstance(boxes, list):
        raise CatalogInvalid(f"{where}: `box` must be an array of tables ([[box]])")
    entries: list[CatalogEntry] = []
    seen: dict[tuple[str, str], int] = {}
    for i, raw in enumerate(boxes, start=1):
        label = f"box #{i}" + (
            f" ({raw['name']})"
            if isinstance(raw, dict) and isinstance(raw.get("name"), str)
            else ""
        )
        entry, errs = _entry(raw)
        problems.extend(f"{label}: {e}" for e in errs)
        if entry is None:
            continue
        if entry.key in seen:
            problems.append(
                f"{label}: {entry.name} {entry.arch} is listed already as box #{seen[entry.key]}"
            )
            continue
        seen[entry.key] = i
        entries.append(entry)
    if problems:
        raise CatalogInvalid(f"{where} has {len(problems)} problem(s): " + "; ".join(problems))
    return entries


def find(
    name: str, arch: str | None = None, entries: Iterable[CatalogEntry] | None = None
) -> CatalogEntry:
    """The entry for ``name`` (and ``arch``: amd64 is preferred when not given)."""
    candidates = [e for e in (load() if entries is None else entries) if e.name == name]
    if arch is not None:
        candidates = [e for e in candidates if e.arch == arch]
    if not candidates:
        what = name if arch is None else f"{name} ({arch})"
        raise BoxNotFound(
            f"box {what} is not in the catalog",
            hint="see `vmkit box catalog` for the boxes vmkit knows",
        )
    candidates.sort(key=lambda e: (e.arch != "amd64", e.arch))
    return candidates[0]


def _entry(raw: object) -> tuple[CatalogEntry | None, list[str]]:
    if not isinstance(raw, dict):
        return None, ["is not a table"]
    errs: list[str] = []
    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        errs.append(f"unknown key(s) {', '.join(unknown)}")

    def text(key: str, required: bool = False) -> str:
        value = raw.get(key, "")
        if not isinstance(value, str):
            errs.append(f"`{key}` must be a string")
            return ""
        if required and not value.strip():
            errs.append(f"`{key}` is missing or empty")
        return value.strip()

    def strings(key: str) -> tuple[str, ...]:
        value = raw.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            errs.append(f"`{key}` must be a list of strings")
            return ()
        return tuple(value)

    name = text("name", required=True)
    arch = text("arch", required=True)
    description = text("description", required=True)
    source = text("source", required=True)
    build = text("build")
    url = text("url")
    checksum = text("checksum")
    notes = text("notes")
    providers = strings("providers")
    contents = strings("contents")

    if name and not _NAME.match(name):
        errs.append(f"name {name!r} must be NAME or OWNER/NAME (letters, digits, '.', '_', '-')")
    if arch and arch not in ARCHES:
        errs.append(f"arch {arch!r} is not one of {', '.join(ARCHES)}")
    if source and source not in SOURCES:
        errs.append(f"source {source!r} is not one of {', '.join(SOURCES)}")
    if not providers and "providers" in raw:
        errs.append("`providers` is empty")
    elif "providers" not in raw:
        errs.append("`providers` is missing")
    for p in providers:
        if p not in PROVIDERS:
            errs.append(f"provider {p!r} is not one of {', '.join(PROVIDERS)}")
    if source == "local" and not build:
        errs.append("a local box needs `build`, the command that makes it")
    if source == "vagrant-cloud" and "/" not in name:
        errs.append("a Vagrant Cloud box is named OWNER/NAME")
    if source == "url" and not url:
        errs.append("a box from a URL needs `url`")
    if checksum and not _CHECKSUM.match(checksum):
        errs.append("`checksum` must be sha256: followed by 64 lowercase hex digits")
    if errs:
        return None, errs
    return (
        CatalogEntry(
            name=name,
            arch=arch,
            description=description,
            source=source,
            providers=providers,
            build=build,
            url=url,
            checksum=checksum,
            contents=contents,
            notes=notes,
        ),
        [],
    )
