"""The two mechanism protocols, and guest-side steps that every share mechanism needs.

A mechanism is built by a provider for one VM (it holds what it needs: the QMP socket, the
VBoxManage name, an SSH session factory). ``add`` either completes or rolls back what it did;
``remove`` is idempotent; ``active`` reports what is really in place, read from the hypervisor
and the guest, so vmkit can compare it with the desired state.
"""

from __future__ import annotations

from typing import Protocol

import attrs

from vmkit.guest.ssh import SSHSession
from vmkit.state import ForwardSpec, ShareSpec


class ShareMechanism(Protocol):
    name: str

    def check(self) -> None:
        """Raise ``NotSupported`` / ``GuestModuleMissing`` if this mechanism cannot be used now."""

    def add(self, spec: ShareSpec) -> ShareSpec:
        """Make ``spec.source`` appear at ``spec.target`` in the guest; return it with
        ``mechanism`` and ``tag`` filled in. On failure, undo what was done and raise."""

    def remove(self, spec: ShareSpec) -> None:
        """Unmount and release everything ``add`` made. No error if it is already gone."""

    def active(self) -> list[ShareSpec]:
        """The shares of this mechanism that are in place right now."""


class ForwardMechanism(Protocol):
    name: str

    def add(self, spec: ForwardSpec) -> ForwardSpec:
        """Start forwarding; return the spec with ``mechanism`` filled in."""

    def remove(self, spec: ForwardSpec) -> None:
        """Stop forwarding. No error if it is already gone."""

    def active(self) -> list[ForwardSpec]:
        """The forwards of this mechanism that are in place right now."""


@attrs.frozen
class GuestMount:
    """One line of the guest's /proc/self/mounts, unescaped."""

    source: str
    target: str
    fstype: str
    options: str


def guest_mounts(ssh: SSHSession) -> list[GuestMount]:
    """Everything mounted in the guest, in mount order."""
    out = ssh.run(["cat", "/proc/self/mounts"]).stdout
    return [
        GuestMount(_unescape_mount(f[0]), _unescape_mount(f[1]), f[2], f[3])
        for f in (line.split() for line in out.splitlines())
        if len(f) >= 4
    ]


def guest_mountpoints(ssh: SSHSession) -> dict[str, str]:
    """Mount point → filesystem type of everything mounted in the guest."""
    return {m.target: m.fstype for m in guest_mounts(ssh)}


def _unescape_mount(field: str) -> str:
    # /proc/mounts writes space, tab, newline and backslash as octal escapes.
    out = []
    i = 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    raw = "".join(out)
    # Octal escapes are bytes; re-decode non-ASCII names as UTF-8.
    try:
        return raw.encode("latin-1").decode("utf-8")
    except (UnicodeDecodeError, UnicodeEncodeError):
        return raw


def prepare_mountpoint(ssh: SSHSession, target: str) -> None:
    """Create ``target`` in the guest (as root) so a share can be mounted there."""
    ssh.run(["mkdir", "-p", "--", target], sudo=True)


def unmount(ssh: SSHSession, target: str) -> None:
    """Unmount ``target`` in the guest if it is mounted; lazily if it is busy."""
    if target not in guest_mountpoints(ssh):
        return
    r = ssh.run(["umount", "--", target], sudo=True, check=False)
    if r.exit_code != 0:
        ssh.run(["umount", "-l", "--", target], sudo=True)
