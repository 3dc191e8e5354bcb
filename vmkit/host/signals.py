"""What differs between host OSes in ending processes, process groups, core dumps and privilege.

Linux and macOS have signals, sessions and process groups; Windows has none of them: a process
ends by ``TerminateProcess`` (what psutil's ``kill``/``terminate`` call there) and the nearest
thing to a group is a process with its descendants. Every use of these in vmkit goes through
here, behind ``sys.platform`` checks, so each platform's type check sees only what it has.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import NoReturn

import psutil

#: ``creationflags`` for a child that must not share vmkit's console: on Windows a Ctrl-C in
#: vmkit's console would otherwise reach it, and closing that console window would end it
#: (POSIX uses ``start_new_session``). Its output goes where vmkit sends it, never a console.
if sys.platform == "win32":
    NEW_GROUP_FLAGS = subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.DETACHED_PROCESS
else:
    NEW_GROUP_FLAGS = 0


def kill(pid: int) -> None:
    """End ``pid`` at once (SIGKILL; TerminateProcess on Windows); already gone is fine."""
    with contextlib.suppress(psutil.NoSuchProcess):
        psutil.Process(pid).kill()


def terminate(pid: int) -> None:
    """Ask ``pid`` to end (SIGTERM; on Windows, which cannot ask, TerminateProcess)."""
    with contextlib.suppress(psutil.NoSuchProcess):
        psutil.Process(pid).terminate()


def end_group(leader: int, *, hard: bool) -> None:
    """End the process group that ``leader`` (started in its own session) leads.

    POSIX: SIGKILL (``hard``) or SIGTERM to the whole group. Windows has no process groups
    to signal: the leader and every descendant are terminated.
    """
    if sys.platform == "win32":
        try:
            tree = psutil.Process(leader)
            procs = [tree, *tree.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        for p in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
    else:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(leader, signal.SIGKILL if hard else signal.SIGTERM)


def die_now() -> NoReturn:
    """End this process the way ``kill -9`` or a power cut would: no cleanup, no flush."""
    if sys.platform == "win32":
        psutil.Process().kill()
    else:
        os.kill(os.getpid(), signal.SIGKILL)
    raise SystemExit(137)  # not reached: the kill does not return


@contextlib.contextmanager
def no_core_dumps() -> Iterator[None]:
    """Children started inside get no core dumps (Windows writes none to suppress)."""
    if sys.platform == "win32":
        yield
        return
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_CORE)
    resource.setrlimit(resource.RLIMIT_CORE, (0, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_CORE, (soft, hard))


def is_root() -> bool:
    """True when running as root (POSIX effective uid 0); Windows has no root user: False."""
    if sys.platform == "win32":
        return False
    return os.geteuid() == 0


def low_ports_need_root() -> bool:
    """Whether binding a TCP/UDP port below 1024 needs root on this host.

    Linux: yes (by default). macOS dropped the rule in 10.14 and Windows never had it.
    """
    return sys.platform == "linux"
