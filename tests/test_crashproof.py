"""Issue 18 without a VM: kill -9 at every step of a live change on VirtualBox (the simulator),
then the next command converges; intents round-trip; Ctrl-C finishes a change; QMP queues.

The killed command runs in a forked child that sends itself SIGKILL at the step named by
``$VMKIT_FAULT`` (vmkit.host.faults); VirtualBox's state lives in the simulator's files and the
fake guest's mounts in a file, so both outlive the child, as a real VM and guest would.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.conftest_vbox import VERSIONS, new_record, start_sim
from vmkit import state
from vmkit.errors import QMPError, ShareBusy
from vmkit.host import interrupts
from vmkit.host.faults import ENV
from vmkit.host.runner import Result, run
from vmkit.mechanisms.base import release_mount
from vmkit.providers import registry
from vmkit.providers.virtualbox import VirtualBoxProvider
from vmkit.state import ForwardSpec, Intent, ShareSpec, VMRecord
from vmkit.testing import FakeSSHSession
from vmkit.testing.vboxsim import VBoxSim
from vmkit.vm import VM

SHARE_STEPS = ["share:intent", "vboxsf:folder", "share:added"]
UNSHARE_STEPS = ["unshare:intent", "vboxsf:unmounted", "unshare:removed"]
FORWARD_STEPS = ["forward:intent", "natpf:rule", "forward:added"]
UNFORWARD_STEPS = ["unforward:intent", "unforward:removed"]


class DiskGuest(FakeSSHSession):
    """A fake guest whose mounts and folders live in a file, so they survive a killed process."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path

    def run(self, argv: Sequence[str], **kw: Any) -> Result:
        if self.path.exists():
            saved = json.loads(self.path.read_text())
            self.mounts = {k: (v[0], v[1], v[2]) for k, v in saved["mounts"].items()}
            self.dirs = set(saved["dirs"])
        r = super().run(argv, **kw)
        self.path.write_text(json.dumps({"mounts": self.mounts, "dirs": sorted(self.dirs)}))
        return r


@pytest.fixture(scope="module")
def _vbox_vm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[VM, VBoxSim, DiskGuest]]:
    """One simulated VirtualBox VM, running, for every test here (each leaves it clean)."""
    tmp_path = tmp_path_factory.mktemp("crashproof-vbox")
    with pytest.MonkeyPatch.context() as mp:
        sim = start_sim(VERSIONS[-1], tmp_path, mp)
        guest = DiskGuest(tmp_path / "guest.json")
        provider = VirtualBoxProvider(sim.vbm, poll_interval=0.01)
        real_get = registry.get
        mp.setattr(registry, "get", lambda n: provider if n == "virtualbox" else real_get(n))
        mp.setattr(VM, "ssh", lambda self: guest)
        mp.setattr(VM, "wait_ready", lambda self, **kw: {})
        disk = tmp_path / "box.qcow2"
        run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "16M"])
        record = new_record("lab")
        provider.create(record, disk=disk)
        state.save(record)
        vm = VM(record)
        vm.start()
        yield vm, sim, guest


@pytest.fixture
def vbox(
    _vbox_vm: tuple[VM, VBoxSim, DiskGuest], monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[VM, VBoxSim, DiskGuest]]:
    vm, sim, guest = _vbox_vm
    for key, value in sim.environ().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("VMKIT_HOME", str(vm.record.files.dir.parent.parent))
    yield _vbox_vm
    _nothing_left(vm, sim, guest)


