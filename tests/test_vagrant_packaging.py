"""Box packaging on a small stand-in box: key injection, box layout, metadata, `vagrant box add`.

The stand-in is a real 32 MiB ext4 image (made with mkfs.ext4 -d, no root needed) with a
``vmkit`` user, packed like a vmkit box; the real vmkit-mini is packaged and booted in
test_vagrant_real.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from vmkit.boxes import packaging
from vmkit.errors import BoxError, BoxNotFound, InvalidInput

KEY = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQDstandin vagrant insecure public key"


def make_rootfs(tmp: Path) -> Path:
    root = tmp / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "home" / "vmkit").mkdir(parents=True)
    (root / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/bash\nvmkit:x:1000:995:vmkit:/home/vmkit:/bin/bash\n",
        encoding="utf-8",
    )
    raw = tmp / "root.raw"
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-L", "vmkit-root", "-d", str(root), str(raw), "32M"],
        check=True,
        capture_output=True,
    )
    return raw


@pytest.fixture
def standin_box(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    folder = cache / "boxes" / "vmkit-mini" / "amd64"
    folder.mkdir(parents=True)
    raw = make_rootfs(tmp_path)
    subprocess.run(
        ["qemu-img", "convert", "-c", "-O", "qcow2", str(raw), str(folder / "disk.qcow2")],
        check=True,
    )
    (folder / "vmlinuz").write_bytes(b"kernel")
    (folder / "initrd.img").write_bytes(b"initrd")
    manifest = {
        "format": 1,
        "name": "vmkit-mini",
        "arch": "amd64",
        "files": {"vmlinuz": {}, "initrd.img": {}, "disk.qcow2": {}},
        "cmdline": "root=LABEL=vmkit-root rw console=ttyS0 apparmor=0",
        "built_at": "2026-11-24T06:59:14Z",
        "recipe_version": 1,
        "description": 'stand-in "box"',
        "disk_compression": "zlib",
    }
    (folder / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    monkeypatch.setenv("VMKIT_CACHE", str(cache))
    return folder


def debugfs(raw: Path, request: str) -> str:
    return subprocess.run(
        ["debugfs", "-R", request, str(raw)], check=True, capture_output=True, text=True
    ).stdout


def test_inject_authorized_key_sets_content_owner_and_mode(tmp_path: Path) -> None:
    raw = make_rootfs(tmp_path)
    packaging.inject_authorized_key(raw, "vmkit", KEY)
    assert debugfs(raw, "cat /home/vmkit/.ssh/authorized_keys") == KEY + "\n"
    stat = debugfs(raw, "stat /home/vmkit/.ssh")
    assert "User:  1000   Group:   995" in stat and "Mode:  0700" in stat
    # A second run replaces the key rather than appending to it.
    packaging.inject_authorized_key(raw, "vmkit", KEY.replace("standin", "other"))
    assert debugfs(raw, "cat /home/vmkit/.ssh/authorized_keys").count("ssh-rsa") == 1
    with pytest.raises(BoxError, match="no user 'nobody'"):
        packaging.inject_authorized_key(raw, "nobody", KEY)


def test_libvirt_box_layout_and_box_add_without_network(standin_box: Path, tmp_path: Path) -> None:
    key = tmp_path / "vagrant.pub"
    key.write_text(KEY + "\n", encoding="utf-8")
    out = tmp_path / "out" / "vmkit-mini.box"
    made = packaging.package(output=out, insecure_key=key, libvirt_driver="qemu")
    assert made.version == "1.20261124.65914"
    assert made.boots
    with tarfile.open(out) as tar:
        names = sorted(tar.getnames())
        assert names == [
            "Vagrantfile",
            "box.img",
            "info.json",
            "initrd.img",
            "metadata.json",
            "vmlinuz",
        ]
        meta = json.loads(tar.extractfile("metadata.json").read())  # type: ignore[union-attr]
        vagrantfile_text = tar.extractfile("Vagrantfile").read().decode()  # type: ignore[union-attr]
        tar.extract("box.img", tmp_path / "x")
    assert meta == {"provider": "libvirt", "format": "qcow2", "virtual_size": 1}
    assert 'libvirt.kernel = File.join(here, "vmlinuz")' in vagrantfile_text
    assert 'libvirt.driver = "qemu"' in vagrantfile_text
    assert 'config.ssh.username = "vmkit"' in vagrantfile_text
    raw = tmp_path / "x" / "check.raw"
    subprocess.run(
        ["qemu-img", "convert", "-O", "raw", str(tmp_path / "x" / "box.img"), str(raw)], check=True
    )
    assert debugfs(raw, "cat /home/vmkit/.ssh/authorized_keys").strip() == KEY
    # The box's own disk was not touched.
    original = tmp_path / "orig.raw"
    subprocess.run(
        ["qemu-img", "convert", "-O", "raw", str(standin_box / "disk.qcow2"), str(original)],
        check=True,
    )
    assert (
        "File not found"
        in subprocess.run(
            ["debugfs", "-R", "stat /home/vmkit/.ssh", str(original)],
            capture_output=True,
            text=True,
        ).stderr
    )

    metadata = json.loads(made.metadata_path.read_text(encoding="utf-8"))
    (version,) = metadata["versions"]
    (provider,) = version["providers"]
    assert provider == {
        "name": "libvirt",
        "url": out.as_uri(),
        "checksum_type": "sha256",
        "checksum": made.sha256,
    }
    env = dict(os.environ, VAGRANT_HOME=str(tmp_path / "vagrant.d"), VAGRANT_CHECKPOINT_DISABLE="1")
    added = subprocess.run(
        ["vagrant", "box", "add", str(made.metadata_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert added.returncode == 0, added.stdout + added.stderr
    assert "No version detected" not in added.stdout + added.stderr
    listed = subprocess.run(
        ["vagrant", "box", "list"], capture_output=True, text=True, env=env, timeout=60
    )
    assert f"vmkit-mini (libvirt, {made.version})" in listed.stdout


def test_virtualbox_box_is_made_and_shares_the_metadata(standin_box: Path, tmp_path: Path) -> None:
    key = tmp_path / "vagrant.pub"
    key.write_text(KEY, encoding="utf-8")
    libvirt = packaging.package(output=tmp_path / "vmkit-mini.box", insecure_key=key)
    vbox = packaging.package(
        provider="virtualbox", output=tmp_path / "vmkit-mini-vbox.box", insecure_key=key
    )
    assert vbox.boots
    with tarfile.open(vbox.path) as tar:
        assert sorted(tar.getnames()) == [
            "Vagrantfile",
            "box-disk001.vmdk",
            "box.ovf",
            "info.json",
            "metadata.json",
        ]
        ovf = ET.fromstring(tar.extractfile("box.ovf").read())  # type: ignore[union-attr]
        vf = tar.extractfile("Vagrantfile").read().decode()  # type: ignore[union-attr]
    ns = {"ovf": "http://schemas.dmtf.org/ovf/envelope/1"}
    disk = ovf.find("ovf:DiskSection/ovf:Disk", ns)
    assert disk is not None
    # The BIOS-bootable layout: 1 MiB + a 64 MiB SYSLINUX partition + the 32 MiB root.
    assert disk.get("{http://schemas.dmtf.org/ovf/envelope/1}capacity") == str(97 * 1024 * 1024)
    assert "config.vm.base_mac" in vf and "SYSLINUX" in vf
    with tarfile.open(vbox.path) as tar:
        tar.extract("box-disk001.vmdk", tmp_path / "x")
    raw = tmp_path / "x" / "disk.raw"
    subprocess.run(
        ["qemu-img", "convert", "-O", "raw", str(tmp_path / "x" / "box-disk001.vmdk"), str(raw)],
        check=True,
    )
    table = subprocess.run(
        ["sfdisk", "--dump", str(raw)], capture_output=True, text=True, check=True
    ).stdout
    assert "type=6, bootable" in table and "type=83" in table
    # Both boxes of one version in one folder share one metadata file.
    assert vbox.metadata_path == libvirt.metadata_path == tmp_path / "vmkit-mini.json"
    metadata = json.loads(vbox.metadata_path.read_text(encoding="utf-8"))
    providers = metadata["versions"][0]["providers"]
    assert [(p["name"], p["url"]) for p in providers] == [
        ("libvirt", libvirt.path.as_uri()),
        ("virtualbox", vbox.path.as_uri()),
    ]


def test_box_vagrantfile_is_valid_ruby(tmp_path: Path) -> None:
    f = tmp_path / "Vagrantfile"
    f.write_text(
        packaging.libvirt_box_vagrantfile('root=LABEL=x "quoted" #{no}', "qemu"), encoding="utf-8"
    )
    assert subprocess.run(["ruby", "-c", str(f)], capture_output=True, timeout=30).returncode == 0


def test_package_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VMKIT_CACHE", str(tmp_path / "empty"))
    with pytest.raises(BoxNotFound, match="not built"):
        packaging.package(output=tmp_path / "b.box", insecure_key=tmp_path / "k")
    with pytest.raises(InvalidInput, match="provider 'hyperv'"):
        packaging.package(provider="hyperv", output=tmp_path / "b.box")
    assert packaging.find_insecure_key().name == "vagrant.pub"
