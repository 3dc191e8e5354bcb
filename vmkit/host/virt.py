"""Is hardware virtualization (Intel VT-x, AMD-V, Apple's Hypervisor.framework) usable here?

Found by probing, not by looking for a device file: a cloud VM without nested virtualization
can have ``/dev/kvm`` while KVM fails as soon as QEMU sets up a virtual CPU
("failed to set MSR 0x10a to 0x69"). On Linux, macOS and Windows hosts with QEMU installed the
deciding check is a short QEMU start with the accelerator and CPU model a real boot would use
(``-cpu host``: QEMU's default ``qemu64`` model passes that start on such a VM, and then a
Linux guest hangs without printing a line). A vCPU that starts is still no proof (a paravirtual
KVM, ``kvm_pvm``, starts one and never runs a stock kernel): given the box's kernel, ``detect``
boots it with the accelerator (``vmkit.host.accel.prove``, whose verdict is cached); without one,
KVM on a CPU that shows no VT-x/AMD-V flag counts as not proven, so not usable.

``detect()`` gathers the findings into a ``HAVReport``; ``explain()`` turns one into plain
words for ``vmkit doctor`` and ``notice()`` into the one line ``vmkit up`` prints.
"""

from __future__ import annotations

import os
import platform
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import attrs

from vmkit.errors import CommandTimeout, ToolError, ToolMissing
from vmkit.host import runner as _runner
from vmkit.host import signals
from vmkit.host.accel import QEMU_BINARY, bare_qemu, parse_accel_help, prove
from vmkit.host.arch import ARCHES, host_arch, qemu_binary
from vmkit.host.runner import Result

#: A probe start takes 0.03-0.06 s here (QEMU 7.2); the timeout only guards against a hang.
PROBE_TIMEOUT = 3.0
_SMALL_TIMEOUT = 10.0
# systeminfo queries every hotfix and network card: seconds, sometimes tens of them.
_SYSTEMINFO_TIMEOUT = 60.0

_X86 = {"x86_64", "amd64", "i386", "i486", "i586", "i686", "x86"}

# Check names, so callers and tests can find one finding by name.
CPU_FLAG = "VT-x/AMD-V in the CPU"
IN_VM = "running inside a VM"
KVM_DEVICE = "/dev/kvm"
KVM_ACCESS = "/dev/kvm access"
HOST_CPU = "host CPU architecture"
HV_SUPPORT = "Hypervisor.framework"
FIRMWARE = "enabled in firmware (BIOS/UEFI)"
HYPERVISOR = "Hyper-V or another hypervisor running"
WINDOWS_FACTS = "Windows virtualization report"
BOOT_PROOF = "boots the box's kernel"


def probe_name(accel: str) -> str:
    """The name of the QEMU probe check for ``accel`` ("KVM probe", "HVF probe", ...)."""
    return f"{accel.upper()} probe"


class RunFn(Protocol):
    """The part of ``vmkit.host.runner.run`` that detection uses; tests pass a fake."""

    def __call__(
        self,
        argv: Sequence[str],
        *,
        timeout: float = ...,
        check: bool = ...,
        input: str | bytes | None = ...,
    ) -> Result: ...


@attrs.frozen
class Check:
    """One finding. ``ok`` is ``None`` when the check is informational or could not be made."""

    name: str
    ok: bool | None
    detail: str


@attrs.frozen
class HAVReport:
    """What detection found.

    ``kind`` is the hardware virtualization found ("vt-x", "amd-v", "hvf", "whpx" or "none"),
    even when it is not usable; ``accel`` is what QEMU should use ("kvm", "hvf", "whpx" or
    "tcg" for software emulation); ``usable`` says whether hardware virtualization can run
    vmkit's 64-bit x86 boxes here. ``system`` is ``platform.system()`` of the host.
    """

    usable: bool
    kind: str
    accel: str
    checks: tuple[Check, ...]
    system: str = ""
    #: The box architecture of the host's CPU, the only one an accelerator can run.
    native: str = "amd64"

    def check(self, name: str) -> Check | None:
        """The finding called ``name``, if detection made it."""
        for c in self.checks:
            if c.name == name:
                return c
        return None

    @property
    def inside_vm(self) -> bool:
        """The host is itself a virtual machine (so VT-x/AMD-V needs nested virtualization)."""
        c = self.check(IN_VM)
        return c is not None and c.detail.startswith("yes")


