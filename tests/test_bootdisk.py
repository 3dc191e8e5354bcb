"""The BIOS-bootable disk (for VirtualBox) really boots: QEMU on VirtualBox-like hardware
(AHCI SATA disks, an e1000 NIC, SeaBIOS from the MBR, no -kernel) reaches SSH with the pinned key."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest

from vmkit import boxes
from vmkit.boxes import bootdisk
from vmkit.guest import keys
from vmkit.guest.seed import make_seed
from vmkit.guest.ssh import SSHSession
from vmkit.host.netutil import free_port, read_banner
from vmkit.state import SSHEndpoint

pytestmark = pytest.mark.vm


def test_partition_layout_and_boot_menu(tmp_path: Path) -> None:
    root = tmp_path / "root.raw"
    with open(root, "wb") as f:
        f.truncate(8 << 20)
    kernel, initrd = tmp_path / "k", tmp_path / "i"
    kernel.write_bytes(b"kernel")
    initrd.write_bytes(b"initrd")
    out = bootdisk.assemble(root, kernel, initrd, "root=LABEL=vmkit-root rw", tmp_path / "d.raw")
    table = subprocess.run(
        ["sfdisk", "--dump", str(out)], capture_output=True, text=True, check=True
    ).stdout
    assert "start=        2048, size=      131072, type=6, bootable" in table
    assert "start=      133120, size=       16384, type=83" in table
    assert out.read_bytes()[510:512] == b"\x55\xaa"
    assert not list(tmp_path.glob("d.raw.*")), "scratch files left behind"
    assert "APPEND root=LABEL=vmkit-root rw" in bootdisk.syslinux_cfg("root=LABEL=vmkit-root rw")


@pytest.mark.parametrize("arch", ["amd64", "i386"])
def test_bootable_disk_boots_like_virtualbox_would(tmp_path: Path, arch: str) -> None:
    # i386 is what VirtualBox <= 6.0 runs without VT-x (raw mode): it must boot this way too.
    box = boxes.ensure(arch=arch)
    disk = bootdisk.ensure_bootable(box)
    assert bootdisk.ensure_bootable(box) == disk  # made once
    keys.generate(tmp_path / "id", "test")
    host_pub = keys.generate(tmp_path / "host", "test-host")
    make_seed(
        tmp_path / "seed.img",
        authorized_key=keys.public_line(tmp_path / "id"),
        host_key=tmp_path / "host",
        hostname="biosboot",
    )
    overlay = tmp_path / "overlay.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(disk), str(overlay)],
        check=True,
    )
    port = free_port()
    argv = [
        "qemu-system-x86_64",
        "-accel",
        "tcg,thread=multi,tb-size=256",
        "-cpu",
        "max",
        "-m",
        "1024",
        "-smp",
        "2",
        "-display",
        "none",
        "-nodefaults",
        "-device",
        "ahci,id=ahci",
        "-drive",
        f"file={overlay},if=none,id=d0,format=qcow2",
        "-device",
        "ide-hd,drive=d0,bus=ahci.0",
        "-drive",
        f"file={tmp_path / 'seed.img'},if=none,id=d1,format=raw,snapshot=on",
        "-device",
        "ide-hd,drive=d1,bus=ahci.1",
        "-netdev",
        f"user,id=n,hostfwd=tcp:127.0.0.1:{port}-:22",
        "-device",
        "e1000,netdev=n",
        "-serial",
        f"file:{tmp_path / 'serial.log'}",
    ]
    ep = SSHEndpoint(
        "127.0.0.1", port, "vmkit", str(tmp_path / "id"), keys.key_type_and_blob(host_pub)
    )
    qemu = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        out = ""
        while time.monotonic() < deadline and qemu.poll() is None and not out:
            if read_banner("127.0.0.1", port, timeout=3):
                try:
                    with SSHSession(ep) as s:
                        out = s.run(
                            [
                                "sh",
                                "-c",
                                "hostname; grep ' / ' /proc/mounts; cat /proc/cmdline; uname -m",
                            ]
                        ).stdout
                except Exception:  # sshd not ready yet: try again
                    time.sleep(1)
            else:
                time.sleep(1)
        log = (tmp_path / "serial.log").read_text(errors="replace")[-2000:]
        assert out, f"no SSH login; console:\n{log}"
        host, mount, cmdline, machine = out.splitlines()[:4]
        assert machine == ("x86_64" if arch == "amd64" else "i686")
        assert host == "biosboot"
        # A SATA disk's partition 2 (which disk is sda depends on probe order), not virtio.
        assert re.match(r"/dev/sd[ab]2 / ext4 ", mount), mount
        assert "initrd=/initrd.img" in cmdline  # SYSLINUX booted it, not -kernel
    finally:
        qemu.terminate()
        qemu.wait(30)