def killed_at(step: str, change: Callable[[], object]) -> None:
    """Run ``change`` in a child process that SIGKILLs itself at ``step``; it must get there."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.environ[ENV] = step
        try:
            change()
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, (
        f"the change never reached step {step!r}"
    )


def _nothing_left(vm: VM, sim: VBoxSim, guest: DiskGuest) -> None:
    vm.reload()
    assert vm.orphans() == [] and vm.record.pending == []
    info = sim.vbm.info("vmkit-lab")
    assert [f.name for f in info.folders] == [s.tag for s in vm.record.shares]
    vboxsf = [t for t, m in guest.mounts.items() if m[1] == "vboxsf"]
    assert sorted(vboxsf) == sorted(s.target for s in vm.record.shares)
    mine = sorted(r.name for r in info.rules if r.name.startswith("vmkit-"))
    assert mine == sorted(f"vmkit-{f.proto}-{f.host_port}" for f in vm.record.forwards)


@pytest.mark.parametrize("step", SHARE_STEPS)
def test_share_killed_then_share_again_converges(
    vbox: tuple[VM, VBoxSim, DiskGuest], tmp_path: Path, step: str
) -> None:
    vm, sim, guest = vbox
    data = tmp_path / "data"
    data.mkdir()
    killed_at(step, lambda: vm.share(data))
    assert [i.op for i in vm.pending()] == ["share"]
    if step != "share:intent":
        orphans = vm.orphans()
        assert orphans and all(o.intent is not None for o in orphans)
        assert all("from an interrupted share of" in o.advice("lab") for o in orphans)
    spec = vm.share(data)
    assert vm.record.shares == [spec] and guest.mounts[str(data)][1] == "vboxsf"
    _nothing_left(vm, sim, guest)
    vm.unshare(data)
    _nothing_left(vm, sim, guest)
    assert vm.record.shares == []


@pytest.mark.parametrize("step", UNSHARE_STEPS)
def test_unshare_killed_then_unshare_again_converges(
    vbox: tuple[VM, VBoxSim, DiskGuest], tmp_path: Path, step: str
) -> None:
    vm, sim, guest = vbox
    data = tmp_path / "data"
    data.mkdir()
    vm.share(data)
    killed_at(step, lambda: vm.unshare(data))
    assert [i.op for i in vm.pending()] == ["unshare"]
    vm.unshare(data)  # finishes the interrupted one; not "is not shared"
    _nothing_left(vm, sim, guest)
    assert vm.record.shares == []


@pytest.mark.parametrize("step", FORWARD_STEPS)
def test_forward_killed_then_forward_again_converges(
    vbox: tuple[VM, VBoxSim, DiskGuest], step: str
) -> None:
    from vmkit.host.netutil import free_port

    vm, sim, guest = vbox
    port = free_port()
    killed_at(step, lambda: vm.forward(port, 80))
    spec = vm.forward(port, 80)
    assert vm.record.forwards == [spec]
    _nothing_left(vm, sim, guest)
    vm.unforward(port)
    _nothing_left(vm, sim, guest)


@pytest.mark.parametrize("step", UNFORWARD_STEPS)
def test_unforward_killed_then_repair_converges(
    vbox: tuple[VM, VBoxSim, DiskGuest], step: str
) -> None:
    from vmkit.host.netutil import free_port

    vm, sim, guest = vbox
    port = free_port()
    vm.forward(port, 80)
    killed_at(step, lambda: vm.unforward(port))
    done = vm.repair()
    assert done.problems == [] and any("unforward of port" in line for line in done.fixed)
    assert vm.record.forwards == []
    _nothing_left(vm, sim, guest)
    assert vm.repair().fixed == []  # nothing left to do


def test_a_stopped_vm_settles_intents_in_its_record(
    vbox: tuple[VM, VBoxSim, DiskGuest], tmp_path: Path
) -> None:
    vm, _sim, guest = vbox
    data = tmp_path / "data"
    data.mkdir()
    killed_at("vboxsf:folder", lambda: vm.share(data))
    vm.stop(force=True)  # the transient folder goes with the power-off
    guest.path.unlink()  # and the guest's mounts with the guest
    guest.mounts = {"/": ("/dev/vda", "ext4", "rw")}
    try:
        done = vm.repair()
        assert done.problems == [] and vm.record.pending == []
        assert done.fixed == [f"an interrupted share of {data} had left nothing behind"]
    finally:
        vm.start()


# -- the pieces ------------------------------------------------------------------------------


def test_intents_round_trip_through_the_record(vmkit_home: Path) -> None:
    state.new_folder("vm1")
    share = ShareSpec("/a", "/a", mechanism="virtiofs", tag="vmkit-0123456789ab")
    fwd = ForwardSpec(8080, 80, mechanism="hostfwd")
    rec = VMRecord(
        name="vm1",
        provider="qemu",
        pending=[Intent("share", share=share, pid=7, since=1.5), Intent("unforward", forward=fwd)],
    )
    state.save(rec)
    back = state.load("vm1")
    assert back.pending == rec.pending
    assert [i.describe() for i in back.pending] == ["share of /a", "unforward of port 8080/tcp"]
    # records written before intents existed load with none
    data = json.loads(rec.files.state.read_text())
    del data["pending"]
    rec.files.state.write_text(json.dumps(data))
    assert state.load("vm1").pending == []


def test_ctrl_c_during_a_change_finishes_it_then_interrupts() -> None:
    steps: list[str] = []
    noticed: list[bool] = []
    with pytest.raises(KeyboardInterrupt), interrupts.deferred(lambda: noticed.append(True)):
        steps.append("first")
        signal.raise_signal(signal.SIGINT)
        steps.append("second")  # still runs: the change is finished
    assert steps == ["first", "second"] and noticed == [True]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_second_ctrl_c_abandons_the_change() -> None:
    steps: list[str] = []
    with pytest.raises(KeyboardInterrupt), interrupts.deferred():
        signal.raise_signal(signal.SIGINT)
        steps.append("after the first")
        signal.raise_signal(signal.SIGINT)
        steps.append("after the second")
    assert steps == ["after the first"]


def test_sigterm_during_a_change_is_delivered_after_it() -> None:
    got: list[int] = []
    old = signal.signal(signal.SIGTERM, lambda s, f: got.append(s))
    try:
        with pytest.raises(KeyboardInterrupt), interrupts.deferred():
            signal.raise_signal(signal.SIGTERM)
            assert got == []
        assert got == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, old)


def test_a_busy_leftover_mount_names_the_container_and_stays() -> None:
    guest = FakeSSHSession()
    guest.mounts["/data"] = ("vmkit-0123456789ab", "virtiofs", "rw")
    guest.on(["sh", "-c"], stdout="812 sleep 3f2a9c1b7d4e\n")
    with pytest.raises(ShareBusy) as e:
        release_mount(guest, "/data")
    assert "process 812 (sleep) in container 3f2a9c1b7d4e" in str(e.value)
    assert "vmkit docker -- stop 3f2a9c1b7d4e" in str(e.value) and "vmkit repair" in str(e.value)
    assert "/data" in guest.mounts
    assert not any(c[0] == "umount" for c in guest.commands())


def test_an_idle_leftover_mount_is_unmounted() -> None:
    guest = FakeSSHSession()
    guest.mounts["/data"] = ("vmkit-0123456789ab", "virtiofs", "rw")
    guest.on(["sh", "-c"], stdout="")
    release_mount(guest, "/data")
    assert "/data" not in guest.mounts


def _json_stream(conn: socket.socket) -> Iterator[dict[str, Any]]:
    """The JSON objects a client sends (QMP needs no newline between them)."""
    buf, dec = "", json.JSONDecoder()
    while chunk := conn.recv(4096):
        buf += chunk.decode()
        while buf.strip():
            try:
                obj, end = dec.raw_decode(buf.lstrip())
            except json.JSONDecodeError:
                break
            buf = buf.lstrip()[end:]
            yield obj


@pytest.fixture
def qmp_server(tmp_path: Path) -> Iterator[tuple[Path, list[float]]]:
    """A monitor like QEMU's: one client at a time; each is greeted, answered, and kept ~1 s."""
    path = tmp_path / "qmp.sock"
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(str(path))
    srv.listen(4)
    served: list[float] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with conn, contextlib.suppress(OSError):
                greeting = {"QMP": {"version": {"qemu": {"major": 7, "minor": 2, "micro": 0},
                                                "package": ""}, "capabilities": []}}  # fmt: skip
                conn.sendall(json.dumps(greeting).encode() + b"\r\n")
                for req in _json_stream(conn):
                    ret: dict[str, str] = {}
                    if req.get("execute") == "query-status":
                        time.sleep(1.0)  # a slow command (device_del waits like this)
                        ret = {"status": "running"}
                    ans = {"return": ret, "id": req.get("id")}
                    conn.sendall(json.dumps(ans).encode() + b"\r\n")
                    if req.get("execute") == "query-status":
                        served.append(time.monotonic())
                        break

    threading.Thread(target=serve, daemon=True).start()
    yield path, served
    srv.close()


def test_qmp_clients_queue_instead_of_timing_out(qmp_server: tuple[Path, list[float]]) -> None:
    from vmkit.providers.qemu.qmp import QMP

    path, served = qmp_server
    errors: list[Exception] = []

    def client() -> None:
        try:
            with QMP(path, timeout=2.5) as q:
                q.execute("query-status")
        except QMPError as e:
            errors.append(e)

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Unlocked, the 4th would wait > 3 s for QEMU's greeting and time out.
    assert errors == [] and len(served) == 4


def test_qmp_lock_wait_is_bounded_and_says_busy(qmp_server: tuple[Path, list[float]]) -> None:
    from filelock import FileLock

    from vmkit.home import InstanceFiles
    from vmkit.providers.qemu.qmp import QMP

    path, _ = qmp_server
    with FileLock(str(InstanceFiles(path.parent).qmp_lock)), pytest.raises(QMPError, match="busy"):
        QMP(path, lock_wait=0.2).connect()