@attrs.frozen
class LinuxPaths:
    """Where Linux detection reads (Linux only: ``/proc`` and ``/dev/kvm`` exist nowhere
    else, and only ``_detect_linux`` reads them); tests point these at fixtures."""

    cpuinfo: Path = Path("/proc/cpuinfo")
    kvm: Path = Path("/dev/kvm")
    #: ``os.access``-like; injectable because root passes every access check.
    access: Callable[[Path, int], bool] = attrs.field(default=os.access)


def detect(
    *,
    system: str | None = None,
    machine: str | None = None,
    runner: RunFn = _runner.run,
    linux: LinuxPaths | None = None,
    kernel: Path | None = None,
    recheck: bool = False,
) -> HAVReport:
    """Find out whether hardware virtualization is usable on this host, by probing.

    ``system`` ("Linux", "Darwin", "Windows") and ``machine`` ("x86_64", "arm64", ...) default
    to this host's; ``runner`` runs the programs consulted (QEMU, sysctl, PowerShell,
    systeminfo). With ``kernel`` (the box's), a hardware accelerator that passes the probe is
    proven by booting that kernel (cached; ``recheck`` boots again). Never raises for what it
    finds: a missing tool becomes a check with ``ok=None``.
    """
    system = system or platform.system()
    machine = (machine or platform.machine()).lower()
    native = host_arch(machine)
    binary = qemu_binary(native) if native in ARCHES else QEMU_BINARY
    if system == "Linux":
        report = _detect_linux(runner, linux or LinuxPaths(), machine, binary)
    elif system == "Darwin":
        report = _detect_macos(runner, machine, binary)
    elif system == "Windows":
        report = _detect_windows(runner, machine)
    else:
        return HAVReport(
            usable=False,
            kind="none",
            accel="tcg",
            checks=(Check("host system", None, f"{system}: vmkit cannot check this system"),),
            system=system,
            native=native,
        )
    report = attrs.evolve(report, native=native)
    if not report.usable or report.accel == "tcg":
        return report
    if kernel is not None:
        verdict = prove(report.accel, kernel, binary=binary, recheck=recheck)
        detail = verdict.detail + (" (remembered from an earlier boot)" if verdict.cached else "")
        return _with_proof(report, Check(BOOT_PROOF, verdict.ok, detail))
    flag = report.check(CPU_FLAG)
    if flag is not None and flag.ok is False:
        return _with_proof(
            report,
            Check(
                BOOT_PROOF,
                False,
                "not proven: KVM starts a virtual CPU although the CPU shows no VT-x/AMD-V flag "
                "(a paravirtual KVM may not run a stock kernel); vmkit boots the box's kernel "
                "to find out at `vmkit up` (or `vmkit doctor` once the box is built)",
            ),
        )
    return report


def _with_proof(report: HAVReport, proof: Check) -> HAVReport:
    ok = proof.ok is True
    return attrs.evolve(
        report,
        usable=ok,
        accel=report.accel if ok else "tcg",
        checks=(*report.checks, proof),
    )


# ---------------------------------------------------------------- QEMU probe

_QMP_QUIT = '{"execute": "qmp_capabilities"}\n{"execute": "quit"}\n'


def probe_argv(accel: str, *, binary: str = QEMU_BINARY) -> list[str]:
    """The QEMU command line of the probe.

    ``-S`` stops before the first guest instruction but after QEMU has created and reset the
    vCPU, which is where KVM fails on a host without nested virtualization. ``-qmp stdio``
    lets the probe tell QEMU to quit instead of waiting for a timeout.
    """
    return [*bare_qemu(binary, accel, 32), "-S", "-qmp", "stdio"]


# Known QEMU failure texts, as plain words; the raw text follows in the detail.
_PROBE_TEXTS: list[tuple[re.Pattern[str], str]] = [
    (
        re.compile(r"failed to set MSR"),
        "KVM cannot set up a virtual CPU, as on a VM whose host offers no nested virtualization",
    ),
    (re.compile(r"Permission denied"), "no permission to use the accelerator"),
    (re.compile(r"No such file or directory"), "the accelerator's device is missing"),
    (re.compile(r"invalid accelerator|not supported|No accelerator found", re.I), ""),
]


