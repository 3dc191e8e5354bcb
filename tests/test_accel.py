"""The accelerator choice: what users may ask for, the boot proof and its cache, the console
diagnosis, and the policy that honours a named accelerator. No VM boots here: the proof runs
stand-in programs (a real boot is in tests/test_boot_watchdog.py)."""

from __future__ import annotations

import os
import re
import stat
import time
from pathlib import Path

import pytest

from vmkit.errors import AcceleratorFailed, InvalidInput
from vmkit.guest import console
from vmkit.host import accel, arch, runner
from vmkit.host.fallback import choose
from vmkit.host.virt import BOOT_PROOF, CPU_FLAG, Check, HAVReport


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VMKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(accel.ENV, raising=False)


# ------------------------------------------------------------------ what may be asked for


def test_requested_defaults_to_auto_then_env(monkeypatch: pytest.MonkeyPatch) -> None:
    assert accel.requested(None, system="Linux") == "auto"
    monkeypatch.setenv(accel.ENV, "TCG")
    assert accel.requested(None, system="Linux") == "tcg"
    assert accel.requested("kvm", system="Linux") == "kvm"  # the option wins over the env


@pytest.mark.parametrize(
    ("value", "system", "words"),
    [
        ("bogus", "Linux", "is not an accelerator"),
        ("hvf", "Linux", "no hvf accelerator on Linux"),
        ("kvm", "Darwin", "no kvm accelerator on Darwin"),
        ("whpx", "Darwin", "use one of: auto, tcg, hvf"),
    ],
)
def test_requested_refuses_what_this_host_cannot_have(value: str, system: str, words: str) -> None:
    with pytest.raises(InvalidInput, match=re.escape(words)):
        accel.requested(value, system=system)


def test_requested_names_the_env_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(accel.ENV, "fast")
    with pytest.raises(InvalidInput, match=r"\$VMKIT_ACCEL 'fast'"):
        accel.requested(None, system="Linux")


# ------------------------------------------------------------------ the boot proof


def _fake_qemu(tmp_path: Path, body: str) -> str:
    exe = tmp_path / "fake-qemu"
    exe.write_text(
        f'#!/bin/sh\n[ "$1" = --version ] && {{ echo "fake QEMU 7.2"; exit 0; }}\n{body}\n'
    )
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    return str(exe)


@pytest.fixture
def kernel(tmp_path: Path) -> Path:
    k = tmp_path / "vmlinuz"
    k.write_bytes(b"\0" * 64)
    return k


BANNER = 'echo "[    0.000000] Linux version 6.1.0-57-amd64 (gcc)"; sleep 60'
SETUP_THEN_HANG = 'printf "Probing EDD (edd=off to disable)... ok\\n"; sleep 60'


def test_prove_passes_on_the_kernel_banner_and_caches_it(tmp_path: Path, kernel: Path) -> None:
    qemu = _fake_qemu(tmp_path, BANNER)
    v = accel.prove("kvm", kernel, binary=qemu, timeout=10)
    assert v.ok and not v.cached
    assert "booted the box's kernel" in v.detail
    again = accel.prove("kvm", kernel, binary=qemu, timeout=10)
    assert again.ok and again.cached
    accel.forget()
    assert not accel.prove("kvm", kernel, binary=qemu, timeout=10).cached


def test_prove_fails_on_silence_within_its_timeout(tmp_path: Path, kernel: Path) -> None:
    qemu = _fake_qemu(tmp_path, "sleep 60")
    started = time.monotonic()
    v = accel.prove("kvm", kernel, binary=qemu, timeout=1.0)
    assert time.monotonic() - started < 8  # the proof's own bound, not a speed goal
    assert not v.ok
    assert (
        v.detail
        == "KVM is present but could not run this VM's kernel: the console stayed empty for 1 s"
    )


def test_prove_setup_code_output_is_not_a_running_kernel(tmp_path: Path, kernel: Path) -> None:
    # Real-mode setup code prints before the kernel proper; a paravirtual KVM stops right there.
    v = accel.prove("kvm", kernel, binary=_fake_qemu(tmp_path, SETUP_THEN_HANG), timeout=1.0)
    assert not v.ok
    assert "could not run this VM's kernel" in v.detail and "Probing EDD" in v.detail


def test_prove_reports_a_qemu_that_refuses(tmp_path: Path, kernel: Path) -> None:
    qemu = _fake_qemu(
        tmp_path, 'echo "qemu: -accel kvm: Could not access KVM kernel module" >&2; exit 1'
    )
    v = accel.prove("kvm", kernel, binary=qemu, timeout=5)
    assert not v.ok and "Could not access KVM kernel module" in v.detail


