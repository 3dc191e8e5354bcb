"""``vmkit env``: shell code that points the docker CLI at a VM, for each kind of shell.

Like ``docker-machine env``: the output sets (or with ``unset`` clears) environment variables
and ends with a comment telling how to apply it. Each shell gets its own quoting, so paths
with spaces, quotes, ``$`` and non-ASCII letters arrive unchanged.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

__all__ = ["SHELLS", "detect_shell", "render"]

SHELLS = ("sh", "bash", "zsh", "fish", "powershell", "cmd")


def detect_shell(environ: Mapping[str, str] | None = None, platform: str = sys.platform) -> str:
    """The user's shell: from ``$SHELL`` on Unix, PowerShell unless ``cmd`` on Windows."""
    env = os.environ if environ is None else environ
    if platform == "win32":
        # PSModulePath is set in every PowerShell session, never in a bare cmd.exe.
        return "powershell" if "PSModulePath" in env else "cmd"
    name = os.path.basename(env.get("SHELL", "")).lower()
    for shell in ("fish", "zsh", "bash"):
        if name.startswith(shell):
            return shell
    if name.startswith("pwsh") or name.startswith("powershell"):
        return "powershell"
    return "sh"


def _sh(value: str) -> str:
    return "'" + value.replace("'", "'\\''") + "'"


def _fish(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _powershell(value: str) -> str:
    # Single-quoted strings expand nothing; the only escape is doubling the quote (any of the
    # Unicode single quotes PowerShell accepts).
    for q in ("'", "\u2018", "\u2019", "\u201a", "\u201b"):
        value = value.replace(q, q + q)
    return "'" + value + "'"


def _cmd(value: str) -> str:
    # In `SET "NAME=value"` only % (variable expansion) needs care; cmd has no quote escape.
    if '"' in value or "\n" in value:
        raise ValueError(f"cmd.exe cannot hold {value!r} in a variable")
    return value.replace("%", "%%")


def render(
    variables: Mapping[str, str],
    shell: str,
    *,
    unset: bool = False,
    command: str = "vmkit env",
) -> str:
    """The text to print: lines setting (or unsetting) ``variables`` in ``shell``'s syntax."""
    if shell not in SHELLS:
        raise ValueError(f"unknown shell {shell!r}")
    lines: list[str] = []
    for name, value in variables.items():
        if shell in ("sh", "bash", "zsh"):
            lines.append(f"unset {name}" if unset else f"export {name}={_sh(value)}")
        elif shell == "fish":
            lines.append(f"set -e {name};" if unset else f"set -gx {name} {_fish(value)};")
        elif shell == "powershell":
            lines.append(
                f"Remove-Item Env:\\{name} -ErrorAction SilentlyContinue"
                if unset
                else f"$Env:{name} = {_powershell(value)}"
            )
        else:
            lines.append(f"SET {name}=" if unset else f'SET "{name}={_cmd(value)}"')
    lines.append(_how_to(shell, command))
    return "\n".join(lines) + "\n"


def _how_to(shell: str, command: str) -> str:
    if shell in ("sh", "bash", "zsh"):
        return f'# Run this command to configure your shell:\n# eval "$({command})"'
    if shell == "fish":
        return f"# Run this command to configure your shell:\n# {command} | source"
    if shell == "powershell":
        return f"# Run this command to configure your shell:\n# & {command} | Invoke-Expression"
    return (
        "REM Run this command to configure your shell:\n"
        f"REM @FOR /f \"tokens=*\" %i IN ('{command}') DO @%i"
    )
