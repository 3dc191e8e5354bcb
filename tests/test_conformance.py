"""The provider contract, written once and run over every provider (after pytest-testinfra).

Each test states the ``Capabilities`` flags it needs (``@needs``); a provider takes part in
exactly the tests its flags allow, so opting out is declared in vmkit/providers/base.py and
nowhere here. Everything goes through ``vmkit.VM``, the layer people use.

- VirtualBox: the VBoxManage simulator (../shared/vbox). It boots no guest, so the guest is a
  ``FakeSSHSession`` (a fresh one per boot: a booted guest has nothing mounted) and waiting
  for SSH is left out; VirtualBox's side is the simulator's real state.
- QEMU (``vm``): the session's real VM for live changes; the lifecycle test makes one more.
- SSH host (``vm``): the QEMU guest's sshd, attached as ``ssh://`` with its pinned host key.
- Vagrant is not here: its real machine lives in a network namespace that only subprocesses
  inside it can reach (tests/test_vagrant_real.py), not this process's ``VM`` objects.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

import vmkit.vm
from tests.conftest_vbox import VERSIONS, new_record, start_sim
from vmkit import state
from vmkit.errors import (
    ForwardNotFound,
    InvalidInput,
    NotSupported,
    PortInUse,
    ShareNotFound,
    VmkitError,
    VMNotFound,
    VMNotRunning,
)
from vmkit.guest.pathmap import guest_path
from vmkit.host.netutil import free_port
from vmkit.progress import Progress, no_progress
from vmkit.providers import registry
from vmkit.providers.base import Capabilities, VMState
from vmkit.providers.qemu import QemuProvider
from vmkit.providers.sshhost import SSHHostProvider, fingerprint
from vmkit.providers.virtualbox import VirtualBoxProvider
from vmkit.state import VMRecord
from vmkit.testing import FakeSSHSession
from vmkit.vm import VM

#: provider name → (class, marks): the capabilities are read from the class at collection.
PROVIDERS: dict[str, tuple[type[Any], tuple[pytest.MarkDecorator, ...]]] = {
    "virtualbox": (VirtualBoxProvider, ()),
    "qemu": (QemuProvider, (pytest.mark.vm,)),
    "ssh": (SSHHostProvider, (pytest.mark.vm,)),
}


def needs(**flags: bool) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Run the test only over providers whose ``Capabilities`` have these values."""

    def mark(test: Callable[..., None]) -> Callable[..., None]:
        test.needs = flags  # type: ignore[attr-defined]
        return test

    return mark


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    flags: dict[str, bool] = getattr(metafunc.function, "needs", {})
    chosen = [
        pytest.param(name, marks=marks, id=name)
        for name, (cls, marks) in PROVIDERS.items()
        if all(getattr(cls.capabilities, f) == v for f, v in flags.items())
    ]
    assert chosen, f"no provider has {flags}"
    metafunc.parametrize("backend", chosen, indirect=True)


@attrs.define
class Backend:
    """One provider as the contract sees it."""

    capabilities: Capabilities
    running: Callable[[], VM]  # a running VM, made on first call and kept for the test
    new: Callable[[str], VM]  # a created, stopped VM (providers that create)
    host_dir: Path

    def folder(self, name: str) -> Path:
        path = self.host_dir / name
        path.mkdir(exist_ok=True)
        return path


def _virtualbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, box_disk: Path) -> Backend:
    sim = start_sim(VERSIONS[-1], tmp_path, monkeypatch)
    guest = [FakeSSHSession()]

    class SimVirtualBox(VirtualBoxProvider):
        def start(self, record: VMRecord, progress: Progress = no_progress) -> None:
            super().start(record, progress)
            guest[0] = FakeSSHSession()

    provider = SimVirtualBox(sim.vbm, poll_interval=0.01)
    real_get = registry.get
    monkeypatch.setattr(registry, "get", lambda n: provider if n == "virtualbox" else real_get(n))
    monkeypatch.setattr(VM, "ssh", lambda self: guest[0])
    monkeypatch.setattr(VM, "wait_ready", lambda self, **kw: {})

    def new(name: str) -> VM:
        record = new_record(name)
        provider.create(record, disk=box_disk)
        state.save(record)
        return VM(record)

    kept: list[VM] = []

    def running() -> VM:
        if not kept:
            kept.append(new("lab"))
            kept[0].start()
        return kept[0]

    return Backend(VirtualBoxProvider.capabilities, running, new, tmp_path / "host")


