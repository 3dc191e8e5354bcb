"""Hardware-virtualization detection: Linux on injected /proc/cpuinfo and recorded QEMU output,
macOS and Windows on recorded tool output, and one real run on this (no-HAV) CI machine."""

from __future__ import annotations

import platform
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from vmkit.errors import CommandTimeout, ToolMissing
from vmkit.host.accel import parse_accel_help
from vmkit.host.runner import Result
from vmkit.host.virt import (
    BOOT_PROOF,
    CPU_FLAG,
    FIRMWARE,
    HOST_CPU,
    HV_SUPPORT,
    HYPERVISOR,
    KVM_ACCESS,
    KVM_DEVICE,
    HAVReport,
    LinuxPaths,
    detect,
    explain,
    notice,
    parse_cpu_flags,
    parse_powershell,
    parse_systeminfo,
    probe_name,
)

FIX = Path(__file__).parent / "fixtures" / "hostvirt"
KVM_PROBE = probe_name("kvm")
HVF_PROBE = probe_name("hvf")
WHPX_PROBE = probe_name("whpx")


def fixture(name: str) -> str:
    return (FIX / name).read_bytes().decode()


Answer = Result | Exception


class FakeRunner:
    """Answers by program name (``sysctl`` also by key, ``-accel help`` as "PROGRAM -accel
    help"); records every argv (``-accel help`` ones apart, in ``help_calls``)."""

    def __init__(self, answers: dict[str, Answer]) -> None:
        self.answers = answers
        self.calls: list[list[str]] = []
        self.help_calls: list[list[str]] = []

    def __call__(
        self,
        argv: Sequence[str],
        *,
        timeout: float = 60.0,
        check: bool = True,
        input: str | bytes | None = None,
    ) -> Result:
        args = list(argv)
        if args[1:] == ["-accel", "help"]:
            self.help_calls.append(args)
            key = f"{args[0]} -accel help"
        else:
            self.calls.append(args)
            key = args[0] if args[0] != "sysctl" else f"sysctl {args[-1]}"
        answer = self.answers.get(key)
        if answer is None:
            raise ToolMissing(args[0])
        if isinstance(answer, Exception):
            raise answer
        return Result(args, answer.exit_code, answer.stdout, answer.stderr, answer.duration)

    def ran(self, program: str) -> bool:
        return any(c[0] == program for c in self.calls)


def res(stdout: str = "", stderr: str = "", code: int = 0, duration: float = 0.05) -> Result:
    return Result(["x"], code, stdout, stderr, duration)


QEMU = "qemu-system-x86_64"
ARM_QEMU = "qemu-system-aarch64"
PROBE_OK = res(fixture("qemu-probe-ok.stdout"))
# QEMU aborts (SIGABRT) after the MSR error: subprocess reports that as -6.
PROBE_MSR = res(fixture("qemu-kvm-msr.stdout"), fixture("qemu-kvm-msr.stderr"), code=-6)
PROBE_EACCES = res(stderr=fixture("qemu-kvm-eacces.stderr"), code=1)

RECORDED_CPUINFO = fixture("cpuinfo-cloud-amd-no-hav.txt")


def cpuinfo(add: Sequence[str] = (), remove: Sequence[str] = ()) -> str:
    """The recorded no-HAV cpuinfo with flags added or removed (a host with VT-x/AMD-V)."""
    out = []
    for line in RECORDED_CPUINFO.splitlines():
        if line.startswith("flags"):
            key, _, value = line.partition(":")
            flags = [f for f in value.split() if f not in remove] + list(add)
            line = f"{key}: {' '.join(flags)}"
        out.append(line)
    return "\n".join(out) + "\n"


def allow_all(_: Path, __: int) -> bool:
    return True


def deny_all(_: Path, __: int) -> bool:
    return False


def linux(
    tmp_path: Path,
    text: str,
    answers: dict[str, Answer],
    *,
    kvm: bool = True,
    access: Callable[[Path, int], bool] = allow_all,
) -> tuple[HAVReport, FakeRunner]:
    (tmp_path / "cpuinfo").write_text(text)
    dev = tmp_path / "kvm"
    if kvm:
        dev.write_text("")
    fake = FakeRunner(answers)
    paths = LinuxPaths(cpuinfo=tmp_path / "cpuinfo", kvm=dev, access=access)
    report = detect(system="Linux", machine="x86_64", runner=fake, linux=paths)
    return report, fake


def ok_of(report: HAVReport, name: str) -> bool | None:
    check = report.check(name)
    assert check is not None, f"no check {name!r} in {report.checks}"
    return check.ok