def _probe(run: RunFn, accel: str, binary: str = QEMU_BINARY) -> Check:
    name = probe_name(accel)
    argv = probe_argv(accel, binary=binary)
    with signals.no_core_dumps():
        built_in = _accelerators(run, binary)
    if built_in is not None and accel not in built_in:
        return Check(
            name,
            False,
            f"this QEMU ({binary}) was built without {accel} "
            f"(`-accel help` lists: {', '.join(sorted(built_in)) or 'nothing'})",
        )
    try:
        # QEMU 7.2 aborts after "failed to set MSR"; with core dumps enabled that would leave
        # a file of the size of the probe's memory in the working directory.
        with signals.no_core_dumps():
            result = run(argv, timeout=PROBE_TIMEOUT, check=False, input=_QMP_QUIT)
    except ToolMissing:
        return Check(name, None, f"not tried: QEMU ({argv[0]}) is not installed")
    except CommandTimeout:
        return Check(name, False, f"QEMU with -accel {accel} gave no answer in {PROBE_TIMEOUT:g} s")
    if result.ok and '"return"' in result.stdout:
        return Check(
            name, True, f"QEMU started a virtual CPU with -accel {accel} in {result.duration:.2f} s"
        )
    error = _first_error(result.stderr) or f"exit {result.exit_code}"
    for pattern, words in _PROBE_TEXTS:
        if pattern.search(error) and words:
            error = f"{words} ({error})"
            break
    return Check(
        name, False, f"QEMU with -accel {accel} failed in {result.duration:.2f} s: {error}"
    )


def _accelerators(run: RunFn, binary: str) -> frozenset[str] | None:
    """What ``binary -accel help`` lists, or None if QEMU is missing or said something else."""
    try:
        result = run([binary, "-accel", "help"], timeout=PROBE_TIMEOUT, check=False)
    except ToolError:
        return None
    return parse_accel_help(result.stdout) if result.ok else None


def _first_error(stderr: str) -> str:
    """QEMU's first error line without its program prefix, warnings skipped."""
    for line in stderr.splitlines():
        text = re.sub(r"^\S*qemu-system-\S+?:\s*", "", line.strip())
        if not text or text.startswith(("warning:", "terminating on signal")):
            continue
        return re.sub(r"^error:\s*", "", text)
    return ""


# ---------------------------------------------------------------- Linux


