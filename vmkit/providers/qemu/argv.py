"""The qemu-system command line of a vmkit VM, as a pure function of its settings."""

from __future__ import annotations

from pathlib import Path

import attrs

#: The user-mode network's id; live forwards name it in ``hostfwd_add``.
NETDEV_ID = "net0"


@attrs.frozen
class QemuConfig:
    """Everything the command line depends on."""

    name: str
    cpus: int
    memory: int  # MiB
    accel: str  # "kvm", "hvf", "whpx" or "tcg"
    kernel: Path
    initrd: Path
    cmdline: str
    disk: Path
    seed: Path
    ssh_port: int
    qmp: Path
    pidfile: Path
    serial_log: Path


def build_argv(binary: str, c: QemuConfig) -> list[str]:
    """The argv that boots ``c``, daemonized, with QMP on a unix socket."""
    if c.accel == "tcg":
        # Lima's speed settings for TCG; a 256 MiB code buffer instead of 1 GiB keeps QEMU's RSS down.
        accel = ["-accel", "tcg,thread=multi,tb-size=256", "-cpu", "max"]
    else:
        accel = ["-accel", c.accel, "-cpu", "host"]
    return [
        binary,
        "-name",
        f"vmkit-{c.name},process=vmkit-{c.name}",
        # Guest RAM as a shared memfd: virtio-fs shares hot-plugged later need it, and it
        # cannot be changed on a running VM.
        "-object",
        f"memory-backend-memfd,id=mem,size={c.memory}M,share=on",
        "-machine",
        "pc,memory-backend=mem",
        "-m",
        f"{c.memory}M",
        "-smp",
        str(c.cpus),
        *accel,
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-kernel",
        str(c.kernel),
        "-initrd",
        str(c.initrd),
        "-append",
        c.cmdline,
        "-drive",
        f"file={_opt(c.disk)},if=virtio,format=qcow2,discard=unmap",
        "-drive",
        f"file={_opt(c.seed)},if=virtio,format=raw,readonly=on",
        "-netdev",
        f"user,id={NETDEV_ID},hostfwd=tcp:127.0.0.1:{c.ssh_port}-:22",
        "-device",
        f"virtio-net-pci,netdev={NETDEV_ID}",
        "-device",
        "virtio-rng-pci",
        "-serial",
        f"file:{_opt(c.serial_log)}",
        "-qmp",
        f"unix:{_opt(c.qmp)},server=on,wait=off",
        "-pidfile",
        str(c.pidfile),
        "-daemonize",
    ]


def _opt(path: Path) -> str:
    """A path inside a QEMU option value, where ',' must be doubled."""
    return str(path).replace(",", ",,")