# ------------------------------------------------------------------ Linux


def test_parse_cpu_flags_reads_first_processor() -> None:
    flags = parse_cpu_flags(RECORDED_CPUINFO)
    assert "hypervisor" in flags and "avx2" in flags
    assert "vmx" not in flags and "svm" not in flags
    assert parse_cpu_flags("processor : 0\n") == frozenset()


@pytest.mark.parametrize(
    ("flag", "kind"),
    [("vmx", "vt-x"), ("svm", "amd-v")],
)
def test_linux_flag_and_probe_ok_is_usable(tmp_path: Path, flag: str, kind: str) -> None:
    report, fake = linux(tmp_path, cpuinfo(add=[flag], remove=["hypervisor"]), {QEMU: PROBE_OK})
    assert (report.usable, report.kind, report.accel) == (True, kind, "kvm")
    assert ok_of(report, CPU_FLAG) is True
    assert ok_of(report, KVM_PROBE) is True
    assert not report.inside_vm
    probe = fake.calls[0]
    # The probe must use the CPU model of a real boot: qemu64 passes KVM's start on this
    # machine and then hangs, -cpu host fails like a real boot does.
    assert probe[:3] == [QEMU, "-accel", "kvm"]
    assert probe[probe.index("-cpu") + 1] == "host"
    assert "-S" in probe and "stdio" in probe
    assert notice(report) == "hardware virtualization is usable: QEMU uses KVM"


def test_linux_msr_failure_is_not_usable_even_with_flag(tmp_path: Path) -> None:
    # A VM whose host exposes 'vmx' but whose KVM still cannot set up a vCPU.
    report, _ = linux(tmp_path, cpuinfo(add=["vmx"]), {QEMU: PROBE_MSR})
    assert (report.usable, report.kind, report.accel) == (False, "vt-x", "tcg")
    probe = report.check(KVM_PROBE)
    assert probe is not None and probe.ok is False
    assert "failed to set MSR 0x10a to 0x69" in probe.detail
    assert "nested virtualization" in probe.detail
    assert "Assertion" not in probe.detail


def test_linux_no_flag_probe_fails(tmp_path: Path) -> None:
    report, _ = linux(tmp_path, RECORDED_CPUINFO, {QEMU: PROBE_MSR})
    assert (report.usable, report.kind, report.accel) == (False, "none", "tcg")
    assert ok_of(report, CPU_FLAG) is False
    assert report.inside_vm
    line = notice(report)
    assert line.startswith("hardware virtualization is not usable (no vmx/svm CPU flag; KVM probe")
    assert "software emulation (TCG)" in line and "vmkit doctor" in line
    text = explain(report)
    assert "nested virtualization" in text and "nothing to enable" in text
    assert "BIOS" not in text  # nothing to switch on in a cloud VM


def test_linux_no_dev_kvm_does_not_probe(tmp_path: Path) -> None:
    report, fake = linux(
        tmp_path, cpuinfo(add=["vmx"], remove=["hypervisor"]), {QEMU: PROBE_OK}, kvm=False
    )
    assert not report.usable
    assert ok_of(report, KVM_DEVICE) is False
    assert ok_of(report, KVM_ACCESS) is None
    assert ok_of(report, KVM_PROBE) is None
    assert not fake.ran(QEMU)
    assert "no /dev/kvm" in notice(report)


def test_linux_no_access_tells_about_kvm_group(tmp_path: Path) -> None:
    report, fake = linux(
        tmp_path, cpuinfo(add=["vmx"], remove=["hypervisor"]), {QEMU: PROBE_OK}, access=deny_all
    )
    assert not report.usable
    assert ok_of(report, KVM_ACCESS) is False
    assert not fake.ran(QEMU)
    assert "usermod -aG kvm" in explain(report)


def test_linux_probe_permission_text_is_read(tmp_path: Path) -> None:
    # access() can say yes (e.g. ACLs) while QEMU is refused: the probe's text decides.
    report, _ = linux(tmp_path, cpuinfo(add=["svm"]), {QEMU: PROBE_EACCES})
    probe = report.check(KVM_PROBE)
    assert probe is not None and probe.ok is False
    assert "no permission" in probe.detail
    assert "Could not access KVM kernel module: Permission denied" in probe.detail


def test_linux_probe_timeout_is_a_failure(tmp_path: Path) -> None:
    report, _ = linux(tmp_path, cpuinfo(add=["vmx"]), {QEMU: CommandTimeout([QEMU], 3.0)})
    assert not report.usable
    assert ok_of(report, KVM_PROBE) is False


