"""QEMU started the way it must be on Windows, run here on Linux: no ``-daemonize`` (vmkit
starts it detached, its output in qemu.log), the monitor on a TCP port of 127.0.0.1, no
shared-memory RAM (so shares are sshfs). Only the Popen flags differ on a real Windows host."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

import vmkit.vm as api
from vmkit import state
from vmkit.errors import HardwareVirtualizationUnavailable, PortInUse
from vmkit.host import procs
from vmkit.host.netutil import free_port, read_banner
from vmkit.providers.base import VMState
from vmkit.providers.qemu import QemuProvider
from vmkit.providers.qemu import provider as qemu_provider
from vmkit.providers.qemu.qmp import TCP_PORT_KEY
from vmkit.state import SSHEndpoint, VMRecord


@pytest.fixture
def windows_way(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(QemuProvider, "host_os", "win32")


@pytest.mark.vm
def test_a_vm_started_detached_with_a_tcp_monitor_works(
    windows_way: None, vmkit_home: Path, tmp_path: Path
) -> None:
    vm = api.up("winway", memory=768, accel="tcg")
    try:
        files = vm.record.files
        port = vm.record.extra[TCP_PORT_KEY]
        assert isinstance(port, int) and port != vm.record.ssh.port  # type: ignore[union-attr]
        assert not files.qmp.exists()  # no unix socket: the monitor is the TCP port
        argv = procs.cmdline(procs.read_pid(files.pid) or 0) or []
        assert "-daemonize" not in argv and f"tcp:127.0.0.1:{port},server=on,wait=off" in argv
        assert vm.status().state is VMState.RUNNING
        assert vm.run(["uname", "-m"]).stdout.strip() == "x86_64"

        folder = tmp_path / "data"
        folder.mkdir()
        (folder / "hello.txt").write_text("from the host")
        spec = vm.share(folder)
        assert spec.mechanism == "sshfs"  # RAM is not shared memory: no virtio-fs
        assert vm.run(["cat", f"{spec.target}/hello.txt"]).stdout == "from the host"

        host_port = free_port()
        fwd = vm.forward(host_port, 22)
        assert fwd.mechanism == "hostfwd"  # added through the TCP monitor
        assert (read_banner("127.0.0.1", host_port, timeout=10) or "").startswith("SSH-2.0")

        pid = procs.read_pid(files.pid)
        vm.stop()
        assert vm.status().state is VMState.STOPPED
        assert pid is not None and not procs.running(pid)
    finally:
        vm.destroy()


def _fake_qemu(tmp_path: Path, script: str) -> str:
    exe = tmp_path / "qemu-system-x86_64"
    exe.write_text("#!/bin/sh\n" + script)
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    return str(exe)


@pytest.mark.parametrize(
    ("output", "error"),
    [
        (
            "qemu-system-x86_64: error: failed to set MSR 0x10a to 0x0",
            HardwareVirtualizationUnavailable,
        ),
        ("qemu-system-x86_64: Could not set up host forwarding rule 'tcp:...'", PortInUse),
    ],
)
def test_a_detached_qemu_that_exits_at_once_raises_its_known_error(
    windows_way: None,
    vmkit_home: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    output: str,
    error: type[Exception],
) -> None:
    """What QEMU printed before it ended is read back from qemu.log and mapped as for a
    daemonizing QEMU (a busy port is retried, then reported)."""
    exe = _fake_qemu(tmp_path, f'echo "{output}" >&2\nexit 1\n')
    monkeypatch.setattr(qemu_provider, "find_qemu", lambda arch: exe)
    state.new_folder("w")
    rec = VMRecord(
        name="w",
        provider="qemu",
        box="vmkit-mini",
        ssh=SSHEndpoint("127.0.0.1", 0, "vmkit", str(tmp_path / "key"), "ssh-ed25519 AAAA"),
        extra={"kernel": "k", "initrd": "i", "cmdline": "c"},
    )
    state.save(rec)
    with pytest.raises(error):
        QemuProvider().start(rec, lambda _: None)
    assert output in rec.files.qemu_log.read_text()
