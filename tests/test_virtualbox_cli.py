"""The VirtualBox story through the CLI, against the VBoxManage simulator (5.2, 6.0, 7.0):
attach docker-machine's ``default``, add a forward and a share to it, and the no-VT-x fallback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vmkit.host.netutil import free_port
from vmkit.testing.vboxsim import VBoxSim


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vmkit", *args],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=120,
    )


@pytest.fixture
def standin_boxes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Small stand-in vmkit-mini boxes (amd64 and i386) in a private cache: VirtualBox here is
    a simulator that boots nothing, so the disks only have to be valid qcow2 files."""
    cache = tmp_path / "cache"
    for arch in ("amd64", "i386"):
        folder = cache / "boxes" / "vmkit-mini" / arch
        folder.mkdir(parents=True)
        subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", str(folder / "disk.qcow2"), "64M"],
            check=True,
        )
        (folder / "vmlinuz").write_bytes(b"kernel")
        (folder / "initrd.img").write_bytes(b"initrd")
        manifest = {
            "format": 1,
            "name": "vmkit-mini",
            "arch": arch,
            "cmdline": "root=LABEL=vmkit-root",
            "files": {"vmlinuz": {}, "initrd.img": {}, "disk.qcow2": {}},
            "root_label": "vmkit-root",
        }
        (folder / "manifest.json").write_text(json.dumps(manifest))
    monkeypatch.setenv("VMKIT_CACHE", str(cache))
    return cache


def test_attach_docker_machine_default_then_forward_and_share_while_stopped(
    sim: VBoxSim, tmp_path: Path
) -> None:
    users = tmp_path / "Users"
    users.mkdir()
    sim.make_docker_machine_vm("default", free_port(), users)
    r = cli("attach", "virtualbox:default", "--name", "dm")
    assert r.returncode == 0, r.stderr
    mark = sim.mark()
    port = free_port()
    r = cli("forward", f"{port}:8888", "--vm", "dm")
    assert r.returncode == 0, r.stderr
    assert "takes effect when the VM starts" in r.stdout
    data = tmp_path / "data dir ü"
    data.mkdir()
    r = cli("share", str(data), "--vm", "dm")
    assert r.returncode == 0, r.stderr
    calls = sim.since(mark)
    assert [
        "modifyvm",
        "default",
        "--natpf1",
        f"vmkit-tcp-{port},tcp,127.0.0.1,{port},,8888",
    ] in calls
    added = [c for c in calls if c[:2] == ["sharedfolder", "add"]]
    assert len(added) == 1 and "--transient" not in added[0] and str(data) in added[0]
    info = subprocess.run(
        ["VBoxManage", "showvminfo", "default", "--machinereadable"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert f"tcp,127.0.0.1,{port},,8888" in info and str(data) in info
    # What vboxsf cannot guarantee on the host is said where the shares are listed.
    r = cli("shares", "--vm", "dm")
    assert r.returncode == 0 and "note: vboxsf: VirtualBox's host service" in r.stdout, r.stdout
    # and back out again, leaving docker-machine's own ssh rule and c/Users share alone
    assert cli("unforward", str(port), "--vm", "dm").returncode == 0
    assert cli("unshare", str(data), "--vm", "dm").returncode == 0
    info = subprocess.run(
        ["VBoxManage", "showvminfo", "default", "--machinereadable"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert f",{port}," not in info and str(data) not in info
    assert '"ssh,tcp,127.0.0.1,' in info and "c/Users" in info


def test_attach_unknown_vm_lists_the_names(sim: VBoxSim, tmp_path: Path) -> None:
    sim.make_docker_machine_vm("default", free_port(), tmp_path)
    r = cli("attach", "virtualbox:nope", "--name", "x")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "default" in r.stderr


@pytest.mark.parametrize("sim", ["6.0.24r139119"], indirect=True)
def test_no_vtx_on_60_picks_the_i386_box(
    sim: VBoxSim, standin_boxes: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VBOXSIM_HWVIRT", "0")
    r = cli("create", "vb1", "--provider", "virtualbox")
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    assert "32-bit box" in r.stdout and "QEMU" not in r.stdout
    rec = json.loads((Path(os.environ["VMKIT_HOME"]) / "vms" / "vb1" / "vm.json").read_text())
    assert (rec["provider"], rec["arch"]) == ("virtualbox", "i386")
    assert any(c[:1] == ["createvm"] and "Debian" in c for c in sim.calls())
    assert cli("destroy", "vb1", "-f").returncode == 0


@pytest.mark.parametrize("sim", ["7.0.14r161095"], indirect=True)
def test_no_vtx_on_70_explains_and_falls_back_to_qemu(
    sim: VBoxSim, standin_boxes: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VBOXSIM_HWVIRT", "0")
    r = cli("create", "vb2", "--provider", "virtualbox")
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    assert "QEMU" in r.stdout and "6.1" in r.stdout
    rec = json.loads((Path(os.environ["VMKIT_HOME"]) / "vms" / "vb2" / "vm.json").read_text())
    assert (rec["provider"], rec["arch"], rec["extra"]["accel"]) == ("qemu", "amd64", "tcg")
    assert not any(c[:1] == ["createvm"] for c in sim.calls())
    assert cli("destroy", "vb2", "-f").returncode == 0