def parse_cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The CPU flags of the first processor in ``/proc/cpuinfo`` text."""
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def _detect_linux(run: RunFn, paths: LinuxPaths, machine: str, binary: str) -> HAVReport:
    system = "Linux"
    arm = host_arch(machine) == "arm64"
    if machine not in _X86 and not arm:
        arch = Check(
            HOST_CPU, False, f"{machine}: vmkit has no box for this processor, so it runs emulated"
        )
        return HAVReport(False, "none", "tcg", (arch,), system)
    checks: list[Check] = []
    if arm:
        # Arm CPUs show no virtualization flag in /proc/cpuinfo: /dev/kvm and the probe tell.
        checks.append(Check(HOST_CPU, True, f"{machine}: vmkit's arm64 box runs natively"))
        flag_check, kind = Check(CPU_FLAG, None, "not shown by Arm processors"), "kvm"
    else:
        flag_check, kind, vm = _x86_flags(paths)
        checks += [flag_check, vm]
    return _detect_kvm(run, paths, binary, checks, flag_check, kind)


def _x86_flags(paths: LinuxPaths) -> tuple[Check, str, Check]:
    """The VT-x/AMD-V finding, its kind, and whether this is a VM (from /proc/cpuinfo)."""
    try:
        flags = parse_cpu_flags(paths.cpuinfo.read_text(encoding="utf-8", errors="replace"))
    except OSError as e:
        flags = frozenset()
        flag_check = Check(CPU_FLAG, None, f"could not read {paths.cpuinfo}: {e.strerror}")
    else:
        flag_check = _flag_check(flags)
    kind = "vt-x" if "vmx" in flags else "amd-v" if "svm" in flags else "none"
    if "hypervisor" in flags:
        vm = Check(
            IN_VM, None, "yes: this computer is itself a virtual machine ('hypervisor' flag)"
        )
    else:
        vm = Check(IN_VM, None, "no")
    return flag_check, kind, vm


def _detect_kvm(
    run: RunFn, paths: LinuxPaths, binary: str, checks: list[Check], flag_check: Check, kind: str
) -> HAVReport:
    system = "Linux"
    exists = paths.kvm.exists()
    if exists:
        checks.append(Check(KVM_DEVICE, True, "present"))
    else:
        checks.append(
            Check(KVM_DEVICE, False, "missing: the kvm_intel or kvm_amd module is not loaded")
        )
    access = exists and paths.access(paths.kvm, os.R_OK | os.W_OK)
    if not exists:
        checks.append(Check(KVM_ACCESS, None, "not checked: no /dev/kvm"))
    elif access:
        checks.append(Check(KVM_ACCESS, True, "read and write allowed"))
    else:
        checks.append(
            Check(
                KVM_ACCESS,
                False,
                "not allowed for this user: `sudo usermod -aG kvm $USER`, then log in again",
            )
        )

    if access:
        probe = _probe(run, "kvm", binary)
    else:
        probe = Check(probe_name("kvm"), None, "not tried: /dev/kvm is missing or not accessible")
    checks.append(probe)

    # Without QEMU to probe with, the CPU flag and the device are all that can be known.
    flag_ok = flag_check.ok is True or kind == "kvm"  # Arm: nothing to see in the CPU flags
    usable = probe.ok if probe.ok is not None else flag_ok and access
    return HAVReport(usable, kind, "kvm" if usable else "tcg", tuple(checks), system)


def _flag_check(flags: frozenset[str]) -> Check:
    if "vmx" in flags:
        return Check(CPU_FLAG, True, "Intel VT-x ('vmx' flag)")
    if "svm" in flags:
        return Check(CPU_FLAG, True, "AMD-V ('svm' flag)")
    return Check(CPU_FLAG, False, "no 'vmx' or 'svm' flag in /proc/cpuinfo")


# ---------------------------------------------------------------- macOS


def _sysctl(run: RunFn, key: str) -> str | None:
    try:
        result = run(["sysctl", "-n", key], timeout=_SMALL_TIMEOUT, check=False)
    except ToolError:
        return None
    return result.stdout.strip() if result.ok else None


def _detect_macos(run: RunFn, machine: str, binary: str) -> HAVReport:
    hv = _sysctl(run, "kern.hv_support")
    vmm = _sysctl(run, "kern.hv_vmm_present")
    checks: list[Check] = []
    if machine not in _X86:
        # Apple silicon has no VMX flag to read: Hypervisor.framework runs Arm guests.
        checks.append(
            Check(
                HOST_CPU,
                True,
                f"{machine} (Apple silicon): the arm64 box runs with HVF; x86 boxes run emulated",
            )
        )
        checks.append(Check(IN_VM, None, "yes: kern.hv_vmm_present = 1" if vmm == "1" else "no"))
        checks.append(Check(HV_SUPPORT, hv == "1", f"kern.hv_support = {hv or 'unknown'}"))
        return _hvf(run, binary, hv, checks)

    features = _sysctl(run, "machdep.cpu.features")
    if features is None:
        checks.append(Check(CPU_FLAG, None, "could not read machdep.cpu.features"))
    elif "VMX" in features.split():
        checks.append(Check(CPU_FLAG, True, "Intel VT-x ('VMX' in machdep.cpu.features)"))
    else:
        checks.append(Check(CPU_FLAG, False, "no 'VMX' in machdep.cpu.features"))
    checks.append(Check(IN_VM, None, "yes: kern.hv_vmm_present = 1" if vmm == "1" else "no"))
    if hv is None:
        checks.append(Check(HV_SUPPORT, None, "could not read kern.hv_support"))
    else:
        checks.append(Check(HV_SUPPORT, hv == "1", f"kern.hv_support = {hv}"))

    return _hvf(run, binary, hv, checks)


def _hvf(run: RunFn, binary: str, hv: str | None, checks: list[Check]) -> HAVReport:
    system = "Darwin"
    if hv == "1":
        probe = _probe(run, "hvf", binary)
    else:
        probe = Check(probe_name("hvf"), None, "not tried: Hypervisor.framework is not supported")
    checks.append(probe)
    usable = probe.ok if probe.ok is not None else hv == "1"
    return HAVReport(
        usable, "hvf" if hv == "1" else "none", "hvf" if usable else "tcg", tuple(checks), system
    )


# ---------------------------------------------------------------- Windows

_PS_SCRIPT = (
    "$p = Get-CimInstance -ClassName Win32_Processor | Select-Object -First 1; "
    "$c = Get-CimInstance -ClassName Win32_ComputerSystem; "
    '"Manufacturer=$($p.Manufacturer)"; '
    '"VMMonitorModeExtensions=$($p.VMMonitorModeExtensions)"; '
    '"VirtualizationFirmwareEnabled=$($p.VirtualizationFirmwareEnabled)"; '
    '"SecondLevelAddressTranslationExtensions=$($p.SecondLevelAddressTranslationExtensions)"; '
    '"HypervisorPresent=$($c.HypervisorPresent)"'
)
POWERSHELL_ARGV = ["powershell", "-NoProfile", "-NonInteractive", "-Command", _PS_SCRIPT]


@attrs.frozen
class WindowsFacts:
    """What Windows says about virtualization; ``None`` where it did not say."""

    source: str
    vendor: str | None = None
    vmx: bool | None = None
    firmware: bool | None = None
    slat: bool | None = None
    hypervisor: bool | None = None


def _yes_no(text: str) -> bool | None:
    word = text.strip().lower()
    if word in ("true", "yes"):
        return True
    if word in ("false", "no"):
        return False
    return None


def parse_powershell(text: str) -> WindowsFacts:
    """Parse the ``Key=Value`` lines printed by ``POWERSHELL_ARGV``."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key.strip()] = value.strip()
    return WindowsFacts(
        source="PowerShell (Win32_Processor, Win32_ComputerSystem)",
        vendor=values.get("Manufacturer") or None,
        vmx=_yes_no(values.get("VMMonitorModeExtensions", "")),
        firmware=_yes_no(values.get("VirtualizationFirmwareEnabled", "")),
        slat=_yes_no(values.get("SecondLevelAddressTranslationExtensions", "")),
        hypervisor=_yes_no(values.get("HypervisorPresent", "")),
    )


