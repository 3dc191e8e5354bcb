"""Which provider, box architecture and accelerator ``vmkit up`` uses: the one fallback policy.

========================  ==============  ===================================================
hardware virtualization   provider asked  plan
========================  ==============  ===================================================
usable                    qemu / none     qemu, amd64, kvm / hvf / whpx (tcg if QEMU can't)
usable                    virtualbox      virtualbox, amd64, hw
usable (Hyper-V holds     virtualbox      qemu, amd64, whpx/tcg: VirtualBox < 6.0 cannot run
it, Windows)              < 6.0           beside Hyper-V
not usable                qemu / none     qemu, amd64, tcg
not usable                virtualbox      virtualbox, i386, raw (raw mode runs 32-bit guests
                          <= 6.0          only)
not usable                virtualbox      qemu, amd64, tcg (VirtualBox 6.1 removed raw mode)
                          >= 6.1
any                       virtualbox,     ``ToolMissing``
                          not installed
========================  ==============  ===================================================

The box architecture defaults to the host CPU's (``HAVReport.native``: amd64, or arm64 on
Apple silicon and other Arm hosts). Another one asked for (``--arch``) runs on QEMU under TCG
whatever the host has, since hardware accelerators only run the host's own instruction set;
VirtualBox is refused for it (vmkit's VirtualBox VMs are x86 PCs).

An accelerator asked for by name (``--accel``/``$VMKIT_ACCEL``) is honoured for QEMU: ``tcg``
always; ``kvm``/``hvf``/``whpx`` only where detection proved it (else ``AcceleratorFailed``
with what detection found), never replaced by another.

``vmkit doctor`` prints ``Plan.reason``; the table is in docs/hardware-virtualization.md too.
"""

from __future__ import annotations

import re

import attrs

from vmkit.errors import AcceleratorFailed, InvalidInput, ToolMissing
from vmkit.host.accel import display
from vmkit.host.arch import ARCHES, native
from vmkit.host.virt import BOOT_PROOF, HAVReport

PROVIDERS = ("qemu", "virtualbox")
BOX = "vmkit-mini"

#: VirtualBox 6.1 removed raw mode, its only way to run a VM without VT-x/AMD-V.
RAW_MODE_REMOVED = (6, 1, 0)
#: VirtualBox 6.0 added running on top of Windows' hypervisor (Hyper-V).
HYPERV_SUPPORTED = (6, 0, 0)

_VERSION_LINE = re.compile(
    r"^(?P<major>\d+)\.(?P<minor>\d+)\.(?P<patch>\d+)"
    # Distribution builds add a tag ("_Debian", "_Ubuntu", "_BETA1"); "r" and the revision end it.
    r"(?:_[A-Za-z][A-Za-z0-9~.+-]*?)?"
    r"r(?P<rev>\d+)$"
)


class VersionNotUnderstood(InvalidInput):
    """``VBoxManage --version`` printed something that is not a version."""


@attrs.frozen
class Plan:
    """What ``vmkit up`` creates: ``accel`` is QEMU's accelerator, or "hw"/"raw" for VirtualBox."""

    provider: str
    arch: str
    box: str
    accel: str
    reason: str


def parse_vbox_version(text: str) -> tuple[int, int, int]:
    """The version in ``VBoxManage --version`` output, e.g. ``6.1.50_Debianr161033`` → (6, 1, 50).

    The version is the last non-empty line: on Linux, VBoxManage prints its warnings (such as
    "The vboxdrv kernel module is not loaded") before it.
    """
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    m = _VERSION_LINE.match(last)
    if m is None:
        shown = last if len(last) <= 60 else last[:57] + "..."
        raise VersionNotUnderstood(
            f"cannot read the VirtualBox version from `VBoxManage --version` output {shown!r}",
            hint="check that VirtualBox is installed correctly: `VBoxManage --version` "
            "should print something like 7.0.14r161095",
        )
    return (int(m["major"]), int(m["minor"]), int(m["patch"]))


def _show(version: tuple[int, int, int]) -> str:
    return ".".join(str(n) for n in version)


def choose(
    requested: str | None,
    hav: HAVReport,
    vbox_version: tuple[int, int, int] | None,
    accel: str = "auto",
    arch: str | None = None,
) -> Plan:
    """The plan for a new VM, given the provider asked for (``None``: the default, QEMU).

    ``accel`` is QEMU's accelerator as asked for (see ``vmkit.host.accel.requested``);
    ``arch`` the box architecture asked for (``None``: the host CPU's). Raises
    ``InvalidInput`` for a provider this policy does not cover or VirtualBox with a box of
    another processor, ``ToolMissing`` when VirtualBox is asked for but not installed
    (``vbox_version`` is ``None``), and ``AcceleratorFailed`` for a hardware accelerator asked
    for by name that does not work (or cannot run ``arch``).
    """
    provider = requested or "qemu"
    if provider not in PROVIDERS:
        raise InvalidInput(
            f"vmkit cannot create VMs with provider {provider!r}",
            hint=f"use one of: {', '.join(PROVIDERS)}",
        )
    host = hav.native if hav.native in ARCHES else "amd64"
    guest = arch or host
    if provider == "virtualbox" and guest == "arm64":
        raise InvalidInput(
            "VirtualBox cannot run vmkit's arm64 box: vmkit's VirtualBox VMs are x86 PCs",
            hint="use QEMU, which runs it: leave out --provider",
        )
    if not native(guest, host):
        return _foreign(provider, guest, host, accel)
    if provider == "virtualbox":
        if vbox_version is None:
            raise ToolMissing(
                "VBoxManage",
                hint="install VirtualBox (virtualbox.org), or leave out --provider to use "
                "the default QEMU provider",
            )
        plan = _virtualbox(hav, vbox_version)
    else:
        plan = _qemu(hav)
    if plan.provider == "qemu":
        plan = attrs.evolve(plan, arch=guest)
    if plan.provider != "qemu" or accel == "auto":
        return plan
    return _honour(plan, hav, accel)


