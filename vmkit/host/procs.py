"""Processes vmkit started and must find again: pid files checked against the real process.

A pid file alone proves nothing (pids are reused), so every check also looks for a marker
string (a socket path unique to the VM) in the process's command line. Processes are read
through psutil, which knows how each host OS (Linux, macOS, Windows) tells them.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import psutil

from vmkit.host import signals

_GONE = (psutil.NoSuchProcess, psutil.ZombieProcess)


def read_pid(path: Path) -> int | None:
    """The pid in ``path``, or None if the file is missing or garbled."""
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def running(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        return psutil.Process(pid).status() not in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
    except _GONE:
        return False
    except psutil.AccessDenied:
        return True  # someone else's process, but it exists


def age(pid: int) -> float:
    """Seconds since process ``pid`` started; ``ProcessLookupError`` if it is gone."""
    try:
        return time.time() - psutil.Process(pid).create_time()
    except _GONE:
        raise ProcessLookupError(pid) from None


def started_at(pid: int) -> float:
    """When process ``pid`` started, in seconds since the epoch; ``ProcessLookupError`` if gone."""
    try:
        return float(psutil.Process(pid).create_time())
    except _GONE:
        raise ProcessLookupError(pid) from None


def same_process(pid: int, started: float) -> bool:
    """True if ``pid`` runs and is the process that started at ``started`` (not a reused pid)."""
    try:
        return running(pid) and abs(started_at(pid) - started) < 0.01
    except ProcessLookupError:
        return False


def cmdline(pid: int) -> list[str] | None:
    """The argv of ``pid``, or None if it is gone.

    A process that is exec'ing or changing namespaces shows an empty command line for a
    moment; that is read again rather than taken as "gone". A process whose command line
    may not be read (another user's) gives ``[]``: it matches no marker.
    """
    for _ in range(50):
        if not running(pid):
            return None
        try:
            args = psutil.Process(pid).cmdline()
        except _GONE:
            return None
        except psutil.AccessDenied:
            return []
        if args:
            return args
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
        # Reaps it if it is our child (else it would linger as a zombie); polls otherwise.
        with contextlib.suppress(*_GONE, psutil.TimeoutExpired, psutil.AccessDenied):
            psutil.Process(pid).wait(timeout=0)
        if not running(pid):
            return True
        time.sleep(0.05)
    return not running(pid)


def terminate(pid: int, marker: str, *, timeout: float = 5.0) -> None:
    """Ask ``pid`` to end if it is still the process ``marker`` names; kill it after ``timeout``."""
    if not alive(pid, marker):
        return
    signals.terminate(pid)
    if wait_gone(pid, timeout):
        return
    signals.kill(pid)
    wait_gone(pid, 5.0)


def find(marker: str) -> list[int]:
    """Pids of every process whose command line contains ``marker``."""
    # One read each: kernel threads have an empty command line for good, and waiting for it
    # to fill (as ``cmdline`` does) would cost 0.1 s per kernel thread.
    out = []
    for p in psutil.process_iter(["cmdline"]):
        args = p.info["cmdline"] or []
        if any(marker in a for a in args) and running(p.pid):
            out.append(p.pid)
    return out
