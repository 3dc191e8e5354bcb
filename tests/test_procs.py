"""Processes through psutil (vmkit.host.procs) and the per-OS signals helper (vmkit.host.signals)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from vmkit.host import procs, signals

VMKIT = Path(__file__).resolve().parent.parent / "vmkit"


def sleeper(*args: str, **kw: object) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", *args], **kw)  # type: ignore[call-overload]


def test_alive_checks_the_marker_and_terminate_ends_it() -> None:
    p = sleeper("marker-xyz")
    try:
        assert procs.alive(p.pid, "marker-xyz")
        assert not procs.alive(p.pid, "other-marker")
        assert p.pid in procs.find("marker-xyz")
        assert procs.cmdline(p.pid) == [
            sys.executable,
            "-c",
            "import time; time.sleep(30)",
            "marker-xyz",
        ]
        procs.terminate(p.pid, "marker-xyz", timeout=2)
        assert not procs.running(p.pid)
        assert not procs.alive(p.pid, "marker-xyz")
        assert procs.cmdline(p.pid) is None
        assert p.pid not in procs.find("marker-xyz")
    finally:
        p.kill()
        p.wait()


def test_terminate_leaves_a_process_with_another_marker_alone() -> None:
    p = sleeper()
    try:
        procs.terminate(p.pid, "not-its-marker", timeout=1)
        assert procs.running(p.pid)
    finally:
        p.kill()
        p.wait()


def test_a_zombie_is_not_running_and_wait_gone_reaps_it() -> None:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    # Not reaped by Popen: the exited child stays a zombie until someone waits for it.
    while procs.running(p.pid):
        if procs.wait_gone(p.pid, 5):
            break
    assert not procs.running(p.pid)
    with pytest.raises(ChildProcessError):
        os.waitpid(p.pid, os.WNOHANG)  # wait_gone reaped it


def test_terminate_kills_a_process_that_ignores_sigterm() -> None:
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print(1, flush=True); time.sleep(30)"
    p = subprocess.Popen([sys.executable, "-c", code, "stubborn-marker"], stdout=subprocess.PIPE)
    try:
        assert p.stdout is not None and p.stdout.readline()  # its handler is in place
        procs.terminate(p.pid, "stubborn-marker", timeout=0.5)
        assert not procs.running(p.pid)
    finally:
        p.kill()
        p.wait()


def test_read_pid(tmp_path: Path) -> None:
    f = tmp_path / "x.pid"
    assert procs.read_pid(f) is None
    f.write_text("garbage")
    assert procs.read_pid(f) is None
    f.write_text("123\n")
    assert procs.read_pid(f) == 123


@pytest.mark.parametrize("hard", [True, False])
def test_end_group_ends_the_leader_and_its_children(hard: bool) -> None:
    code = (
        "import subprocess, sys, time; "
        "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)']); "
        "print(c.pid, flush=True); time.sleep(30)"
    )
    p = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, start_new_session=True
    )
    assert p.stdout is not None
    child = int(p.stdout.readline())
    signals.end_group(p.pid, hard=hard)
    p.wait(5)
    assert procs.wait_gone(child, 5)
    signals.end_group(p.pid, hard=hard)  # already gone: fine


def test_die_now_ends_the_process_without_cleanup() -> None:
    code = "import atexit; atexit.register(print, 'cleanup'); from vmkit.host import signals; signals.die_now()"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert r.returncode == -9 and "cleanup" not in r.stdout


def test_no_core_dumps_only_while_inside() -> None:
    import resource

    before = resource.getrlimit(resource.RLIMIT_CORE)
    with signals.no_core_dumps():
        assert resource.getrlimit(resource.RLIMIT_CORE)[0] == 0
    assert resource.getrlimit(resource.RLIMIT_CORE) == before


def test_privilege_questions_on_this_linux_host() -> None:
    assert signals.is_root() == (os.geteuid() == 0)
    assert signals.low_ports_need_root()
    assert signals.NEW_GROUP_FLAGS == 0


# The only modules that may read the host's /proc: Linux-only code that says so. The other
# "/proc" strings in vmkit are commands run in the (Linux) guest.
_HOST_PROC_ALLOWED = {
    "host/virt.py",
    "agent/sftpjail.py",  # /proc/self/fd only under `sys.platform == "linux"`
}
_GUEST_PROC = {
    "mechanisms/base.py",
    "providers/virtualbox/vboxsf.py",
    "testing/fake_ssh.py",
    "agent/listeners.py",  # the guest's /proc/net/tcp, read over SSH
    "guest/boottime.py",  # the guest's /proc/uptime, read over SSH
    "sharepolicy.py",  # guest folders a share may not be mounted on
    "boxes/store.py",  # a hint text: how to mount binfmt_misc on a Linux build host
}


def test_no_code_reads_the_hosts_proc_outside_linux_only_modules() -> None:
    found = {
        p.relative_to(VMKIT).as_posix()
        for p in VMKIT.rglob("*.py")
        if re.search(r"[\"']/proc", p.read_text(encoding="utf-8"))
    }
    assert found - _GUEST_PROC == _HOST_PROC_ALLOWED
    virt = (VMKIT / "host" / "virt.py").read_text(encoding="utf-8")
    assert "Linux only" in virt
    jail = (VMKIT / "agent" / "sftpjail.py").read_text(encoding="utf-8")
    assert 'if sys.platform == "linux" and isinstance(file, int):' in jail


def test_same_process_tells_a_reused_pid_from_the_process_that_was_recorded() -> None:
    me = os.getpid()
    started = procs.started_at(me)
    assert procs.same_process(me, started)
    assert not procs.same_process(me, started - 60)  # another process that had this pid
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child_started = procs.started_at(child.pid)
    child.wait()
    assert not procs.same_process(child.pid, child_started)