def windows_advice(hav: HAVReport, vbox_version: tuple[int, int, int] | None) -> str | None:
    """What to tell a Windows user whose QEMU falls back to TCG and who has no VirtualBox."""
    if hav.system != "Windows" or hav.accel == "whpx" or vbox_version is not None:
        return None
    if hav.native not in ("amd64", "i386"):
        return None  # QEMU has no WHPX for Arm: nothing to turn on
    return (
        "Neither QEMU's Windows Hypervisor Platform (WHPX) nor VirtualBox is available, so VMs "
        "run in software emulation (TCG), 5 to 20 times slower. To let QEMU use hardware "
        "virtualization, turn on 'Windows Hypervisor Platform' (Control Panel > Programs > "
        "Turn Windows features on or off; or in an administrator PowerShell: "
        "`Enable-WindowsOptionalFeature -Online -FeatureName HypervisorPlatform`), restart, "
        "and check that virtualization is on in the firmware (`vmkit doctor`); or install "
        "VirtualBox."
    )


def _foreign(provider: str, guest: str, host: str, accel: str) -> Plan:
    """The plan for a box of another processor than the host's: QEMU under TCG, or why not."""
    if provider == "virtualbox":
        raise InvalidInput(
            f"VirtualBox cannot run the {guest} box on this {host} computer: vmkit's VirtualBox "
            "VMs run the host's own processor type",
            hint=f"use QEMU, which emulates {guest}: leave out --provider",
        )
    if accel not in ("auto", "tcg"):
        raise AcceleratorFailed(
            f"{display(accel)} cannot run the {guest} box: hardware accelerators run only the "
            f"host's own processor type ({host})",
            hint=f"leave out --accel: QEMU emulates {guest} in software (TCG)",
        )
    reason = (
        f"The {guest} box is foreign to this {host} host, so QEMU emulates it in software "
        "(TCG): slower than a native box."
    )
    return Plan("qemu", guest, BOX, "tcg", reason)


def _honour(plan: Plan, hav: HAVReport, accel: str) -> Plan:
    """``plan`` with the accelerator the user named, or why that one cannot be used."""
    if accel == "tcg":
        return attrs.evolve(
            plan, accel="tcg", reason="QEMU runs the box in software emulation (TCG), as asked."
        )
    if hav.usable and hav.accel == accel:
        return attrs.evolve(
            plan, accel=accel, reason=f"QEMU runs the box with {display(accel)}, as asked."
        )
    failed = [c for c in hav.checks if c.ok is False]
    proof = hav.check(BOOT_PROOF)
    why = (
        proof.detail
        if proof is not None and proof.ok is False
        else "; ".join(f"{c.name}: {c.detail}" for c in failed)
    )
    raise AcceleratorFailed(
        f"{display(accel)} cannot run VMs here" + (f": {why}" if why else ""),
        hint="leave out --accel (or use --accel auto) to fall back to software emulation; "
        "`vmkit doctor` explains what was found",
    )


def _qemu(hav: HAVReport) -> Plan:
    if hav.usable and hav.accel != "tcg":
        reason = (
            "Hardware virtualization is usable, so QEMU runs the 64-bit box with "
            f"{hav.accel.upper()}."
        )
        return Plan("qemu", "amd64", BOX, hav.accel, reason)
    if hav.usable:
        reason = (
            "Hardware virtualization is on, but QEMU cannot use it on this host, so QEMU runs "
            "the 64-bit box in software emulation (TCG): slower, but it works."
        )
    else:
        reason = (
            "Hardware virtualization is not usable here, so QEMU runs the 64-bit box in "
            "software emulation (TCG): slower, but it works."
        )
    return Plan("qemu", "amd64", BOX, "tcg", reason)


def _virtualbox(hav: HAVReport, version: tuple[int, int, int]) -> Plan:
    shown = _show(version)
    if hav.usable:
        if hav.kind == "whpx" and version < HYPERV_SUPPORTED:
            how = "WHPX" if hav.accel == "whpx" else "software emulation (TCG)"
            reason = (
                f"VirtualBox {shown} cannot run while Windows' hypervisor (Hyper-V) holds "
                f"VT-x/AMD-V (6.0 and newer can), so vmkit uses QEMU with {how} instead."
            )
            return Plan("qemu", "amd64", BOX, hav.accel, reason)
        reason = f"Hardware virtualization is usable, so VirtualBox {shown} runs the 64-bit box."
        return Plan("virtualbox", "amd64", BOX, "hw", reason)
    if version < RAW_MODE_REMOVED:
        reason = (
            f"Hardware virtualization is not usable, so VirtualBox {shown} runs the 32-bit box "
            "in its software mode (raw mode), which cannot run 64-bit guests."
        )
        return Plan("virtualbox", "i386", BOX, "raw", reason)
    reason = (
        f"VirtualBox {shown} cannot start VMs without hardware virtualization (6.1 removed its "
        "software mode), so vmkit uses QEMU's software emulation (TCG): slower, but it works."
    )
    return Plan("qemu", "amd64", BOX, "tcg", reason)


__all__ = [
    "BOX",
    "PROVIDERS",
    "Plan",
    "VersionNotUnderstood",
    "choose",
    "parse_vbox_version",
    "windows_advice",
]
