"""Guest architectures: which one the host's CPU runs natively, and which QEMU runs each.

Debian's names are used throughout (amd64, i386, arm64). A box whose architecture the host's
CPU does not run natively runs under QEMU's software emulation (TCG) whatever accelerator the
host has: KVM, HVF and WHPX only run guests of the host's own instruction set.
"""

from __future__ import annotations

import functools
import platform
import sys
from pathlib import Path

from vmkit.errors import InvalidInput, ToolError, ToolMissing
from vmkit.host import runner

#: Every box architecture vmkit knows.
ARCHES = ("amd64", "i386", "arm64")

_MACHINES = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "x64": "amd64",
    "i386": "i386",
    "i486": "i386",
    "i586": "i386",
    "i686": "i386",
    "x86": "i386",
    "aarch64": "arm64",
    "arm64": "arm64",
    "armv8": "arm64",
}

#: The QEMU system emulator that runs each architecture (x86_64 runs 32-bit x86 guests too).
QEMU_BINARIES = {
    "amd64": "qemu-system-x86_64",
    "i386": "qemu-system-x86_64",
    "arm64": "qemu-system-aarch64",
}

#: Which guests a host CPU runs natively (with KVM/HVF/WHPX): a 64-bit x86 CPU runs 32-bit too.
_NATIVE = {"amd64": ("amd64", "i386"), "i386": ("i386",), "arm64": ("arm64",)}


def host_arch(machine: str | None = None) -> str:
    """The box architecture of the host CPU (``platform.machine()`` unless given), or the
    machine name itself when vmkit has no box for it."""
    m = (machine or platform.machine()).lower()
    return _MACHINES.get(m, m)


def default_arch() -> str:
    """The box architecture a new VM gets: the host CPU's, or amd64 where vmkit has none."""
    here = host_arch()
    return here if here in ARCHES else "amd64"


def check(arch: str) -> str:
    """``arch`` if vmkit knows it, else ``InvalidInput`` listing the known ones."""
    if arch not in ARCHES:
        raise InvalidInput(
            f"unknown architecture {arch!r}", hint=f"use one of: {', '.join(ARCHES)}"
        )
    return arch


def native(guest: str, host: str | None = None) -> bool:
    """Whether the host's CPU runs ``guest`` code natively (so an accelerator can run it)."""
    return guest in _NATIVE.get(host or host_arch(), ())


def qemu_binary(arch: str) -> str:
    """The QEMU program that boots ``arch`` boxes."""
    return QEMU_BINARIES[check(arch)]


def install_hint(binary: str) -> str:
    """How to install the QEMU that provides ``binary`` on this host OS."""
    if sys.platform == "darwin":
        return "install QEMU with Homebrew: `brew install qemu`"
    if sys.platform == "win32":
        return (
            "install QEMU: `choco install qemu` (or winget install SoftwareFreedomConservancy.QEMU)"
        )
    package = "qemu-system-arm" if binary.endswith("aarch64") else "qemu-system-x86"
    return f"install it, e.g. `apt-get install {package}` (Debian/Ubuntu)"


def find_qemu(arch: str) -> str:
    """The full path of the QEMU that runs ``arch``, or ``ToolMissing`` saying how to install it."""
    binary = qemu_binary(arch)
    try:
        return runner.which(binary)
    except ToolMissing as e:
        raise ToolMissing(binary, hint=install_hint(binary)) from e


def qemu_version_text(binary: str) -> str:
    """What the QEMU ``binary`` prints for ``--version`` ("" if it cannot say).

    Read once per binary file (path, size and time) in a process: an ``up`` needs it for the
    accelerator's proof cache and for the kernel command line.
    """
    exe = Path(runner.which(binary)).resolve()
    st = exe.stat()
    return _version_text(str(exe), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _version_text(exe: str, size: int, mtime_ns: int) -> str:
    try:
        return runner.run([exe, "--version"], timeout=10).stdout.strip()
    except ToolError:
        return ""
