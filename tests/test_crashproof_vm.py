"""Issue 18 on the session's real QEMU VM: `vmkit` killed (SIGKILL) at every step boundary of
share, unshare, forward and unforward, for virtio-fs, sshfs, hostfwd and the SSH tunnel; the
next command converges and nothing is left behind. Plus a leftover a container keeps busy.

The CLI kills itself at the step named by ``$VMKIT_FAULT`` (vmkit.host.faults).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.vmfixtures import BUSYBOX_IMAGE, SESSION_VM, vmkit_cli
from vmkit.errors import ShareBusy
from vmkit.host import procs
from vmkit.host.faults import ENV
from vmkit.host.netutil import free_port
from vmkit.mechanisms.base import guest_mountpoints

pytestmark = pytest.mark.vm

# One VM boot is shared by every case, but each kill and recovery still costs tens of seconds
# under emulation, so CI kills at the steps that left QEMU objects behind before (a chardev
# without its device, a device without its mount, a half-deleted device) and one step of each
# other mechanism; the VirtualBox simulator suite (tests/test_crashproof.py) covers every step.
SHARE_STEPS = {
    "virtiofs": ["virtiofs:chardev", "virtiofs:device"],
    "sshfs": ["share:added"],
}
UNSHARE_STEPS = {
    "virtiofs": ["virtiofs:device-deleted"],
    "sshfs": ["unshare:intent"],
}
FORWARD_STEPS = ["forward:added"]
UNFORWARD_STEPS = ["unforward:intent"]
FORWARDERS = ["hostfwd", "ssh-tunnel"]


def _cases(steps: dict[str, list[str]]) -> list[tuple[str, str]]:
    return [(m, s) for m, names in steps.items() for s in names]


@pytest.fixture
def tmp_path(tmp_path: Path) -> Path:
    tmp_path.chmod(0o755)
    (tmp_path / "f.txt").write_text("survived\n")
    return tmp_path


def killed_cli(home: Path, step: str, *args: str) -> None:
    """`vmkit ARGS` killed by SIGKILL at ``step``; it must get there."""
    env = dict(os.environ, VMKIT_HOME=str(home), **{ENV: step})
    r = subprocess.run(
        [sys.executable, "-m", "vmkit", *args], capture_output=True, text=True, env=env, timeout=300
    )
    assert r.returncode == -9, f"never reached {step}: exit {r.returncode}\n{r.stderr}"


def assert_clean(vm: Any) -> None:
    """Nothing the record does not want: no leftovers, intents, virtiofsd or stray mounts."""
    vm.reload()
    assert vm.orphans() == [] and vm.record.pending == []
    daemons = procs.find(str(vm.record.files.dir / "virtiofs-"))
    assert len(daemons) == 0 or vm.record.shares, f"virtiofsd left: {daemons}"
    mounts = guest_mountpoints(vm.ssh())
    wanted = {s.target for s in vm.record.shares}
    stray = {t for t, fs in mounts.items() if fs in ("virtiofs", "fuse.sshfs") and t not in wanted}
    assert not stray


def _banner(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
        s.settimeout(15)
        return s.recv(8)


@pytest.mark.parametrize(("mech", "step"), _cases(SHARE_STEPS))
def test_share_killed_then_share_again(
    vm: Any, vm_home: Path, tmp_path: Path, mech: str, step: str
) -> None:
    killed_cli(vm_home, step, "share", str(tmp_path), "--vm", SESSION_VM, "--mechanism", mech)
    if step != "share:intent":
        assert any(o.intent is not None for o in vm.orphans()), "the leftovers are not shown"
    spec = vm.share(tmp_path, mechanism=mech)
    try:
        assert spec.mechanism == mech and vm.record.pending == []
        assert vm.run(["cat", f"{tmp_path}/f.txt"]).stdout == "survived\n"
    finally:
        vm.unshare(tmp_path)
    assert_clean(vm)


@pytest.mark.parametrize(("mech", "step"), _cases(UNSHARE_STEPS))
def test_unshare_killed_then_unshare_again(
    vm: Any, vm_home: Path, tmp_path: Path, mech: str, step: str
) -> None:
    vm.share(tmp_path, mechanism=mech)
    killed_cli(vm_home, step, "unshare", str(tmp_path), "--vm", SESSION_VM)
    vm.unshare(tmp_path)  # finishes the interrupted one
    assert_clean(vm)
    assert vm.run(["cat", f"{tmp_path}/f.txt"], check=False).exit_code != 0


@pytest.mark.parametrize("mech", FORWARDERS)
@pytest.mark.parametrize("step", FORWARD_STEPS)
def test_forward_killed_then_forward_again(vm: Any, vm_home: Path, mech: str, step: str) -> None:
    port = free_port()
    killed_cli(vm_home, step, "forward", f"{port}:22", "--vm", SESSION_VM, "--mechanism", mech)
    vm.forward(port, 22, mechanism=mech)
    try:
        assert _banner(port).startswith(b"SSH-")
    finally:
        vm.unforward(port)
    assert_clean(vm)


@pytest.mark.parametrize("mech", FORWARDERS)
@pytest.mark.parametrize("step", UNFORWARD_STEPS)
def test_unforward_killed_then_repair(vm: Any, vm_home: Path, mech: str, step: str) -> None:
    port = free_port()
    vm.forward(port, 22, mechanism=mech)
    killed_cli(vm_home, step, "unforward", str(port), "--vm", SESSION_VM)
    out = vmkit_cli("repair", SESSION_VM, home=vm_home).stdout
    assert f"unforward of port {port}/tcp" in out
    assert_clean(vm)
    with pytest.raises(OSError):
        _banner(port)


def test_leftovers_are_shown_then_repaired(vm: Any, vm_home: Path, tmp_path: Path) -> None:
    killed_cli(vm_home, "virtiofs:device", "share", str(tmp_path), "--vm", SESSION_VM)
    shares = vmkit_cli("shares", "--vm", SESSION_VM, home=vm_home)
    assert f"from an interrupted share of {tmp_path}" in shares.stderr
    assert "orphaned: chardev chr-vmkit-" in shares.stderr
    assert f"`vmkit repair {SESSION_VM}` will clean it" in shares.stderr
    status = vmkit_cli("status", SESSION_VM, home=vm_home).stdout
    assert "orphaned: device dev-vmkit-" in status and "virtiofsd (pid" in status
    out = vmkit_cli("repair", SESSION_VM, home=vm_home).stdout
    assert "removed" in out and "chardev chr-vmkit-" in out
    assert_clean(vm)
    again = vmkit_cli("repair", SESSION_VM, home=vm_home).stdout
    assert "nothing to repair" in again


def test_a_leftover_mount_a_container_uses_is_named_and_kept(
    vm: Any, vm_home: Path, tmp_path: Path
) -> None:
    killed_cli(vm_home, "share:added", "share", str(tmp_path), "--vm", SESSION_VM)
    name = "crashproof-holder"
    vm.run(
        ["docker", "run", "-d", "--name", name, "-v", f"{tmp_path}:/data", BUSYBOX_IMAGE,
         "sh", "-c", "cd /data && sleep 600"]
    )  # fmt: skip
    try:
        cid = vm.run(["docker", "inspect", "-f", "{{.Id}}", name]).stdout.strip()[:12]
        with pytest.raises(ShareBusy) as e:
            vm.share(tmp_path)
        assert f"in container {cid}" in str(e.value) and "vmkit repair" in str(e.value)
        assert f"vmkit docker -- stop {cid}" in str(e.value)
        assert [i.op for i in vm.pending()] == ["share"]  # kept, for the next command
        assert vm.run(["cat", f"{tmp_path}/f.txt"]).stdout == "survived\n"  # not forced away
    finally:
        vm.run(["docker", "rm", "-f", name], check=False)
    done = vm.repair()
    assert done.problems == [] and done.fixed
    assert_clean(vm)


@pytest.mark.parametrize("delay", [3.0])
def test_ctrl_c_during_a_share_finishes_it_or_never_starts_it(
    vm: Any, vm_home: Path, tmp_path: Path, delay: float
) -> None:
    import signal
    import time

    env = dict(os.environ, VMKIT_HOME=str(vm_home))
    p = subprocess.Popen(
        [sys.executable, "-m", "vmkit", "share", str(tmp_path), "--vm", SESSION_VM],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(delay)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=120)
    try:
        # 130: vmkit caught the Ctrl-C. -SIGINT: it landed after vmkit's own exit had begun
        # (the share done and reported), where Python's default handler ends the process.
        assert p.returncode in (0, 130, -signal.SIGINT), err
        vm.reload()
        assert vm.record.pending == [] and vm.orphans() == []
        shared = [s.source for s in vm.record.shares]
        active = [s.source for s in vm.active_shares()]
        assert shared == active and shared in ([], [str(tmp_path)]), (out, err)
        if "finishing the share" in err or p.returncode == -signal.SIGINT:
            assert shared == [str(tmp_path)]  # held until done, then exited
    finally:
        vm.reload()
        if vm.record.shares:
            vm.unshare(tmp_path)
    assert_clean(vm)
