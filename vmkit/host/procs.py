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


def running(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # The state letter follows the command name, which is in parentheses and may hold spaces.
    return stat[stat.rfind(")") + 2 : stat.rfind(")") + 3] not in ("Z", "X", "")


def cmdline(pid: int) -> list[str] | None:
    """The argv of ``pid`` (Linux /proc), or None if it is gone.

    A process that is exec'ing or changing namespaces shows an empty cmdline for a moment;
    that is read again rather than taken as "gone".
    """
    for _ in range(50):
        if not running(pid):
            return None
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return None
        if raw:
            return raw.rstrip(b"\0").decode(errors="replace").split("\0")
        time.sleep(0.002)
    return []


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
        # Reap it if it is our child, else it lingers as a zombie.
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        if not running(pid):
            return True
        time.sleep(0.05)
    return not running(pid)


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
    # One read each: kernel threads have an empty command line for good, and waiting for it
    # to fill (as ``cmdline`` does) would cost 0.1 s per kernel thread.
    needle = marker.encode()
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                raw = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if needle in raw and running(int(entry.name)):
                out.append(int(entry.name))
    return out
