"""The two mechanism protocols, and guest-side steps that every share mechanism needs.

A mechanism is built by a provider for one VM (it holds what it needs: the QMP socket, the
VBoxManage name, an SSH session factory). ``add`` either completes or rolls back what it did;
``remove`` is idempotent; ``active`` reports what is really in place, read from the hypervisor
and the guest, so vmkit can compare it with the desired state.

Everything a mechanism makes is named after the share or forward (a virtio-fs tag from the
guest path, a rule name from the host port), so ``leftovers`` can find what a killed command
left, by name, and hand back specs that ``remove`` clears.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import attrs

from vmkit.errors import ShareBusy
from vmkit.guest.ssh import SSHSession
from vmkit.state import ForwardSpec, ShareSpec


@attrs.frozen
class Leftover:
    """A piece of a share or forward that exists although the VM's record does not want it
    (left by a command that was killed); ``remove(share or forward)`` clears it."""

    mechanism: str
    what: str  # "chardev chr-vmkit-…", "virtiofsd (pid 123)", "guest mount /data", ...
    share: ShareSpec | None = None
    forward: ForwardSpec | None = None


class ShareMechanism(Protocol):
    name: str

    def planned(self, spec: ShareSpec) -> ShareSpec:
        """``spec`` with ``mechanism`` and ``tag`` as ``add`` will fill them in (written to
        the record's intent before ``add`` begins, so a killed ``add`` is found by name)."""

    def leftovers(self, wanted: Sequence[ShareSpec]) -> list[Leftover]:
        """What this mechanism has in place that is none of ``wanted``."""

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

    def leftovers(self, wanted: Sequence[ForwardSpec]) -> list[Leftover]:
        """What this mechanism forwards that is none of ``wanted``."""

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


#: Lists the guest processes that keep a mount in use: a working folder, root or open file on
#: its filesystem (compared by device number, so a container that sees it under another path
#: counts too). Prints "PID COMMAND CONTAINER" lines; CONTAINER is the Docker container id or "-".
_HOLDERS = r"""
dev=$(timeout 5 stat -c %d "$1") || exit 0
for p in /proc/[0-9]*; do
  stat -L -c %d $p/cwd $p/root $p/fd/* 2>/dev/null | grep -qx "$dev" || continue
  c=$(sed -n 's,.*docker[-/]\([0-9a-f]\{12\}\).*,\1,p' $p/cgroup 2>/dev/null | head -n1)
  echo "${p#/proc/} $(cat $p/comm 2>/dev/null) ${c:--}"
done
"""


def mount_holders(ssh: SSHSession, mount: GuestMount) -> list[str]:
    """Who keeps ``mount`` busy in the guest: ``process 812 (sleep) in container 3f2a…``."""
    argv = ["sh", "-c", _HOLDERS, "sh", mount.target]
    out = ssh.run(argv, sudo=True, check=False).stdout
    holders = []
    for line in out.splitlines():
        pid, _, rest = line.partition(" ")
        comm, _, container = rest.rpartition(" ")
        where = f" in container {container}" if container not in ("", "-") else ""
        holders.append(f"process {pid} ({comm}){where}")
    return holders


def release_mount(ssh: SSHSession, target: str) -> None:
    """Unmount ``target`` in the guest, refusing (``ShareBusy``) while something uses it.

    Used for leftovers: a busy mount is not forced away (a container would keep a dead
    folder); the error names who holds it and what to do.
    """
    mount = next((m for m in reversed(guest_mounts(ssh)) if m.target == target), None)
    if mount is None:
        return
    holders = mount_holders(ssh, mount)
    if not holders and ssh.run(["umount", "--", target], sudo=True, check=False).ok:
        return
    if not holders:
        holders = mount_holders(ssh, mount)
    containers = sorted({h.rsplit(" ", 1)[-1] for h in holders if " in container " in h})
    what = ", ".join(holders) or "a process vmkit could not name"
    stop = (
        f"stop the container ({'; '.join(f'vmkit docker -- stop {c}' for c in containers)})"
        if containers
        else "end those processes or leave the folder"
    )
    raise ShareBusy(
        f"the guest mount {target} (left by an interrupted command) is in use by {what}",
        hint=f"{stop}, then run `vmkit repair`",
    )
