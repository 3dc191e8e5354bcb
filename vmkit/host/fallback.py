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
) -> Plan:
    """The plan for a new VM, given the provider asked for (``None``: the default, QEMU).

    ``accel`` is QEMU's accelerator as asked for (see ``vmkit.host.accel.requested``).
    Raises ``InvalidInput`` for a provider this policy does not cover, ``ToolMissing`` when
    VirtualBox is asked for but not installed (``vbox_version`` is ``None``), and
    ``AcceleratorFailed`` for a hardware accelerator asked for by name that does not work.
    """
    provider = requested or "qemu"
    if provider not in PROVIDERS:
        raise InvalidInput(
            f"vmkit cannot create VMs with provider {provider!r}",
            hint=f"use one of: {', '.join(PROVIDERS)}",
        )
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
    if plan.provider != "qemu" or accel == "auto":
        return plan
    return _honour(plan, hav, accel)


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
]
