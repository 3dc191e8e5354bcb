"""Bad input gets one line, exit 1 (2 for usage), no traceback, and changes nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vmkit import state
from vmkit.state import VMRecord


def cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, VMKIT_HOME=str(home))
    return subprocess.run(
        [sys.executable, "-m", "vmkit", *args], capture_output=True, text=True, env=env, timeout=60
    )


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["status", "nope"], "no VM named 'nope'"),
        (["start", "nope"], "no VM named 'nope'"),
        (["destroy", "nope", "-f"], "no VM named 'nope'"),
        (["ssh", "nope", "--", "true"], "no VM named 'nope'"),
        (["create", "Bad Name"], "is not valid"),
        (["create", "ok1", "--memory", "12"], "--memory 12 MiB is out of range"),
        (["create", "ok1", "--cpus", "0"], "--cpus 0 is out of range"),
        (["create", "ok1", "--disk", "1"], "--disk 1 GiB is out of range"),
        (["create", "ok1", "--provider", "hyperv"], "provider 'hyperv'"),
        (["share", "/tmp"], "there is no VM yet"),
        (["attach", "ftp://x", "--name", "a"], "cannot attach"),
        (["attach", "ssh://host", "--name", "a", "--key", "/nonexistent"], "names no user"),
    ],
)
def test_user_mistakes(vmkit_home: Path, args: list[str], needle: str) -> None:
    r = cli(vmkit_home, *args)
    assert r.returncode == 1, r.stderr
    assert needle in r.stderr
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (vmkit_home / "vms" / "ok1").exists()


def test_usage_error_exits_2(vmkit_home: Path) -> None:
    r = cli(vmkit_home, "create")
    assert r.returncode == 2


def test_debug_shows_the_traceback(vmkit_home: Path) -> None:
    r = cli(vmkit_home, "--debug", "status", "nope")
    assert r.returncode == 1 and "Traceback" in r.stderr


def test_existing_name_on_create_changes_nothing(vmkit_home: Path) -> None:
    state.new_folder("dup")
    rec = VMRecord(name="dup", provider="qemu", cpus=3)
    state.save(rec)
    before = rec.files.state.read_bytes()
    r = cli(vmkit_home, "create", "dup")
    assert r.returncode == 1 and "exists already" in r.stderr
    assert rec.files.state.read_bytes() == before


def test_share_and_forward_input_checks_before_touching_the_vm(
    vmkit_home: Path, tmp_path: Path
) -> None:
    state.new_folder("one")
    state.save(VMRecord(name="one", provider="qemu"))
    f = tmp_path / "file.txt"
    f.write_text("x")
    cases = [
        (["share", str(tmp_path / "missing"), "--vm", "one"], "does not exist"),
        (["share", str(f), "--vm", "one"], "is not a folder"),
        (["share", "/", "--vm", "one"], "would expose everything"),
        (["forward", "0", "--vm", "one"], "not a valid port"),
        (["forward", "70000", "--vm", "one"], "not a valid port"),
        (["forward", "abc", "--vm", "one"], "is not PORT"),
        (["forward", "8888:99999", "--vm", "one"], "guest port 99999"),
        (["unforward", "8888", "--vm", "one"], "is not forwarded"),
        (["unshare", str(tmp_path), "--vm", "one"], "is not shared"),
        (["share", str(tmp_path), "--vm", "one"], "is not running"),
        (["forward", "18888", "--vm", "one"], "is not running"),
    ]
    for args, needle in cases:
        r = cli(vmkit_home, *args)
        assert r.returncode == 1, (args, r.stderr)
        assert needle in r.stderr, (args, r.stderr)
        assert "Traceback" not in r.stderr
    assert state.load("one").shares == [] and state.load("one").forwards == []


def test_a_box_in_use_is_not_removed_or_rebuilt(
    vmkit_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VMKIT_CACHE", str(tmp_path / "cache"))  # never the real box cache
    state.new_folder("user1")
    state.save(VMRecord(name="user1", provider="qemu", box="vmkit-mini", arch="amd64"))
    for args in (["box", "remove", "vmkit-mini"], ["box", "build", "vmkit-mini", "--force"]):
        r = cli(vmkit_home, *args)
        assert r.returncode == 1 and "VM user1 use it" in r.stderr, r.stderr
