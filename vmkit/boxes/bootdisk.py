"""A BIOS-bootable copy of a box's disk, for hypervisors without direct kernel boot (VirtualBox).

vmkit-mini's disk is a bare ext4 root filesystem that QEMU boots with ``-kernel``. VirtualBox
boots from the disk's MBR, so this makes a raw disk with an MBR partition table, a small FAT
partition holding SYSLINUX, the kernel, the initrd and the box's command line, and the root
filesystem as the second partition. Everything is done on image files (sfdisk, mtools,
``syslinux --install`` on an unmounted FAT image, dd): no loop devices, no mounts, no root.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

from vmkit.boxes import Box
from vmkit.errors import ToolMissing
from vmkit.host.runner import run, which
from vmkit.progress import Progress, no_progress

MBR_PATHS = (
    "/usr/lib/syslinux/mbr/mbr.bin",
    "/usr/lib/SYSLINUX/mbr.bin",
    "/usr/share/syslinux/mbr.bin",
)
BOOT_MIB = 64  # FAT16 partition: kernel + initrd are ~16 MiB
FIRST_MIB = 1  # where the first partition starts (the usual 1 MiB alignment)
FILE_NAME = "disk-bios.raw"


def bootable_path(box: Box) -> Path:
    """Where the bootable disk of ``box`` is kept (beside the box, made once)."""
    return box.dir / FILE_NAME


def ensure_bootable(box: Box, *, progress: Progress = no_progress) -> Path:
    """The box's BIOS-bootable raw disk, made on first use (~10 s; sparse, so cheap on disk)."""
    out = bootable_path(box)
    if out.exists():
        return out
    return make_bootable(box, out, progress=progress)


def syslinux_cfg(cmdline: str) -> str:
    """The boot menu: no prompt, straight into the box's kernel with its command line."""
    return (
        "DEFAULT vmkit\nPROMPT 0\nTIMEOUT 0\n"
        "LABEL vmkit\n  LINUX /vmlinuz\n  INITRD /initrd.img\n"
        f"  APPEND {cmdline}\n"
    )


def _mbr() -> Path:
    for p in MBR_PATHS:
        if Path(p).is_file():
            return Path(p)
    raise ToolMissing("syslinux's mbr.bin", package="syslinux-common")


def make_bootable(box: Box, out: Path, *, progress: Progress = no_progress) -> Path:
    """Write the bootable disk of ``box`` to ``out`` (atomically: a temp file, then rename)."""
    work = out.with_name(f".{out.name}.work")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        progress("making a BIOS-bootable copy of the box disk (SYSLINUX + root partition)")
        root = work / "root.raw"
        run([which("qemu-img"), "convert", "-O", "raw", str(box.disk), str(root)], timeout=600)
        assemble(root, box.kernel, box.initrd, box.cmdline, work / "disk.raw")
        (work / "disk.raw").replace(out)
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(work)
    return out


def assemble(root: Path, kernel: Path, initrd: Path, cmdline: str, out: Path) -> Path:
    """A raw MBR disk at ``out``: SYSLINUX + kernel + initrd on partition 1, ``root`` (a raw
    filesystem image) as partition 2."""
    tools = {t: which(t) for t in ("sfdisk", "mkfs.vfat", "mcopy", "syslinux", "dd")}
    mbr = _mbr()
    boot = out.with_name(out.name + ".fat")
    cfg = out.with_name(out.name + ".syslinux.cfg")
    try:
        boot.unlink(missing_ok=True)
        run(
            [tools["mkfs.vfat"], "-C", "-n", "VMKITBOOT", str(boot), str(BOOT_MIB * 1024)],
            timeout=60,
        )
        cfg.write_text(syslinux_cfg(cmdline), encoding="ascii")
        for src, name in ((kernel, "vmlinuz"), (initrd, "initrd.img"), (cfg, "syslinux.cfg")):
            run([tools["mcopy"], "-i", str(boot), str(src), f"::{name}"], timeout=60)
        run([tools["syslinux"], "--install", str(boot)], timeout=60)
        root_mib = -(-root.stat().st_size // (1 << 20))
        with open(out, "wb") as f:
            f.truncate((FIRST_MIB + BOOT_MIB + root_mib) << 20)
        layout = (
            "label: dos\n"
            f"start={FIRST_MIB << 11}, size={BOOT_MIB << 11}, type=6, bootable\n"
            f"start={(FIRST_MIB + BOOT_MIB) << 11}, size={root_mib << 11}, type=83\n"
        )
        run([tools["sfdisk"], "--quiet", str(out)], input=layout, timeout=60)
        # The MBR's boot code only (440 bytes): the partition table after it stays.
        _dd(tools["dd"], mbr, out, seek_bytes=0, count_bytes=440)
        _dd(tools["dd"], boot, out, seek_bytes=FIRST_MIB << 20)
        _dd(tools["dd"], root, out, seek_bytes=(FIRST_MIB + BOOT_MIB) << 20)
    finally:
        boot.unlink(missing_ok=True)
        cfg.unlink(missing_ok=True)
    return out


def _dd(dd: str, src: Path, dst: Path, *, seek_bytes: int, count_bytes: int | None = None) -> None:
    argv = [
        dd,
        f"if={src}",
        f"of={dst}",
        "bs=1M",
        f"seek={seek_bytes}",
        "conv=notrunc,sparse",
        "oflag=seek_bytes",
        "status=none",
    ]
    if count_bytes is not None:
        argv += [f"count={count_bytes}", "iflag=count_bytes"]
    run(argv, timeout=900)