def test_the_cache_is_per_kernel(tmp_path: Path, kernel: Path) -> None:
    qemu = _fake_qemu(tmp_path, BANNER)
    accel.prove("kvm", kernel, binary=qemu, timeout=10)
    other = tmp_path / "vmlinuz-other"
    other.write_bytes(b"\1" * 80)
    assert not accel.prove("kvm", other, binary=qemu, timeout=10).cached


def test_watch_kills_what_it_started(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    out = runner.watch(
        ["sh", "-c", f"echo $$ > {pidfile}; sleep 60"], until=re.compile(b"never"), timeout=0.5
    )
    assert not out.matched and out.exit_code is None
    pid = int(pidfile.read_text())
    with pytest.raises(ProcessLookupError):
        import os

        os.kill(pid, 0)


# ------------------------------------------------------------------ the policy


def _hav(usable: bool, proof: str = "") -> HAVReport:
    checks = [Check(CPU_FLAG, False, "no 'vmx' or 'svm' flag")]
    if proof:
        checks.append(Check(BOOT_PROOF, False, proof))
    return HAVReport(usable, "none", "kvm" if usable else "tcg", tuple(checks), "Linux")


def test_named_tcg_is_honoured_even_with_hardware() -> None:
    plan = choose("qemu", _hav(True), None, "tcg")
    assert plan.accel == "tcg" and "as asked" in plan.reason


def test_named_kvm_that_cannot_boot_says_what_the_proof_saw() -> None:
    detail = accel.silent_detail("kvm", 10)
    with pytest.raises(AcceleratorFailed) as e:
        choose("qemu", _hav(False, detail), None, "kvm")
    assert detail in str(e.value) and "leave out --accel" in str(e.value)


def test_auto_falls_back_to_tcg() -> None:
    assert choose("qemu", _hav(False, accel.silent_detail("kvm", 10)), None).accel == "tcg"
    assert choose("qemu", _hav(True), None).accel == "kvm"


# ------------------------------------------------------------------ the console diagnosis

BOOTED = """[    0.000000] Linux version 6.1.0-57-amd64 (debian-kernel@lists.debian.org)
[    2.100000] Run /init as init process
[    9.000000] systemd[1]: Reached target basic.target
[   12.000000] Initializing XFRM netlink socket
"""


@pytest.mark.parametrize(
    ("log", "waiting_for", "words"),
    [
        ("", console.WAITING_FOR_SSH, "never printed a line"),
        (
            "Probing EDD (edd=off to disable)... ok\n",
            console.WAITING_FOR_SSH,
            "never got past its start",
        ),
        (
            "[ 0.0] Linux version 6.1\n[ 3.2] VFS: Unable to mount root fs on unknown-block(0,0)\n"
            "[ 3.3] Kernel panic - not syncing: VFS: Unable to mount root fs\n",
            console.WAITING_FOR_SSH,
            "stopped after 30 s: 'VFS: Unable to mount root fs on unknown-block(0,0)'",
        ),
        (
            "[ 0.0] Linux version 6.1\n[ 1.0] pci 0000:00:01.0: x\n",
            console.WAITING_FOR_SSH,
            "never ran init",
        ),
        (BOOTED, console.WAITING_FOR_SSH, "reached userspace but its sshd did not answer"),
        (BOOTED, console.WAITING_FOR_LOGIN, "refused vmkit's key"),
        (BOOTED, console.WAITING_FOR_DOCKER, "dockerd did not answer"),
    ],
)
def test_diagnosis_follows_the_console(
    tmp_path: Path, log: str, waiting_for: str, words: str
) -> None:
    path = tmp_path / "serial.log"
    path.write_text(log)
    assert words in console.diagnose(path, waiting_for, 30)


def test_a_missing_console_log_reads_as_empty(tmp_path: Path) -> None:
    assert "never printed" in console.diagnose(tmp_path / "none.log", console.WAITING_FOR_SSH, 5)
    assert not console.kernel_started(tmp_path / "none.log")


def test_qemu_version_is_read_once_per_binary_file(tmp_path: Path) -> None:
    # An `up` wants it twice (the proof cache's key, the kernel command line): one run of QEMU.
    log = tmp_path / "runs"
    exe = Path(_fake_qemu(tmp_path, ""))
    exe.write_text(f'#!/bin/sh\necho run >> {log}\necho "QEMU emulator version 7.2.0"\n')
    assert arch.qemu_version_text(str(exe)) == "QEMU emulator version 7.2.0"
    assert arch.qemu_version_text(str(exe)) == "QEMU emulator version 7.2.0"
    assert log.read_text().count("run") == 1
    # A new QEMU in its place is asked again.
    exe.write_text(f'#!/bin/sh\necho run >> {log}\necho "QEMU emulator version 8.2.2"\n')
    os.utime(exe, ns=(exe.stat().st_atime_ns, exe.stat().st_mtime_ns + 10**9))
    assert arch.qemu_version_text(str(exe)) == "QEMU emulator version 8.2.2"
    assert log.read_text().count("run") == 2