def parse_systeminfo(text: str) -> WindowsFacts:
    """Parse the "Hyper-V Requirements" section of English ``systeminfo`` output.

    With a hypervisor running, Windows prints one sentence instead of the four Yes/No lines.
    Other languages translate the labels; then nothing is found and every fact stays ``None``.
    """
    lines = text.splitlines()
    start = next(
        (i for i, line in enumerate(lines) if line.startswith("Hyper-V Requirements:")), None
    )
    if start is None:
        return WindowsFacts(source="systeminfo")
    section = [lines[start].partition(":")[2]]
    section += [line for line in lines[start + 1 :] if line[:1].isspace()]
    joined = " ".join(section)
    if "hypervisor has been detected" in joined:
        return WindowsFacts(source="systeminfo", hypervisor=True)
    values: dict[str, bool | None] = {}
    for part in section:
        key, sep, value = part.strip().rpartition(":")
        if sep:
            values[key.strip()] = _yes_no(value)
    return WindowsFacts(
        source="systeminfo",
        vendor=_systeminfo_vendor(lines),
        vmx=values.get("VM Monitor Mode Extensions"),
        firmware=values.get("Virtualization Enabled In Firmware"),
        slat=values.get("Second Level Address Translation"),
        hypervisor=False,
    )


def _systeminfo_vendor(lines: list[str]) -> str | None:
    # "Processor(s): ... [01]: Intel64 Family 6 Model 142 Stepping 10 GenuineIntel ~1803 Mhz"
    for line in lines:
        for vendor in ("GenuineIntel", "AuthenticAMD"):
            if vendor in line:
                return vendor
    return None


