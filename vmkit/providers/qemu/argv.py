"""The qemu-system command line of a vmkit VM, as a pure function of its settings.

What differs per guest architecture: x86 boxes boot on the ``pc`` machine; arm64 boxes on the
Arm ``virt`` machine, whose PCIe root bus takes no hot-plugged device, so ``HOTPLUG_PORTS``
empty ``pcie-root-port``s are made at boot for virtio-fs shares added later. What differs per
host OS: guest RAM is a shared memfd on Linux only (memfd is Linux's; virtio-fs needs it and
exists only there), and QEMU on Windows can neither ``-daemonize`` nor listen on a unix socket
that Python could reach, so QMP is on a TCP port of 127.0.0.1 there.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import attrs

#: The user-mode network's id; live forwards name it in ``hostfwd_add``.
NETDEV_ID = "net0"
#: Empty PCIe root ports an arm64 (``virt``) VM gets for hot-plugged devices, and their ids.
HOTPLUG_PORTS = 4
HOTPLUG_PORT_ID = "vmkit-hp{}"
#: On HVF (Apple silicon) the ``virt`` machine's high memory map needs a 40-bit physical
#: address space, more than M1's 36 bits, unless QEMU fits it in; ``highmem=off`` keeps every
#: device below 4 GiB, which leaves room for at most 3 GiB of RAM (RAM starts at 1 GiB).
HVF_LOW_MEMORY_MAX = 3072


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
    #: QMP's unix socket; or, where QEMU runs on Windows, a TCP port on 127.0.0.1.
    qmp: Path | int
    pidfile: Path
    serial_log: Path
    arch: str = "amd64"  # "amd64", "i386" or "arm64"
    host_os: str = sys.platform  # "linux", "darwin" or "win32"
    #: The guest kernel randomizes process addresses (off: ``norandmaps``, see tcg_keeps_aslr).
    aslr: bool = True


def build_argv(binary: str, c: QemuConfig) -> list[str]:
    """The argv that boots ``c`` in the background, with QMP to talk to it."""
    arm = c.arch == "arm64"
    shared_memory = c.host_os == "linux"
    machine = "virt" if arm else "pc"
    if arm and c.accel == "hvf":
        machine += ",highmem=off" if c.memory <= HVF_LOW_MEMORY_MAX else ",highmem=on"
    memory: list[str] = []
    if shared_memory:
        # Guest RAM as a shared memfd: virtio-fs shares hot-plugged later need it, and it
        # cannot be changed on a running VM.
        memory = ["-object", f"memory-backend-memfd,id=mem,size={c.memory}M,share=on"]
        machine += ",memory-backend=mem"
    hotplug: list[str] = []
    # x86: a generation id the guest kernel watches; a VM resumed from a saved boot gets a new
    # one (guid=auto), and the kernel reseeds its random generator (quickstart.py).
    vmgenid = [] if arm else ["-device", "vmgenid,guid=auto"]
    if arm:
        for i in range(HOTPLUG_PORTS):
            port_id = HOTPLUG_PORT_ID.format(i)
            hotplug += ["-device", f"pcie-root-port,id={port_id},chassis={i + 1}"]
    if isinstance(c.qmp, Path):
        qmp = f"unix:{_opt(c.qmp)},server=on,wait=off"
    else:
        qmp = f"tcp:127.0.0.1:{c.qmp},server=on,wait=off"
    return [
        binary,
        "-name",
        f"vmkit-{c.name},process=vmkit-{c.name}",
        *memory,
        "-machine",
        machine,
        "-m",
        f"{c.memory}M",
        "-smp",
        str(c.cpus),
        *accel_args(c.accel, c.arch),
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-kernel",
        str(c.kernel),
        "-initrd",
        str(c.initrd),
        "-append",
        kernel_cmdline(c),
        *hotplug,
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
        *vmgenid,
        "-serial",
        f"file:{_opt(c.serial_log)}",
        "-qmp",
        qmp,
        "-pidfile",
        str(c.pidfile),
        # QEMU for Windows has no -daemonize: the provider starts it detached there.
        *([] if c.host_os == "win32" else ["-daemonize"]),
    ]


def kernel_cmdline(c: QemuConfig) -> str:
    """The box's kernel command line plus what this machine's QEMU boots faster with.

    On the x86 ``pc`` machine, ``acpi=noirq`` routes PCI interrupts from SeaBIOS's table instead
    of ACPI's interrupt links, whose AML took ~2 s of an emulated boot to evaluate as the
    initrd loaded the virtio drivers (which use MSI-X anyway); ACPI PCI hot-plug, which
    virtio-fs shares need, stays (``pci=noacpi`` would turn it off).
    """
    extra = []
    if c.arch in ("amd64", "i386"):
        extra.append("acpi=noirq")
    if not c.aslr:
        extra.append("norandmaps")
    return " ".join([c.cmdline, *extra])


def tcg_keeps_aslr(arch: str, qemu_version: tuple[int, int] | None) -> bool:
    """Whether an emulated (TCG) guest should keep address-space randomization.

    QEMU before 8.0 keys its translated code for x86 guests by virtual address, so each new
    process, its libraries mapped at new random addresses, runs every instruction through the
    translator again: a process start cost ~3x more (measured in a guest: `iptables` 117 ms
    against 40 ms; a boot runs hundreds). There ``norandmaps`` is worth its cost in the
    disposable guest; newer QEMU translates position-independently, and Arm guests were not
    measured.
    """
    old_qemu = qemu_version is not None and qemu_version < (8, 0)
    return not (old_qemu and arch in ("amd64", "i386"))


def parse_qemu_version(text: str) -> tuple[int, int] | None:
    """(major, minor) from ``qemu-system-* --version`` output, or None."""
    m = re.search(r"QEMU emulator version (\d+)\.(\d+)", text)
    return (int(m.group(1)), int(m.group(2))) if m else None


def accel_args(accel: str, arch: str) -> list[str]:
    """``-accel`` and ``-cpu`` for ``accel`` running an ``arch`` guest."""
    if accel == "tcg":
        # Lima's speed settings for TCG; a 256 MiB code buffer instead of 1 GiB keeps QEMU's
        # RSS down. On Arm, QEMU's own pointer-authentication algorithm (pauth-impdef) is
        # much cheaper to emulate than the architected one, and the guest cannot tell.
        cpu = "max,pauth-impdef=on" if arch == "arm64" else "max"
        return ["-accel", "tcg,thread=multi,tb-size=256", "-cpu", cpu]
    if accel == "whpx":
        # WHPX has no "host" CPU model (QEMU offers it with KVM and HVF only); its in-kernel
        # interrupt controller is what QEMU's Windows guides turn off when guests stall.
        return ["-accel", "whpx,kernel-irqchip=off"]
    return ["-accel", accel, "-cpu", "host"]


def _opt(path: Path) -> str:
    """A path inside a QEMU option value, where ',' must be doubled."""
    return str(path).replace(",", ",,")
