"""Processes vmkit started and must find again: pid files checked against the real process.

A pid file alone proves nothing (pids are reused), so every check also looks for a marker
string (a socket path unique to the VM) in the process's command line.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path


def read_pid(path: Path) -> int | None:
    """The pid in ``path``, or None if the file is missing or garbled."""
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def cmdline(pid: int) -> list[str] | None:
    """The argv of ``pid`` (Linux /proc), or None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    if not raw:
        return None  # a zombie has an empty cmdline
    return raw.rstrip(b"\0").decode(errors="replace").split("\0")


def alive(pid: int | None, marker: str) -> bool:
    """True if ``pid`` runs and ``marker`` appears in its command line."""
    if pid is None:
        return False
    args = cmdline(pid)
    return args is not None and any(marker in a for a in args)


def wait_gone(pid: int, timeout: float) -> bool:
    """Wait up to ``timeout`` s for ``pid`` to exit; True if it did."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cmdline(pid) is None:
            return True
        # Reap it if it is our child, else it lingers as a zombie.
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.05)
    return cmdline(pid) is None


def terminate(pid: int, marker: str, *, timeout: float = 5.0) -> None:
    """SIGTERM ``pid`` if it is still the process ``marker`` names, SIGKILL after ``timeout``."""
    if not alive(pid, marker):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if wait_gone(pid, timeout):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    wait_gone(pid, 5.0)


def find(marker: str) -> list[int]:
    """Pids of every process whose command line contains ``marker`` (Linux /proc)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            args = cmdline(int(entry.name))
            if args is not None and any(marker in a for a in args):
                out.append(int(entry.name))
    return out