@pytest.mark.parametrize(("flag", "usable"), [("vmx", True), ("nothing", False)])
def test_linux_without_qemu_falls_back_to_flag(tmp_path: Path, flag: str, usable: bool) -> None:
    report, _ = linux(tmp_path, cpuinfo(add=[flag], remove=["hypervisor"]), {})
    assert report.usable is usable
    probe = report.check(KVM_PROBE)
    assert probe is not None and probe.ok is None and "not installed" in probe.detail


def test_linux_unreadable_cpuinfo_is_reported(tmp_path: Path) -> None:
    fake = FakeRunner({QEMU: PROBE_MSR})
    dev = tmp_path / "kvm"
    dev.write_text("")
    paths = LinuxPaths(cpuinfo=tmp_path / "missing", kvm=dev, access=allow_all)
    report = detect(system="Linux", machine="x86_64", runner=fake, linux=paths)
    assert ok_of(report, CPU_FLAG) is None
    assert not report.usable


def test_linux_arm_host_probes_kvm_with_the_arm_qemu(tmp_path: Path) -> None:
    # Arm CPUs show no virtualization flag: /dev/kvm and the probe decide.
    (tmp_path / "kvm").write_text("")
    fake = FakeRunner({ARM_QEMU: PROBE_OK})
    paths = LinuxPaths(cpuinfo=tmp_path / "absent", kvm=tmp_path / "kvm", access=allow_all)
    report = detect(system="Linux", machine="aarch64", runner=fake, linux=paths)
    assert (report.usable, report.accel, report.native) == (True, "kvm", "arm64")
    assert ok_of(report, HOST_CPU) is True
    probe = fake.calls[0]
    assert probe[:3] == [ARM_QEMU, "-accel", "kvm"]
    assert probe[probe.index("-machine") + 1] == "virt"


def test_linux_host_without_a_box_runs_emulated() -> None:
    fake = FakeRunner({})
    report = detect(system="Linux", machine="riscv64", runner=fake)
    assert (report.usable, report.accel) == (False, "tcg")
    assert ok_of(report, HOST_CPU) is False
    assert fake.calls == []
    assert "riscv64" in explain(report) and "can only be emulated" in explain(report)


def test_a_qemu_built_without_the_accelerator_is_not_probed(tmp_path: Path) -> None:
    report, fake = linux(
        tmp_path,
        cpuinfo(add=["vmx"], remove=["hypervisor"]),
        {QEMU: PROBE_OK, f"{QEMU} -accel help": res(fixture("qemu-aarch64-accel-help-linux.out"))},
    )
    assert (report.usable, report.accel) == (False, "tcg")
    probe = report.check(KVM_PROBE)
    assert probe is not None and probe.ok is False
    assert "built without kvm" in probe.detail and "lists: tcg" in probe.detail
    assert fake.calls == []  # the probe itself never ran


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("qemu-x86_64-accel-help-linux.out", {"tcg", "kvm"}),
        ("qemu-aarch64-accel-help-linux.out", {"tcg"}),
        ("qemu-aarch64-accel-help-macos.out", {"tcg", "hvf"}),
        ("qemu-x86_64-accel-help-windows.out", {"tcg", "whpx"}),
    ],
)
def test_accel_help_is_parsed(name: str, expected: set[str]) -> None:
    assert parse_accel_help(fixture(name)) == expected


def test_accel_help_of_something_else_is_none() -> None:
    assert parse_accel_help(fixture("qemu-probe-ok.stdout")) is None
    assert parse_accel_help("") is None


# ------------------------------------------------------------------ macOS

INTEL_FEATURES = fixture("sysctl-machdep.cpu.features-intel.txt")


def mac(answers: dict[str, Answer], machine: str = "x86_64") -> tuple[HAVReport, FakeRunner]:
    fake = FakeRunner(answers)
    return detect(system="Darwin", machine=machine, runner=fake), fake


def test_macos_intel_with_hvf() -> None:
    report, fake = mac(
        {
            "sysctl kern.hv_support": res("1\n"),
            "sysctl kern.hv_vmm_present": res("0\n"),
            "sysctl machdep.cpu.features": res(INTEL_FEATURES),
            QEMU: PROBE_OK,
        }
    )
    assert (report.usable, report.kind, report.accel) == (True, "hvf", "hvf")
    assert ok_of(report, CPU_FLAG) is True
    assert ok_of(report, HV_SUPPORT) is True
    assert ok_of(report, HVF_PROBE) is True
    assert fake.calls[-1][:3] == [QEMU, "-accel", "hvf"]


