"""Real boots with an accelerator that cannot run the kernel, on any host.

``tests/fakeqemu.py`` stands in for qemu-system-x86_64: "kvm" starts (as on a paravirtual
KVM) but, with ``-S``, the guest's CPUs never run and its console stays empty. The boot proof
and the boot watchdog have to find that out, say it in plain words, fall back to TCG under
``auto``, and leave nothing running.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import fakeqemu
from vmkit import boxes, state
from vmkit.host import accel, procs

pytestmark = pytest.mark.vm


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    assert os.access("/dev/kvm", os.R_OK | os.W_OK), "these tests need /dev/kvm to exist"
    # Built now if this is the first test to need the box: what the tests time is the boot.
    boxes.ensure()
    fakeqemu.install(tmp_path / "bin")
    home = tmp_path / "home"
    monkeypatch.setenv("VMKIT_HOME", str(home))
    e = dict(os.environ, VMKIT_HOME=str(home))
    yield e
    for name in state.names():
        subprocess.run([sys.executable, "-m", "vmkit", "destroy", "-f", name], env=e, check=False)


def _fake_folder(tmp_path: Path) -> Path:
    return tmp_path / "bin"


def _seed_proof_ok(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The stand-in passes the boot proof, so only the real boot's watchdog can catch it."""
    monkeypatch.setenv("PATH", f"{_fake_folder(tmp_path)}{os.pathsep}{os.environ['PATH']}")
    kernel = boxes.ensure().kernel
    accel.record("kvm", kernel, binary=accel.QEMU_BINARY, ok=True, detail="seeded by the test")


def _no_qemu_of(name: str) -> bool:
    return not procs.find(f"vmkit-{name},")


def _run(env: dict[str, str], tmp_path: Path, mode: str, *args: str):
    e = dict(env, **fakeqemu.environ(_fake_folder(tmp_path), mode))
    started = time.monotonic()
    r = subprocess.run(
        [sys.executable, "-m", "vmkit", *args], env=e, capture_output=True, text=True, timeout=600
    )
    return r, time.monotonic() - started


def test_named_kvm_whose_proof_fails_refuses_at_once_and_makes_nothing(
    env: dict[str, str], tmp_path: Path
) -> None:
    r, seconds = _run(env, tmp_path, "all", "up", "wd1", "--accel", "kvm")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    assert "KVM is present but could not run this VM's kernel" in r.stderr
    assert seconds < 60, f"took {seconds:.0f} s"  # the proof's bound plus start-up, not a goal
    assert not state.exists("wd1")
    assert _no_qemu_of("wd1")


def test_named_kvm_silent_at_boot_is_stopped_by_the_watchdog(
    env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _seed_proof_ok(tmp_path, monkeypatch)
    r, seconds = _run(env, tmp_path, "boot", "up", "wd2", "--accel", "kvm")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "KVM is present but could not run this VM's kernel: the console stayed empty" in r.stderr
    assert seconds < 90, f"took {seconds:.0f} s"
    assert _no_qemu_of("wd2")
    status = subprocess.run(
        [sys.executable, "-m", "vmkit", "status", "wd2"], env=env, capture_output=True, text=True
    )
    assert "stopped" in status.stdout
    # What the watchdog saw is now this host's verdict: the next proof is not trusted.
    kernel = boxes.ensure().kernel
    assert not accel.prove("kvm", kernel, binary=accel.QEMU_BINARY).ok


def test_auto_falls_back_to_tcg_after_a_silent_boot(
    env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _seed_proof_ok(tmp_path, monkeypatch)
    r, _ = _run(env, tmp_path, "boot", "up", "wd3", "--memory", "768")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "could not run this VM's kernel" in r.stdout
    assert "booting again with software emulation (TCG)" in r.stdout
    rec = json.loads(state.InstanceFiles.of("wd3").state.read_text())
    assert rec["extra"]["accel"] == "tcg" and rec["extra"]["accel_request"] == "auto"
    r2, _ = _run(env, tmp_path, "boot", "ssh", "wd3", "--", "uname", "-m")
    assert r2.stdout.strip() == "x86_64"
