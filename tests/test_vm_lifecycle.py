"""Issue 3 on a real QEMU VM: create → start → ssh → status → stop → destroy, crash safety."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import attrs
import pytest

import vmkit.vm as api
from tests.vmfixtures import SESSION_DISK_GIB, SESSION_VM, vmkit_cli
from vmkit import state
from vmkit.errors import HostKeyMismatch, QuickStartFailed
from vmkit.guest.ssh import SSHSession
from vmkit.host import procs
from vmkit.providers.base import RESUMED_KEY
from vmkit.providers.qemu import quickstart
from vmkit.providers.qemu.provider import SAVED_BOOT_KEY

pytestmark = pytest.mark.vm


def test_ssh_runs_a_command_and_prints_the_architecture(vm: Any, vm_home: Path) -> None:
    r = vmkit_cli("ssh", SESSION_VM, "--", "uname", "-m", home=vm_home)
    assert r.stdout.strip() == "x86_64"


def test_ssh_passes_arguments_unchanged(vm: Any, vm_home: Path) -> None:
    weird = ["a b", "it's", "$(id)", "`id`", "ünï", "*"]
    r = vmkit_cli("ssh", SESSION_VM, "--", "printf", "%s\\n", *weird, home=vm_home)
    assert r.stdout.splitlines() == weird


def test_ssh_exit_code_passes_through(vm: Any, vm_home: Path) -> None:
    r = vmkit_cli("ssh", SESSION_VM, "--", "sh", "-c", "exit 7", home=vm_home, check=False)
    assert r.returncode == 7


def test_status_and_list_read_the_real_process(vm: Any, vm_home: Path) -> None:
    assert "running" in vmkit_cli("status", SESSION_VM, home=vm_home).stdout
    assert SESSION_VM in vmkit_cli("list", home=vm_home).stdout


def _assert_timeline(cli_out: str, vm: Any) -> None:
    for phase in ("firmware", "kernel", "initrd", "init to sshd", "sshd to login", "dockerd"):
        assert f"  {phase} " in cli_out, cli_out
    assert "kernel floor (QEMU start → init)" in cli_out and "systemd-analyze: Startup" in cli_out
    tl = vm.boot_timeline()
    floor = tl.kernel_floor
    phases = tl.phases()
    assert floor is not None and 0 < tl.firmware < floor
    # The VM waited for dockerd, so every phase was reached, in order.
    assert all(p.end is not None for p in phases), phases
    login = next(p for p in phases if p.name == "sshd to login")
    assert floor < login.start < login.end  # type: ignore[operator]


def _skew(vm: Any) -> float:
    before = time.time()
    guest = float(vm.run(["date", "+%s.%N"]).stdout)
    return guest - (before + time.time()) / 2


def test_quick_started_vms_have_identities_of_their_own(vm: Any, vm_home: Path) -> None:
    # The session VM's shape, whose saved boot exists (the session VM itself may have been
    # stopped and booted again by other tests since).
    ones = [api.up(n, memory=1024, cpus=2, disk=SESSION_DISK_GIB) for n in ("quick1", "quick2")]
    try:
        first, other = ones
        # Both resumed the same saved boot...
        assert first.record.extra[RESUMED_KEY] == other.record.extra[RESUMED_KEY]
        saved = Path(str(other.record.extra[SAVED_BOOT_KEY]))
        assert oct(saved.stat().st_mode & 0o777) == "0o700"
        assert oct((saved / "state").stat().st_mode & 0o777) == "0o600"
        assert not (other.record.files.dir / "reseed.img").exists()
        # ...and each has its own host key (pinned: these commands prove it), machine id,
        # hostname and random state, and the host's time.
        for cmd in (
            ["cat", "/etc/ssh/ssh_host_ed25519_key.pub"],
            ["cat", "/etc/machine-id"],
            ["hostname"],
        ):
            assert other.run(cmd).stdout != first.run(cmd).stdout, cmd
        assert other.run(["hostname"]).stdout.strip() == "vmkit-quick2"
        for each in ones:
            kernel_log = each.run(["dmesg"], sudo=True).stdout
            assert "crng reseeded due to virtual machine fork" in kernel_log
            assert abs(_skew(each)) < 0.25
        assert other.run(["docker", "info", "--format", "{{.ServerVersion}}"]).stdout.strip()
        # A quick-started VM did not boot, and says so when asked for its boot's timeline.
        r = vmkit_cli("status", "quick1", "--boot-timeline", home=vm_home, check=False)
        assert r.returncode != 0 and "Traceback" not in r.stderr
        assert "quick-started" in r.stderr and "--no-quick-start" in r.stderr
    finally:
        for each in ones:
            each.destroy()


def test_a_failed_quick_start_boots_instead_and_that_boot_can_be_timed(
    vm: Any, vm_home: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def guest_never_answers(serial_log: Path, nonce: str) -> None:
        raise QuickStartFailed("the test's guest did not install its identity")

    monkeypatch.setattr(quickstart, "_wait_reseeded", guest_never_answers)
    saved = Path(str(vm.record.extra[SAVED_BOOT_KEY]))
    failed = saved.with_name(f"{saved.name}.failed")
    cold = api.up("cold1", memory=1024, cpus=2, disk=SESSION_DISK_GIB)
    try:
        assert "quick start failed" in caplog.text and "booting the VM instead" in caplog.text
        assert failed.read_text().strip() == "the test's guest did not install its identity"
        assert RESUMED_KEY not in cold.record.extra and SAVED_BOOT_KEY not in cold.record.extra
        # It booted from the box, with its own identity (the pinned key is the proof).
        assert cold.run(["hostname"]).stdout.strip() == "vmkit-cold1"
        out = vmkit_cli("status", "cold1", "--boot-timeline", home=vm_home).stdout
        _assert_timeline(out, cold)
    finally:
        cold.destroy()
        failed.unlink(missing_ok=True)


def test_per_vm_identity(vm: Any) -> None:
    files = vm.record.files
    assert oct(files.client_key.stat().st_mode & 0o777) == "0o600"
    # The guest presents exactly the host key vmkit made for it.
    offered = vm.run(["cat", "/etc/ssh/ssh_host_ed25519_key.pub"]).stdout.split()[:2]
    assert " ".join(offered) == vm.record.ssh.host_key
    # No other VM's key, no well-known key: authorized_keys holds only this VM's key.
    keys = vm.run(["cat", "/home/vmkit/.ssh/authorized_keys"]).stdout.strip().splitlines()
    assert keys == [files.client_key.with_name("id_ed25519.pub").read_text().strip()]


def test_a_different_host_key_is_refused(vm: Any) -> None:
    other = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
    with (
        pytest.raises(HostKeyMismatch),
        SSHSession(attrs.evolve(vm.record.ssh, host_key=other)) as s,
    ):
        s.run(["true"])


def test_root_file_system_fills_a_disk_larger_than_the_box(vm: Any) -> None:
    # The box's image is 8 GiB; vmkit-growfs.service grew it to the VM's disk at boot.
    size = int(vm.run(["df", "-B1", "--output=size", "/"]).stdout.split()[-1])
    assert size > (SESSION_DISK_GIB - 0.5) * 2**30


def test_dockerd_answers(vm: Any) -> None:
    assert vm.run(["docker", "info", "--format", "{{.ServerVersion}}"]).stdout.strip()


def test_the_trimmed_boot_leaves_no_unit_failed_and_docker_its_nat_rules(vm: Any) -> None:
    # Recipe 5 replays only some devices at udev's coldplug and runs dockerd on iptables-legacy
    # with fewer containerd plugins: what the box relies on must still have come up.
    assert vm.run(["systemctl", "--failed", "--no-legend"], sudo=True).stdout.strip() == ""
    for unit in ("systemd-networkd", "sys-fs-fuse-connections.mount", "containerd", "docker"):
        assert (
            vm.run(["systemctl", "is-active", unit], sudo=True, check=False).stdout.strip()
            == "active"
        )
    assert "(legacy)" in vm.run(["iptables", "-V"], sudo=True).stdout
    nat = vm.run(["iptables", "-t", "nat", "-S", "POSTROUTING"], sudo=True).stdout
    assert "-s 172.17.0.0/16 ! -o docker0 -j MASQUERADE" in nat
    assert vm.run(["test", "-e", "/dev/disk/by-label/vmkit-root"], check=False).ok


def _wait(cond: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.1)
    return False


def test_kill_9_during_up_then_status_tells_the_truth_and_destroy_cleans(
    vm_home: Path, vm: Any
) -> None:
    env = dict(os.environ, VMKIT_HOME=str(vm_home))
    name = "crash1"
    files = state.InstanceFiles.of(name)
    p = subprocess.Popen(
        # The session VM's shape: its saved boot exists, so QEMU starts within seconds.
        [sys.executable, "-m", "vmkit", "up", name, "--disk", str(SESSION_DISK_GIB)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert _wait(lambda: files.pid.exists(), 60), "QEMU never started"
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        qemu_pid = procs.read_pid(files.pid)
        out = vmkit_cli("status", name, home=vm_home).stdout
        # A quick start killed before the guest took its identity is never usable.
        assert "quick start was interrupted" in out, out
        assert procs.alive(qemu_pid, str(files.qmp))
    finally:
        vmkit_cli("destroy", name, "-f", home=vm_home)
    assert not files.dir.exists()
    assert not procs.alive(qemu_pid, str(files.qmp))
    assert not procs.find(str(files.dir))


@pytest.mark.parametrize("after", [0.4, 1.5, 4.0])
def test_kill_9_at_any_point_of_up_then_status_is_true_and_up_converges(
    vm_home: Path, vm: Any, after: float
) -> None:
    """Killed during create, at QEMU's launch or while it resumes or boots: within 5 s status
    says what really runs, and `vmkit up` again reaches SSH."""
    env = dict(os.environ, VMKIT_HOME=str(vm_home))
    name = f"kill{int(after * 10)}"
    files = state.InstanceFiles.of(name)
    p = subprocess.Popen(
        [sys.executable, "-m", "vmkit", "up", name, "--disk", str(SESSION_DISK_GIB)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(after)
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        began = time.monotonic()
        out = vmkit_cli("status", name, home=vm_home, check=False).stdout
        assert time.monotonic() - began < 5
        qemu_alive = procs.alive(procs.read_pid(files.pid), str(files.qmp))
        if qemu_alive:
            assert any(w in out for w in ("starting", "running", "quick start was interrupted")), (
                out
            )
        else:
            assert "running" not in out and "starting" not in out, out
        vmkit_cli("up", name, "--disk", str(SESSION_DISK_GIB), home=vm_home, timeout=600)
        assert vmkit_cli("ssh", name, "--", "echo", "ok", home=vm_home).stdout.strip() == "ok"
    finally:
        vmkit_cli("destroy", name, "-f", home=vm_home, check=False)
    assert not procs.find(str(files.dir))


def test_crash_during_create_is_broken_and_destroy_cleans(vm_home: Path, vm: Any) -> None:
    files = state.new_folder("half")
    files.disk.write_bytes(b"")  # what a create killed before saving its record leaves
    out = vmkit_cli("status", "half", home=vm_home).stdout
    assert "broken" in out and "creation did not finish" in out
    vmkit_cli("destroy", "half", "-f", home=vm_home)
    assert not files.dir.exists()


def test_create_then_destroy_leaves_no_process_and_no_folder(vm_home: Path, vm: Any) -> None:
    vmkit_cli("create", "t1", "--memory", "512", "--cpus", "1", home=vm_home)
    rec = json.loads(state.InstanceFiles.of("t1").state.read_text())
    assert rec["cpus"] == 1 and rec["memory"] == 512
    assert "stopped" in vmkit_cli("status", "t1", home=vm_home).stdout
    vmkit_cli("destroy", "t1", "-f", home=vm_home)
    assert not state.InstanceFiles.of("t1").dir.exists()
    assert not state.InstanceFiles.of("t1").lock.exists()


def test_ssh_on_a_stopped_vm_is_a_clear_error(vm_home: Path, vm: Any) -> None:
    vmkit_cli("create", "t2", home=vm_home)
    try:
        r = vmkit_cli("ssh", "t2", "--", "true", home=vm_home, check=False)
        assert r.returncode == 1
        assert "not running" in r.stderr and "Traceback" not in r.stderr
    finally:
        vmkit_cli("destroy", "t2", "-f", home=vm_home)
