"""Parsers for what ``vagrant`` prints: ``--machine-readable`` lines, ``ssh-config``, states.

Each parser is tested on output recorded from Vagrant 2.3.4 with vagrant-libvirt 0.11.2.
"""

from __future__ import annotations

import re
import shlex

import attrs

from vmkit.providers.base import VMState

# Vagrant's escapes inside machine-readable data: a comma, and newlines written as "\n".
_COMMA = "%!(VAGRANT_COMMA)"


@attrs.frozen
class MRLine:
    """One ``--machine-readable`` line: ``timestamp,target,kind,data...``."""

    timestamp: int
    target: str
    kind: str
    data: tuple[str, ...]


_MR = re.compile(r"^(\d+),([^,]*),([^,]+)(?:,(.*))?$")


def is_machine_readable(line: str) -> bool:
    """True for a ``--machine-readable`` line (the rest of vagrant's output is plain text)."""
    return _MR.match(line) is not None


def unescape(field: str) -> str:
    """A machine-readable data field as the text Vagrant meant."""
    return field.replace(_COMMA, ",").replace("\\n", "\n").replace("\\r", "\r")


def machine_readable(output: str) -> list[MRLine]:
    """The machine-readable lines of ``output``, data fields split and unescaped."""
    lines = []
    for raw in output.splitlines():
        m = _MR.match(raw)
        if m is None:
            continue
        data = tuple(unescape(f) for f in m.group(4).split(",")) if m.group(4) is not None else ()
        lines.append(MRLine(int(m.group(1)), m.group(2), m.group(3), data))
    return lines


@attrs.frozen
class ErrorExit:
    """Vagrant's ``error-exit`` line: the Ruby error class and its message."""

    error_class: str
    message: str


def error_exit(output: str) -> ErrorExit | None:
    """The ``error-exit`` of ``output``, if Vagrant printed one."""
    for line in machine_readable(output):
        if line.kind == "error-exit" and line.data:
            return ErrorExit(line.data[0], ",".join(line.data[1:]).strip())
    return None


def ui_messages(output: str) -> list[str]:
    """The ``ui`` lines (what Vagrant shows a person), each as one line of text."""
    out = []
    for line in machine_readable(output):
        if line.kind == "ui" and len(line.data) >= 2:
            text = " ".join(",".join(line.data[1:]).split())
            if text:
                out.append(text)
    return out


@attrs.frozen
class MachineStatus:
    """One machine of a Vagrant project as ``vagrant status`` reports it."""

    name: str
    provider: str
    vagrant_state: str  # Vagrant's own word: running, not_created, shutoff, poweroff, ...
    state: VMState
    human: str = ""


# Provider state words (VirtualBox's and libvirt's) mapped to vmkit's states.
_STATES: dict[str, VMState] = {
    "running": VMState.RUNNING,
    "not_created": VMState.STOPPED,
    "poweroff": VMState.STOPPED,
    "shutoff": VMState.STOPPED,
    "aborted": VMState.STOPPED,
    "saved": VMState.SAVED,
    "pmsuspended": VMState.SAVED,
    "paused": VMState.PAUSED,
    "starting": VMState.STARTING,
    "restoring": VMState.STARTING,
    "stopping": VMState.STOPPING,
    "shutdown": VMState.STOPPING,  # libvirt: "being shut down"
    "saving": VMState.STOPPING,
    "crashed": VMState.BROKEN,
    "gurumeditation": VMState.BROKEN,
    "stuck": VMState.BROKEN,
    "inaccessible": VMState.BROKEN,
}


def vmkit_state(vagrant_state: str) -> VMState:
    """vmkit's state for a provider's state word; ``UNKNOWN`` for words not known here."""
    return _STATES.get(vagrant_state, VMState.UNKNOWN)


def status(output: str) -> list[MachineStatus]:
    """The machines in ``vagrant status --machine-readable`` output, in the order listed."""
    info: dict[str, dict[str, str]] = {}
    for line in machine_readable(output):
        if not line.target or not line.data:
            continue
        if line.kind in ("provider-name", "state", "state-human-short"):
            info.setdefault(line.target, {})[line.kind] = line.data[0]
    return [
        MachineStatus(
            name=name,
            provider=fields.get("provider-name", ""),
            vagrant_state=fields.get("state", ""),
            state=vmkit_state(fields.get("state", "")),
            human=fields.get("state-human-short", ""),
        )
        for name, fields in info.items()
        if "state" in fields
    ]


@attrs.frozen
class SSHConfig:
    """The parts of ``vagrant ssh-config`` vmkit uses."""

    host_alias: str
    hostname: str
    port: int
    user: str
    identity_files: tuple[str, ...]


def ssh_config(output: str) -> list[SSHConfig]:
    """Each ``Host`` block of ``vagrant ssh-config`` output."""
    blocks: list[dict[str, list[str]]] = []
    for raw in output.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(None, 1)
        if len(parts) != 2:
            continue
        key, value = parts[0].lower(), parts[1].strip()
        if key == "host":
            blocks.append({"host": [value]})
        elif blocks:
            # Vagrant quotes paths with spaces; shlex takes the quotes off.
            words = shlex.split(value) if '"' in value else [value]
            blocks[-1].setdefault(key, []).append(" ".join(words))
    out = []
    for b in blocks:
        if "hostname" not in b or "user" not in b:
            continue
        out.append(
            SSHConfig(
                host_alias=b["host"][0],
                hostname=b["hostname"][0],
                port=int(b.get("port", ["22"])[0]),
                user=b["user"][0],
                identity_files=tuple(b.get("identityfile", [])),
            )
        )
    return out


def host_key_line(output: str, kind: str = "ssh-ed25519") -> str | None:
    """``"ssh-ed25519 AAAA..."`` from the output of ``cat`` on a guest's public host key."""
    for raw in output.splitlines():
        parts = raw.strip().split()
        if len(parts) >= 2 and parts[0] == kind and re.fullmatch(r"[A-Za-z0-9+/]+=*", parts[1]):
            return f"{parts[0]} {parts[1]}"
    return None
