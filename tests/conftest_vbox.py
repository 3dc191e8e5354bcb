"""The ``sim`` fixture: a fresh VBoxManage simulator per test, over the VirtualBox versions;
``box_disk`` and ``new_record`` for a VirtualBox VM the simulator can register.

Use it with ``pytest_plugins = ["tests.conftest_vbox"]``. ``$VMKIT_VBOXSIM`` names the
simulator's folder; by default it is the team's shared copy, ``shared/vbox`` beside the checkout
(where CI puts it too), found from this file so no absolute path ties the tests to one machine.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vmkit import state
from vmkit.host.runner import run
from vmkit.state import SSHEndpoint, VMRecord
from vmkit.testing.vboxsim import VBoxSim

CHECKOUT = Path(__file__).resolve().parent.parent
SIMULATOR = Path(os.environ.get("VMKIT_VBOXSIM", CHECKOUT.parent / "shared" / "vbox"))
VERSIONS = ["5.2.44r139111", "6.0.24r139119", "7.0.14r161095"]


def start_sim(version: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> VBoxSim:
    """A fresh simulated VirtualBox ``version`` in ``tmp_path``, first on PATH, and VMKIT_HOME."""
    s = VBoxSim(SIMULATOR, tmp_path, version)
    for key, value in s.environ().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("VMKIT_HOME", str(tmp_path / "vmkit"))
    monkeypatch.delenv("VBOXSIM_HWVIRT", raising=False)
    monkeypatch.delenv("VBOXSIM_GUEST_IP", raising=False)
    return s


@pytest.fixture(params=VERSIONS)
def sim(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> VBoxSim:
    return start_sim(request.param, tmp_path, monkeypatch)


@pytest.fixture
def box_disk(tmp_path: Path) -> Path:
    """A small qcow2 standing in for the box disk: the simulator boots nothing."""
    disk = tmp_path / "box disk ü.qcow2"
    run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "16M"])
    return disk


def new_record(name: str = "lab", arch: str = "amd64") -> VMRecord:
    """The record of a new VirtualBox VM, its folder made, as ``vmkit.create`` would have it."""
    state.new_folder(name)
    endpoint = SSHEndpoint("127.0.0.1", 0, "user", "/k", "ssh-ed25519 AAAA")
    return VMRecord(
        name=name, provider="virtualbox", arch=arch, cpus=2, memory=1024, disk=1, ssh=endpoint
    )