def _windows_facts(run: RunFn) -> WindowsFacts:
    try:
        result = run(POWERSHELL_ARGV, timeout=_SMALL_TIMEOUT * 3, check=False)
        if result.ok:
            facts = parse_powershell(result.stdout)
            if facts.firmware is not None or facts.hypervisor is not None:
                return facts
    except ToolError:
        pass
    try:
        result = run(["systeminfo"], timeout=_SYSTEMINFO_TIMEOUT, check=False)
    except ToolError:
        return WindowsFacts(source="nothing (PowerShell and systeminfo both failed)")
    return parse_systeminfo(result.stdout)


def _detect_windows(run: RunFn, machine: str) -> HAVReport:
    system = "Windows"
    facts = _windows_facts(run)
    checks = [Check(WINDOWS_FACTS, None, f"read from {facts.source}")]
    if machine not in _X86:
        # QEMU's WHPX accelerator runs x86 guests on x86 Windows only.
        checks.append(
            Check(
                HOST_CPU,
                False,
                f"{machine}: QEMU has no WHPX for Arm, so even the arm64 box runs emulated",
            )
        )
        return HAVReport(False, "none", "tcg", tuple(checks), system)
    amd = facts.vendor == "AuthenticAMD"
    hw_kind = "amd-v" if amd else "vt-x"

    if facts.hypervisor:
        checks.append(
            Check(
                HYPERVISOR,
                None,
                "yes: Hyper-V, WSL2, Windows Sandbox or Memory Integrity keeps VT-x/AMD-V "
                "(or Windows itself runs in a VM)",
            )
        )
        probe = _probe(run, "whpx")
        checks.append(probe)
        # VT-x/AMD-V is on and held by Windows' hypervisor: VirtualBox 6.0+ runs on top of it,
        # QEMU only through the optional "Windows Hypervisor Platform" feature (WHPX).
        accel = "tcg" if probe.ok is False else "whpx"
        return HAVReport(True, "whpx", accel, tuple(checks), system)

    if facts.hypervisor is False:
        checks.append(Check(HYPERVISOR, None, "no"))
    if facts.vmx is not None:
        word = "AMD-V" if amd else "VT-x"
        checks.append(Check(CPU_FLAG, facts.vmx, f"{word}: {'yes' if facts.vmx else 'no'}"))
    if facts.firmware is None:
        checks.append(Check(FIRMWARE, None, "Windows did not say"))
        return HAVReport(False, "none", "tcg", tuple(checks), system)
    checks.append(Check(FIRMWARE, facts.firmware, "yes" if facts.firmware else "no: turned off"))
    checks.append(
        Check(
            probe_name("whpx"),
            None,
            "not tried: QEMU needs the Windows Hypervisor Platform feature, which is off",
        )
    )
    usable = facts.firmware and facts.vmx is not False
    return HAVReport(usable, hw_kind if usable else "none", "tcg", tuple(checks), system)


# ---------------------------------------------------------------- words for people


# What a failed check means, in the few words of ``notice()``.
_SHORT = {
    CPU_FLAG: "no vmx/svm CPU flag",
    KVM_DEVICE: "no /dev/kvm",
    KVM_ACCESS: "no access to /dev/kvm",
    probe_name("kvm"): "KVM probe failed",
    probe_name("hvf"): "HVF probe failed",
    probe_name("whpx"): "WHPX probe failed",
    HOST_CPU: "no accelerator for this processor",
    HV_SUPPORT: "Hypervisor.framework not supported",
    FIRMWARE: "turned off in the BIOS/UEFI",
    BOOT_PROOF: "the accelerator could not boot the box's kernel",
}


def _short(c: Check) -> str:
    if c.name == BOOT_PROOF and c.detail.startswith("not proven"):
        return "KVM not proven to run a kernel"
    return _SHORT.get(c.name, c.name)


def notice(report: HAVReport) -> str:
    """One line for ``vmkit up``: what was found and what vmkit does about it."""
    if report.usable and report.accel != "tcg":
        return f"hardware virtualization is usable: QEMU uses {report.accel.upper()}"
    reasons = [_short(c) for c in report.checks if c.ok is False]
    why = f" ({'; '.join(reasons)})" if reasons else ""
    if report.usable:
        what = "hardware virtualization is on, but QEMU cannot use it here"
    else:
        what = "hardware virtualization is not usable"
    return (
        f"{what}{why}: using QEMU software emulation (TCG), slower but works — see `vmkit doctor`"
    )