def test_macos_intel_vm_without_hvf() -> None:
    report, fake = mac(
        {
            "sysctl kern.hv_support": res("0\n"),
            "sysctl kern.hv_vmm_present": res("1\n"),
            "sysctl machdep.cpu.features": res(fixture("sysctl-machdep.cpu.features-intel-vm.txt")),
            QEMU: PROBE_OK,
        }
    )
    assert (report.usable, report.kind, report.accel) == (False, "none", "tcg")
    assert ok_of(report, CPU_FLAG) is False
    assert ok_of(report, HV_SUPPORT) is False
    assert report.inside_vm
    assert not fake.ran(QEMU)
    assert "nested virtualization" in explain(report)


def test_macos_hvf_probe_failure_wins() -> None:
    report, _ = mac(
        {
            "sysctl kern.hv_support": res("1\n"),
            "sysctl machdep.cpu.features": res(INTEL_FEATURES),
            QEMU: res(stderr="qemu-system-x86_64: -accel hvf: Error: HV_ERROR\n", code=1),
        }
    )
    assert (report.usable, report.accel) == (False, "tcg")
    probe = report.check(HVF_PROBE)
    assert probe is not None and "HV_ERROR" in probe.detail


def test_macos_apple_silicon_runs_the_arm64_box_with_hvf() -> None:
    report, fake = mac(
        {
            "sysctl kern.hv_support": res("1\n"),
            "sysctl kern.hv_vmm_present": res("0\n"),
            f"{ARM_QEMU} -accel help": res(fixture("qemu-aarch64-accel-help-macos.out")),
            ARM_QEMU: PROBE_OK,
        },
        machine="arm64",
    )
    assert (report.usable, report.kind, report.accel, report.native) == (
        True,
        "hvf",
        "hvf",
        "arm64",
    )
    assert ok_of(report, HOST_CPU) is True
    assert not fake.ran(QEMU)
    probe = fake.calls[-1]
    assert probe[:3] == [ARM_QEMU, "-accel", "hvf"]
    assert probe[probe.index("-machine") + 1] == "virt"
    assert probe[probe.index("-cpu") + 1] == "host"


def test_macos_without_hypervisor_framework_is_not_probed() -> None:
    report, fake = mac(
        {"sysctl kern.hv_support": res(fixture("sysctl-kern.hv_support-0.txt"))}, machine="arm64"
    )
    assert (report.usable, report.accel) == (False, "tcg")
    assert ok_of(report, HV_SUPPORT) is False
    assert fake.calls[-1][0] == "sysctl"


# ------------------------------------------------------------------ Windows


@pytest.mark.parametrize(
    ("name", "vendor", "vmx", "firmware", "hypervisor"),
    [
        ("systeminfo-vtx-enabled.txt", "GenuineIntel", True, True, False),
        ("systeminfo-firmware-off.txt", "AuthenticAMD", True, False, False),
        ("systeminfo-hypervisor.txt", None, None, None, True),
        ("systeminfo-german.txt", None, None, None, None),
    ],
)
def test_parse_systeminfo(
    name: str, vendor: str | None, vmx: bool | None, firmware: bool | None, hypervisor: bool | None
) -> None:
    facts = parse_systeminfo(fixture(name))
    assert (facts.vendor, facts.vmx, facts.firmware, facts.hypervisor) == (
        vendor,
        vmx,
        firmware,
        hypervisor,
    )


def test_parse_powershell() -> None:
    facts = parse_powershell(fixture("powershell-amd-firmware-off.txt"))
    assert (facts.vendor, facts.vmx, facts.firmware, facts.slat, facts.hypervisor) == (
        "AuthenticAMD",
        True,
        False,
        True,
        False,
    )


def win(answers: dict[str, Answer]) -> tuple[HAVReport, FakeRunner]:
    fake = FakeRunner(answers)
    return detect(system="Windows", machine="AMD64", runner=fake), fake


@pytest.mark.parametrize(
    "source",
    [
        {"powershell": res(fixture("powershell-vtx-enabled.txt"))},
        {"systeminfo": res(fixture("systeminfo-vtx-enabled.txt"))},
    ],
)
def test_windows_vtx_enabled_without_hyperv(source: dict[str, Answer]) -> None:
    report, fake = win({**source, QEMU: PROBE_OK})
    # VirtualBox can use VT-x; QEMU has no accelerator while Windows' hypervisor is off.
    assert (report.usable, report.kind, report.accel) == (True, "vt-x", "tcg")
    assert ok_of(report, FIRMWARE) is True
    assert ok_of(report, WHPX_PROBE) is None
    assert not fake.ran(QEMU)
    assert "QEMU cannot use it" in notice(report)
    assert "Windows Hypervisor Platform" in explain(report)


