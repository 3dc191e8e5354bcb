"""The fallback policy table, and reading ``VBoxManage --version`` output."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmkit.errors import AcceleratorFailed, InvalidInput, ToolMissing
from vmkit.host.fallback import (
    Plan,
    VersionNotUnderstood,
    choose,
    parse_vbox_version,
    windows_advice,
)
from vmkit.host.virt import Check, HAVReport

FIX = Path(__file__).parent / "fixtures" / "hostvirt"


@pytest.mark.parametrize(
    ("name", "version"),
    [
        # Recorded outputs (see fixtures/hostvirt/SOURCES.md).
        ("version-5.2.out", (5, 2, 44)),
        ("version-5.2-debian.out", (5, 2, 24)),
        ("version-6.0.out", (6, 0, 24)),
        ("version-6.1-ubuntu.out", (6, 1, 26)),
        ("version-6.1-vboxdrv-warning.out", (6, 1, 50)),
        ("version-7.0.out", (7, 0, 14)),
        ("version-7.1-debian.out", (7, 1, 10)),
    ],
)
def test_parse_recorded_versions(name: str, version: tuple[int, int, int]) -> None:
    assert parse_vbox_version((FIX / name).read_text()) == version


@pytest.mark.parametrize(
    ("text", "version"),
    [
        ("7.0.14r161095\n", (7, 0, 14)),
        ("6.0.24r139119", (6, 0, 24)),
        ("7.1.4_Ubuntur165100\n", (7, 1, 4)),
        ("6.1.50_Debianr161033\n", (6, 1, 50)),
        ("7.0.6_Debianr155176\r\n", (7, 0, 6)),  # Windows line end
        ("  6.1.38_Ubuntur153438  \n\n", (6, 1, 38)),
    ],
)
def test_parse_version_formats(text: str, version: tuple[int, int, int]) -> None:
    assert parse_vbox_version(text) == version


@pytest.mark.parametrize(
    "text",
    [
        "",
        "\n\n",
        "7.0.14",  # no revision
        "7.0r161095",  # no patch number
        "version 7.0.14r161095",
        "7.0.14r161095 extra",
        "7.0.14_r161095",  # empty tag
        "VBoxManage: error: Failed to create the VirtualBox object!\n",
        "6.1.50r161033\nWARNING: something after the version\n",
        "x" * 200,
    ],
)
def test_parse_version_rejects_garbage(text: str) -> None:
    with pytest.raises(VersionNotUnderstood) as info:
        parse_vbox_version(text)
    assert "VBoxManage --version" in str(info.value)
    assert isinstance(info.value, InvalidInput)
    assert len(str(info.value)) < 300


def hav(usable: bool, kind: str, accel: str) -> HAVReport:
    return HAVReport(usable, kind, accel, (Check("test", usable, "injected"),), "Linux")


KVM = hav(True, "vt-x", "kvm")
HVF = hav(True, "hvf", "hvf")
WHPX = hav(True, "whpx", "whpx")
HYPERV_NO_WHPX = hav(True, "whpx", "tcg")  # Hyper-V on, Windows Hypervisor Platform off
WIN_VTX = hav(True, "vt-x", "tcg")  # Windows, VT-x free, QEMU has no accelerator
NONE = hav(False, "none", "tcg")
FLAG_BUT_BROKEN = hav(False, "vt-x", "tcg")


@pytest.mark.parametrize(
    ("requested", "report", "vbox", "expected"),
    [
        # Hardware virtualization usable: the 64-bit box in the requested provider.
        (None, KVM, None, ("qemu", "amd64", "kvm")),
        ("qemu", KVM, (7, 0, 14), ("qemu", "amd64", "kvm")),
        (None, HVF, None, ("qemu", "amd64", "hvf")),
        (None, WHPX, None, ("qemu", "amd64", "whpx")),
        (None, WIN_VTX, None, ("qemu", "amd64", "tcg")),
        ("virtualbox", KVM, (5, 2, 44), ("virtualbox", "amd64", "hw")),
        ("virtualbox", KVM, (7, 1, 4), ("virtualbox", "amd64", "hw")),
        ("virtualbox", WIN_VTX, (6, 1, 50), ("virtualbox", "amd64", "hw")),
        # Windows' hypervisor holds VT-x: VirtualBox 6.0+ runs on it, 5.x cannot.
        ("virtualbox", WHPX, (6, 0, 0), ("virtualbox", "amd64", "hw")),
        ("virtualbox", WHPX, (7, 0, 14), ("virtualbox", "amd64", "hw")),
        ("virtualbox", WHPX, (5, 2, 44), ("qemu", "amd64", "whpx")),
        ("virtualbox", HYPERV_NO_WHPX, (5, 2, 44), ("qemu", "amd64", "tcg")),
        # Not usable, QEMU: software emulation.
        (None, NONE, None, ("qemu", "amd64", "tcg")),
        ("qemu", NONE, (6, 0, 24), ("qemu", "amd64", "tcg")),
        (None, FLAG_BUT_BROKEN, None, ("qemu", "amd64", "tcg")),
        # Not usable, VirtualBox <= 6.0: raw mode, 32-bit box.
        ("virtualbox", NONE, (5, 2, 44), ("virtualbox", "i386", "raw")),
        ("virtualbox", NONE, (6, 0, 0), ("virtualbox", "i386", "raw")),
        ("virtualbox", NONE, (6, 0, 24), ("virtualbox", "i386", "raw")),
        # Not usable, VirtualBox >= 6.1: no raw mode, QEMU instead.
        ("virtualbox", NONE, (6, 1, 0), ("qemu", "amd64", "tcg")),
        ("virtualbox", NONE, (6, 1, 50), ("qemu", "amd64", "tcg")),
        ("virtualbox", NONE, (7, 0, 14), ("qemu", "amd64", "tcg")),
        ("virtualbox", FLAG_BUT_BROKEN, (7, 1, 4), ("qemu", "amd64", "tcg")),
    ],
)
def test_policy(
    requested: str | None,
    report: HAVReport,
    vbox: tuple[int, int, int] | None,
    expected: tuple[str, str, str],
) -> None:
    plan = choose(requested, report, vbox)
    assert isinstance(plan, Plan)
    assert (plan.provider, plan.arch, plan.accel) == expected
    assert plan.box == "vmkit-mini"
    assert plan.reason.endswith(".")
    assert plan.reason.count(". ") <= 1  # one or two sentences


@pytest.mark.parametrize(
    ("name", "usable", "provider", "arch"),
    [
        ("version-5.2.out", False, "virtualbox", "i386"),
        ("version-6.0.out", False, "virtualbox", "i386"),
        ("version-6.1-ubuntu.out", False, "qemu", "amd64"),
        ("version-7.0.out", False, "qemu", "amd64"),
        ("version-7.1-debian.out", False, "qemu", "amd64"),
        ("version-7.1-debian.out", True, "virtualbox", "amd64"),
    ],
)
def test_policy_from_recorded_versions(name: str, usable: bool, provider: str, arch: str) -> None:
    report = KVM if usable else NONE
    plan = choose("virtualbox", report, parse_vbox_version((FIX / name).read_text()))
    assert (plan.provider, plan.arch) == (provider, arch)


def test_reasons_say_why() -> None:
    assert "6.1 removed" in choose("virtualbox", NONE, (7, 0, 14)).reason
    assert "VirtualBox 7.0.14" in choose("virtualbox", NONE, (7, 0, 14)).reason
    assert "raw mode" in choose("virtualbox", NONE, (6, 0, 24)).reason
    assert "32-bit" in choose("virtualbox", NONE, (6, 0, 24)).reason
    assert "Hyper-V" in choose("virtualbox", WHPX, (5, 2, 44)).reason
    assert "software emulation" in choose(None, NONE, None).reason
    assert "KVM" in choose(None, KVM, None).reason


@pytest.mark.parametrize("report", [KVM, NONE])
def test_virtualbox_not_installed(report: HAVReport) -> None:
    with pytest.raises(ToolMissing) as info:
        choose("virtualbox", report, None)
    assert "install VirtualBox" in info.value.hint
    assert "QEMU" in info.value.hint


@pytest.mark.parametrize("requested", ["vagrant", "kvm", "VirtualBox"])
def test_unknown_provider(requested: str) -> None:
    with pytest.raises(InvalidInput) as info:
        choose(requested, KVM, None)
    assert "qemu, virtualbox" in info.value.hint


def test_empty_provider_means_default() -> None:
    assert choose("", KVM, None).provider == "qemu"


# --- box architectures -------------------------------------------------------------------------

APPLE_SILICON = HAVReport(True, "hvf", "hvf", (Check("test", True, "injected"),), "Darwin", "arm64")
ARM_LINUX_NO_KVM = HAVReport(False, "none", "tcg", (), "Linux", "arm64")


@pytest.mark.parametrize(
    ("report", "arch", "expected"),
    [
        # The host CPU's box is the default, with the host's accelerator.
        (APPLE_SILICON, None, ("arm64", "hvf")),
        (ARM_LINUX_NO_KVM, None, ("arm64", "tcg")),
        (KVM, None, ("amd64", "kvm")),
        (KVM, "i386", ("i386", "kvm")),
        # Another processor's box runs emulated, whatever the host has.
        (KVM, "arm64", ("arm64", "tcg")),
        (NONE, "arm64", ("arm64", "tcg")),
        (APPLE_SILICON, "amd64", ("amd64", "tcg")),
        (APPLE_SILICON, "i386", ("i386", "tcg")),
    ],
)
def test_the_box_matches_the_host_cpu_unless_asked(
    report: HAVReport, arch: str | None, expected: tuple[str, str]
) -> None:
    plan = choose(None, report, None, arch=arch)
    assert (plan.provider, plan.arch, plan.accel) == ("qemu", *expected)


def test_a_foreign_box_says_so_in_one_line() -> None:
    reason = choose(None, KVM, None, arch="arm64").reason
    assert "arm64 box is foreign to this amd64 host" in reason and "(TCG)" in reason
    assert "\n" not in reason


def test_a_hardware_accelerator_named_for_a_foreign_box_is_refused() -> None:
    with pytest.raises(AcceleratorFailed, match="only the host's own processor type") as info:
        choose(None, KVM, None, "kvm", arch="arm64")
    assert "leave out --accel" in (info.value.hint or "")
    assert choose(None, KVM, None, "tcg", arch="arm64").accel == "tcg"


@pytest.mark.parametrize(("report", "arch"), [(KVM, "arm64"), (APPLE_SILICON, None)])
def test_virtualbox_cannot_run_the_arm64_box(report: HAVReport, arch: str | None) -> None:
    with pytest.raises(InvalidInput, match="VirtualBox cannot run") as info:
        choose("virtualbox", report, (7, 1, 4), arch=arch)
    assert "QEMU" in (info.value.hint or "")


def test_virtualbox_cannot_emulate_x86_on_an_arm_host() -> None:
    with pytest.raises(InvalidInput, match="VirtualBox cannot run the amd64 box"):
        choose("virtualbox", APPLE_SILICON, (7, 1, 4), arch="amd64")


WINDOWS_NO_WHPX = HAVReport(True, "vt-x", "tcg", (), "Windows", "amd64")


def test_windows_without_whpx_or_virtualbox_is_told_how_to_enable_it() -> None:
    advice = windows_advice(WINDOWS_NO_WHPX, None)
    assert advice is not None
    assert "Windows Hypervisor Platform" in advice and "HypervisorPlatform" in advice
    assert "software emulation (TCG)" in advice and "slower" in advice
    # VirtualBox installed, WHPX in use, another OS, an Arm Windows: nothing to say.
    assert windows_advice(WINDOWS_NO_WHPX, (7, 0, 14)) is None
    assert windows_advice(HAVReport(True, "whpx", "whpx", (), "Windows"), None) is None
    assert windows_advice(NONE, None) is None
    assert windows_advice(HAVReport(False, "none", "tcg", (), "Windows", "arm64"), None) is None