_WHAT = (
    "Hardware virtualization (Intel VT-x, AMD-V; Apple's Hypervisor.framework on Macs) is a "
    "feature of the processor that lets a virtual machine run its code directly on the CPU. "
    "Without it the VM's processor has to be imitated in software, which is about 5 to 20 "
    "times slower, and VirtualBox 6.1 and newer cannot start any VM at all (older VirtualBox "
    "runs only 32-bit guests without it)."
)

_ENABLE_FIRMWARE = (
    "To turn it on: restart the computer and open its BIOS/UEFI setup (usually F2, F10, F12, "
    "Del or Esc right after power-on; on Windows also Settings > Recovery > Advanced startup > "
    "UEFI Firmware Settings). Look for 'Intel Virtualization Technology' / 'VT-x' (Intel) or "
    "'SVM Mode' / 'AMD-V' (AMD), often under Advanced or CPU Configuration, set it to Enabled, "
    "save and restart."
)

_HYPERV = (
    "On Windows, Hyper-V, WSL2, Docker Desktop, Windows Sandbox and 'Memory Integrity' (Core "
    "Isolation) all start Windows' own hypervisor, which keeps VT-x/AMD-V for itself. "
    "VirtualBox 6.0 and newer run on top of it (more slowly); VirtualBox 5.x fails with "
    "VERR_VMX_NO_VMX. QEMU can use it if the optional feature 'Windows Hypervisor Platform' "
    "is turned on (Control Panel > Programs > Turn Windows features on or off). To turn "
    "Windows' hypervisor off instead, run `bcdedit /set hypervisorlaunchtype off` in an "
    "administrator prompt and restart (`bcdedit /set hypervisorlaunchtype auto` turns it back "
    "on; WSL2 and Docker Desktop need it)."
)

_NESTED = (
    "This computer is itself a virtual machine (for example a cloud server), and its host "
    "does not pass hardware virtualization on to it (no 'nested virtualization'). There is "
    "nothing to enable here; only the provider of the host could offer it."
)

_FALLBACK = (
    "What vmkit does: it runs VMs under QEMU's software emulation (TCG). Everything works, "
    "only more slowly: booting takes tens of seconds instead of a few."
)


def explain(report: HAVReport) -> str:
    """Plain words for ``vmkit doctor``: what was found, why it matters, what to do."""
    lines = ["Hardware virtualization: " + ("usable" if report.usable else "not usable")]
    for c in report.checks:
        mark = {True: "ok", False: "NO", None: "--"}[c.ok]
        lines.append(f"  [{mark}] {c.name}: {c.detail}")
    paragraphs = ["\n".join(lines), _WHAT]
    if report.usable and report.accel != "tcg":
        paragraphs.append(
            f"vmkit runs VMs with hardware acceleration (QEMU -accel {report.accel}) and can "
            "use 64-bit guests in VirtualBox too."
        )
        if report.kind == "whpx":
            paragraphs.append(_HYPERV)
        return "\n\n".join(paragraphs)

    host_cpu = report.check(HOST_CPU)
    if host_cpu is not None and host_cpu.ok is False:
        paragraphs.append(
            f"QEMU cannot accelerate guests on this processor ({host_cpu.detail}): vmkit's "
            "boxes (amd64, i386, arm64) can only be emulated here. There is nothing to enable."
        )
    elif report.kind == "whpx" or (report.system == "Windows" and report.usable):
        paragraphs.append(_HYPERV)
    elif report.inside_vm:
        paragraphs.append(_NESTED)
    elif _access_denied(report):
        paragraphs.append(
            "The processor has it, but this user may not use /dev/kvm. Run "
            "`sudo usermod -aG kvm $USER`, log out and in again, then `vmkit doctor` again."
        )
    else:
        paragraphs.append(_ENABLE_FIRMWARE)
    if report.usable:
        paragraphs.append(
            "What vmkit does: QEMU runs VMs under software emulation (TCG), slower but it "
            "works; VirtualBox (`--provider virtualbox`) can use hardware virtualization."
        )
    else:
        paragraphs.append(_FALLBACK)
    return "\n\n".join(paragraphs)


def _access_denied(report: HAVReport) -> bool:
    c = report.check(KVM_ACCESS)
    return c is not None and c.ok is False
