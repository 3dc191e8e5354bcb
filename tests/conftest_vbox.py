"""The ``sim`` fixture: a fresh VBoxManage simulator per test, over the VirtualBox versions.

Use it with ``pytest_plugins = ["tests.conftest_vbox"]``. ``$VMKIT_VBOXSIM`` names the
simulator's folder; by default it is the team's shared copy, ``shared/vbox`` beside the checkout
(where CI puts it too), found from this file so no absolute path ties the tests to one machine.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vmkit.testing.vboxsim import VBoxSim

CHECKOUT = Path(__file__).resolve().parent.parent
SIMULATOR = Path(os.environ.get("VMKIT_VBOXSIM", CHECKOUT.parent / "shared" / "vbox"))
VERSIONS = ["5.2.44r139111", "6.0.24r139119", "7.0.14r161095"]


@pytest.fixture(params=VERSIONS)
def sim(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> VBoxSim:
    s = VBoxSim(SIMULATOR, tmp_path, request.param)
    for key, value in s.environ().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("VMKIT_HOME", str(tmp_path / "vmkit"))
    monkeypatch.delenv("VBOXSIM_HWVIRT", raising=False)
    monkeypatch.delenv("VBOXSIM_GUEST_IP", raising=False)
    return s
