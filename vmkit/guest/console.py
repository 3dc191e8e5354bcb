"""What a guest's serial console log says about how far its boot got.

Every boot-timeout message is derived from here, so a hint never contradicts the log: an empty
log means the kernel never ran, a panic is quoted, a kernel that reached userspace without sshd
is told apart from an sshd that refuses vmkit's key.
"""

from __future__ import annotations

import re
from pathlib import Path

import attrs

#: The kernel proper has run once its banner is on the console (its real-mode setup code may
#: print a line or two before, and still hang right after, as on a paravirtual KVM).
KERNEL_BANNER = re.compile(r"Linux version \S+")
_STOPPED = re.compile(
    r"Kernel panic - not syncing.*|VFS: Unable to mount root fs.*|"
    r"Gave up waiting for root (?:file system )?device.*|ALERT! .* does not exist.*|"
    r"No working init found.*|Kernel Offset: .*"
)
_USERSPACE = re.compile(
    r"Run /\S*init as init process|systemd\[1\]|Welcome to |Reached target|\blogin: |"
    r"Freeing unused kernel image"
)
_READ_LIMIT = 4 * 1024 * 1024


@attrs.frozen
class ConsoleState:
    """How far a boot got, as its console log shows it."""

    printed: bool  # any byte at all
    kernel: bool  # the kernel's banner
    stopped: str  # the line that says the kernel gave up ("" if none)
    userspace: bool  # init was started
    last: str  # the last non-empty line


def read(path: Path) -> ConsoleState:
    """Read the console log at ``path`` (a missing log reads as empty)."""
    try:
        with path.open("rb") as f:
            data = f.read(_READ_LIMIT)
    except OSError:
        data = b""
    text = data.decode(errors="replace").replace("\r", "")
    stopped = _STOPPED.search(text)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return ConsoleState(
        printed=bool(data),
        kernel=KERNEL_BANNER.search(text) is not None,
        stopped=stopped.group(0).strip() if stopped else "",
        userspace=_USERSPACE.search(text) is not None,
        last=lines[-1][:200] if lines else "",
    )


def kernel_started(path: Path) -> bool:
    """True once the kernel's banner is in the log: the boot watchdog's question."""
    return read(path).kernel


#: What each readiness probe waits for, so the diagnosis knows which step did not come.
WAITING_FOR_SSH = "ssh"
WAITING_FOR_LOGIN = "login"
WAITING_FOR_DOCKER = "docker"


def diagnose(path: Path, waiting_for: str, seconds: float) -> str:
    """One sentence on why the boot did not get ready, from the console log at ``path``."""
    c = read(path)
    after = f"after {seconds:.0f} s"
    if not c.printed:
        return f"the VM's kernel never printed a line {after}: it did not run at all"
    if c.stopped:
        return f"the VM's kernel stopped {after}: {c.stopped!r}"
    if not c.kernel:
        return f"the VM's kernel never got past its start {after}; its last words: {c.last!r}"
    if waiting_for == WAITING_FOR_DOCKER:
        return f"SSH works but dockerd did not answer {after}"
    if waiting_for == WAITING_FOR_LOGIN:
        return (
            f"the guest's sshd answers but refused vmkit's key {after} "
            "(the seed disk with the VM's key was not read)"
        )
    if not c.userspace:
        return f"the kernel started but never ran init {after}; last console line: {c.last!r}"
    return (
        f"the guest reached userspace but its sshd did not answer {after}; "
        f"last console line: {c.last!r}"
    )