def _qemu(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    session_vm: VM = request.getfixturevalue("vm")

    def new(name: str) -> VM:
        return vmkit.vm.create(name, cpus=1, memory=1024)

    return Backend(QemuProvider.capabilities, lambda: session_vm, new, tmp_path)


def _ssh_host(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    ep = request.getfixturevalue("vm").record.ssh
    host = vmkit.vm.attach(
        f"ssh://{ep.user}@127.0.0.1:{ep.port}",
        "conform-ssh",
        key=ep.key_file,
        fingerprint=fingerprint(ep.host_key),
    )

    def new(name: str) -> VM:
        raise AssertionError("an SSH host is attached, never created")

    try:
        yield Backend(SSHHostProvider.capabilities, lambda: host, new, tmp_path)
    finally:
        host.destroy()


@pytest.fixture
def backend(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Backend]:
    # Shares keep host permissions: the guest's unprivileged user must be able to read them.
    tmp_path.chmod(0o755)
    (tmp_path / "host").mkdir()
    if request.param == "virtualbox":
        yield from _made_are_destroyed(
            _virtualbox(tmp_path, monkeypatch, request.getfixturevalue("box_disk"))
        )
    elif request.param == "qemu":
        yield from _made_are_destroyed(_qemu(request, tmp_path / "host"))
    else:
        yield from _ssh_host(request, tmp_path / "host")


def _made_are_destroyed(backend: Backend) -> Iterator[Backend]:
    """Yield ``backend``, then destroy what its ``new`` made that a failed test left behind
    (a real VM left running would hold the shared CPUs for the rest of the session)."""
    made: list[VM] = []
    new = backend.new

    def new_and_kept(name: str) -> VM:
        made.append(new(name))
        return made[-1]

    backend.new = new_and_kept
    try:
        yield backend
    finally:
        for vm in made:
            if state.exists(vm.name):
                vm.destroy()


def _pairs(vm: VM) -> set[tuple[str, str]]:
    return {(s.source, s.target) for s in vm.active_shares()}


def _keys(vm: VM) -> set[tuple[str, int]]:
    return {f.key for f in vm.active_forwards()}


# -- the contract ---------------------------------------------------------------------------


def test_the_offered_mechanisms_are_the_declared_ones(backend: Backend) -> None:
    vm = backend.running()
    shares = vm.provider.share_mechanisms(vm.record, vm.ssh)
    forwards = vm.provider.forward_mechanisms(vm.record, vm.ssh)
    assert [m.name for m in shares] == list(backend.capabilities.share_mechanisms)
    assert [m.name for m in forwards] == list(backend.capabilities.forward_mechanisms)


def test_share_add_active_remove(backend: Backend) -> None:
    vm = backend.running()
    folder = backend.folder("data dir ü")
    spec = vm.share(folder)
    assert spec.mechanism in backend.capabilities.share_mechanisms
    assert spec.target == guest_path(str(folder))
    assert vm.share(folder) == spec  # the same share again changes nothing
    assert (str(folder), spec.target) in _pairs(vm)
    assert spec in vm.shares()
    vm.unshare(folder)
    assert (str(folder), spec.target) not in _pairs(vm)
    assert spec not in vm.shares()


def test_forward_add_active_remove(backend: Backend) -> None:
    vm = backend.running()
    port = free_port()
    spec = vm.forward(port, 22)
    assert spec.mechanism in backend.capabilities.forward_mechanisms
    assert (spec.host_ip, spec.guest_port) == ("127.0.0.1", 22)
    assert vm.forward(port, 22) == spec
    assert ("tcp", port) in _keys(vm)
    vm.unforward(port)
    assert ("tcp", port) not in _keys(vm)
    assert spec not in vm.forwards()


def test_errors_are_vmkit_errors(backend: Backend) -> None:
    vm = backend.running()
    folder = backend.folder("never shared")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        cases: list[tuple[Callable[[], object], type[VmkitError]]] = [
            (lambda: vm.unshare(folder), ShareNotFound),
            (lambda: vm.unforward(free_port()), ForwardNotFound),
            (lambda: vm.share(backend.host_dir / "missing"), InvalidInput),
            (lambda: vm.share(folder, mechanism="no-such"), NotSupported),
            (lambda: vm.forward(70000), InvalidInput),
            (lambda: vm.forward(taken, 22), PortInUse),
        ]
        for call, error in cases:
            with pytest.raises(error) as e:
                call()
            assert e.value.message, f"{error.__name__} without a message"
    # The session's VM is shared with other tests: only what this test tried must be absent.
    assert str(folder) not in {s.source for s in vm.shares()}
    assert taken not in {f.host_port for f in vm.forwards()}


@needs(power=False)
def test_a_machine_vmkit_does_not_power_is_never_stopped(backend: Backend) -> None:
    vm = backend.running()
    with pytest.raises(NotSupported):
        vm.stop()
    assert vm.status().running


@needs(create=True, power=True, destroy=True)
def test_create_start_stop_destroy_and_a_restart_brings_shares_and_forwards_back(
    backend: Backend,
) -> None:
    vm = backend.new("conform")
    assert vm.status().state is VMState.STOPPED
    vm.start()
    assert vm.status().running
    folder = backend.folder("kept")
    share = vm.share(folder)
    port = free_port()
    vm.forward(port, 22)
    vm.stop(timeout=60)
    assert vm.status().state is VMState.STOPPED
    vm.start()
    assert vm.status().running
    assert (str(folder), share.target) in _pairs(vm)
    assert ("tcp", port) in _keys(vm)
    assert [s.source for s in vm.shares()] == [str(folder)]
    assert [f.host_port for f in vm.forwards()] == [port]
    vm.destroy()
    assert not vm.record.files.dir.exists()
    with pytest.raises(VMNotFound):
        vmkit.vm.get("conform")


@needs(create=True, offline_changes=True)
def test_changes_to_a_stopped_vm_take_effect_at_start(backend: Backend) -> None:
    vm = backend.new("offline")
    folder = backend.folder("before boot")
    port = free_port()
    vm.share(folder)
    vm.forward(port, 22)
    vm.start()
    assert str(folder) in {source for source, _ in _pairs(vm)}
    assert ("tcp", port) in _keys(vm)
    vm.destroy()


@needs(create=True, offline_changes=False)
def test_a_stopped_vm_refuses_changes(backend: Backend) -> None:
    vm = backend.new("offline")
    try:
        with pytest.raises(VMNotRunning):
            vm.share(backend.folder("before boot"))
        with pytest.raises(VMNotRunning):
            vm.forward(free_port(), 22)
        assert vm.shares() == [] and vm.forwards() == []
    finally:
        vm.destroy()
