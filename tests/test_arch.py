"""Box architectures: the host CPU's is the default, QEMU per arch, and what a missing one says."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vmkit.errors import InvalidInput, ToolMissing
from vmkit.host import arch


@pytest.mark.parametrize(
    ("machine", "expected"),
    [
        ("x86_64", "amd64"),  # Linux, macOS (Intel)
        ("AMD64", "amd64"),  # Windows
        ("i686", "i386"),
        ("aarch64", "arm64"),  # Linux on Arm
        ("arm64", "arm64"),  # macOS (Apple silicon)
        ("ARM64", "arm64"),  # Windows on Arm
        ("riscv64", "riscv64"),  # no box: the name itself
    ],
)
def test_host_arch(machine: str, expected: str) -> None:
    assert arch.host_arch(machine) == expected


def test_native_guests() -> None:
    assert arch.native("amd64", "amd64") and arch.native("i386", "amd64")
    assert arch.native("arm64", "arm64")
    assert not arch.native("arm64", "amd64") and not arch.native("amd64", "arm64")
    assert not arch.native("amd64", "riscv64")


def test_qemu_per_arch() -> None:
    assert arch.qemu_binary("amd64") == arch.qemu_binary("i386") == "qemu-system-x86_64"
    assert arch.qemu_binary("arm64") == "qemu-system-aarch64"
    with pytest.raises(InvalidInput, match="s390x"):
        arch.qemu_binary("s390x")


def test_a_missing_qemu_names_the_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ToolMissing, match="qemu-system-aarch64") as info:
        arch.find_qemu("arm64")
    assert "apt-get install qemu-system-arm" in (info.value.hint or "")


@pytest.mark.parametrize(
    ("platform", "words"),
    [
        ("darwin", "brew install qemu"),
        ("win32", "choco install qemu"),
        ("linux", "qemu-system-arm"),
    ],
)
def test_install_hint_per_os(monkeypatch: pytest.MonkeyPatch, platform: str, words: str) -> None:
    monkeypatch.setattr(sys, "platform", platform)
    assert words in arch.install_hint("qemu-system-aarch64")


def test_up_arch_arm64_without_its_qemu_says_what_to_install(tmp_path: Path) -> None:
    """Said before anything is made: no VM folder, no box build."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # The tools `up` may look for before the check, but not qemu-system-aarch64.
    env = dict(
        os.environ,
        PATH=str(bin_dir),
        VMKIT_HOME=str(tmp_path / "home"),
        VMKIT_CACHE=str(tmp_path / "cache"),
    )
    r = subprocess.run(
        [sys.executable, "-m", "vmkit", "up", "a1", "--arch", "arm64"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert r.returncode == 1, r.stderr
    assert "qemu-system-aarch64 is not installed" in r.stderr
    assert "apt-get install qemu-system-arm" in r.stderr
    assert "Traceback" not in r.stderr
    assert "foreign to this amd64 host" in r.stdout  # the one line on emulation, said first
    assert not (tmp_path / "home" / "vms" / "a1").exists()
    assert not (tmp_path / "cache" / "boxes").exists()