@pytest.mark.parametrize(
    "source",
    [
        {"powershell": res(fixture("powershell-amd-firmware-off.txt"))},
        {"systeminfo": res(fixture("systeminfo-firmware-off.txt"))},
    ],
)
def test_windows_firmware_off(source: dict[str, Answer]) -> None:
    report, _ = win(source)
    assert (report.usable, report.kind, report.accel) == (False, "none", "tcg")
    assert ok_of(report, FIRMWARE) is False
    text = explain(report)
    assert "SVM Mode" in text and "Intel Virtualization Technology" in text
    assert "turned off in the BIOS/UEFI" in notice(report)


@pytest.mark.parametrize(
    "source",
    [
        {"powershell": res(fixture("powershell-hyperv.txt"))},
        {
            "powershell": ToolMissing("powershell"),
            "systeminfo": res(fixture("systeminfo-hypervisor.txt")),
        },
    ],
)
@pytest.mark.parametrize(
    ("probe", "accel"),
    [
        (PROBE_OK, "whpx"),
        (
            res(
                stderr="qemu-system-x86_64: -accel whpx: WHPX: No accelerator found, hr=80004005\n",
                code=1,
            ),
            "tcg",
        ),
    ],
)
def test_windows_hyperv(source: dict[str, Answer], probe: Result, accel: str) -> None:
    report, fake = win({**source, QEMU: probe})
    assert (report.usable, report.kind, report.accel) == (True, "whpx", accel)
    assert ok_of(report, HYPERVISOR) is None
    assert fake.calls[-1][:3] == [QEMU, "-accel", "whpx"]
    assert "-cpu" not in fake.calls[-1]
    assert "bcdedit /set hypervisorlaunchtype off" in explain(report)


def test_windows_nothing_readable() -> None:
    report, _ = win({"systeminfo": res(fixture("systeminfo-german.txt"))})
    assert (report.usable, report.accel) == (False, "tcg")
    assert ok_of(report, FIRMWARE) is None


# ------------------------------------------------------------------ this machine


def test_this_host_without_a_vmx_flag_never_counts_kvm_usable_unproven() -> None:
    """A real check, no fakes. CI machines here show no vmx/svm flag; on some KVM fails at
    the vCPU probe, on others the probe passes but the kernel never runs. Without a kernel to
    prove it on, both must come out as "not usable, use TCG"."""
    assert platform.system() == "Linux"
    report = detect()
    assert ok_of(report, CPU_FLAG) is False, "this host has VT-x/AMD-V now: revisit this test"
    assert (report.usable, report.accel) == (False, "tcg")
    probe = report.check(KVM_PROBE)
    proof = report.check(BOOT_PROOF)
    # Either the probe failed outright, or it passed and the boot proof is owed.
    assert (probe is not None and probe.ok is False) or (
        proof is not None and proof.ok is False and "not proven" in proof.detail
    )


def test_a_passing_probe_without_cpu_flag_is_not_proven(tmp_path: Path) -> None:
    report, _ = linux(tmp_path, RECORDED_CPUINFO, {QEMU: PROBE_OK})
    assert ok_of(report, KVM_PROBE) is True
    assert (report.usable, report.accel) == (False, "tcg")
    assert "not proven" in (report.check(BOOT_PROOF) or pytest.fail("no proof check")).detail
    assert "KVM not proven to run a kernel" in notice(report)


def test_probe_leaves_no_core_dump(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """QEMU 7.2 aborts when KVM cannot set up a vCPU; with core dumps allowed that writes a
    ~40 MB ``core`` file into the working directory (measured). The probe must prevent that:
    here a stand-in that aborts the same way takes QEMU's place, so the test holds on hosts
    where the real probe passes too."""
    import resource

    from vmkit.host import runner

    def aborting(argv: Sequence[str], **kw: object) -> Result:
        return runner.run([sys.executable, "-c", "import os; os.abort()"], **kw)  # type: ignore[arg-type]

    soft, hard = resource.getrlimit(resource.RLIMIT_CORE)
    assert hard != 0, "core dumps cannot be enabled here, so this test could not fail"
    monkeypatch.chdir(tmp_path)
    resource.setrlimit(resource.RLIMIT_CORE, (hard, hard))
    try:
        report = detect(runner=aborting)
        assert resource.getrlimit(resource.RLIMIT_CORE) == (hard, hard)
    finally:
        resource.setrlimit(resource.RLIMIT_CORE, (soft, hard))
    if ok_of(report, KVM_ACCESS):
        assert ok_of(report, KVM_PROBE) is False
    assert list(tmp_path.iterdir()) == []
