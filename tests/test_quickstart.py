"""Quick start's pieces without a VM: when it applies, what its key depends on, the order of
the monitor commands that load a saved boot and give the guest its identity, the reseed's
seed files, and the clock protocol."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import attrs
import pytest

from tests.test_qemu_unit import config
from tests.test_seed import debugfs
from vmkit.errors import InvalidInput, QuickStartFailed, SSHError
from vmkit.guest import clock, keys
from vmkit.guest.seed import make_seed
from vmkit.host.runner import run, which
from vmkit.providers.qemu import quickstart
from vmkit.providers.qemu.argv import build_argv

ELIGIBLE = dict(
    box_name="vmkit-mini",
    recipe=quickstart.RESEED_RECIPE,
    accel="tcg",
    arch="amd64",
    host_os="linux",
    first_start=True,
    wanted=True,
)


def test_a_first_tcg_start_of_a_recipe_6_amd64_box_can_resume() -> None:
    assert quickstart.why_not(**ELIGIBLE) is None  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"wanted": False}, "quick start off"),
        ({"first_start": False}, "booted before"),
        ({"accel": "kvm"}, "kvm"),
        ({"arch": "arm64"}, "vmgenid"),
        ({"arch": "i386"}, "32-bit"),
        ({"host_os": "win32"}, "Windows"),
        ({"recipe": quickstart.RESEED_RECIPE - 1}, "recipe"),
        ({"box_name": "other"}, "recipe"),
    ],
)
def test_why_not_names_the_reason(change: dict[str, Any], words: str) -> None:
    reason = quickstart.why_not(**{**ELIGIBLE, **change})
    assert reason is not None and words in reason


def _key(tmp_path: Path, **change: Any) -> str:
    args: dict[str, Any] = dict(
        binary="/usr/bin/qemu-system-x86_64",
        qemu_version="QEMU emulator version 7.2.0",
        box_disk_sha256="ab" * 32,
        disk_gib=8,
    )
    fields = {k: v for k, v in change.items() if k not in args}
    args.update({k: v for k, v in change.items() if k in args})
    return quickstart.key(quickstart.shape(attrs.evolve(config(tmp_path), **fields), **args))


def test_the_key_holds_what_the_guest_memory_depends_on(tmp_path: Path) -> None:
    base = _key(tmp_path)
    for change in (
        {"memory": 2048},
        {"cpus": 1},
        {"aslr": False},
        {"cmdline": "root=LABEL=vmkit-root rw quiet"},
        {"arch": "i386"},
        {"qemu_version": "QEMU emulator version 8.0.0"},
        {"box_disk_sha256": "cd" * 32},
        {"disk_gib": 10},
    ):
        assert _key(tmp_path, **change) != base, change


def test_the_key_ignores_what_differs_per_vm(tmp_path: Path) -> None:
    other = tmp_path / "elsewhere"
    assert _key(tmp_path) == _key(
        tmp_path,
        name="another",
        disk=other / "disk.qcow2",
        seed=other / "seed.img",
        ssh_port=4444,
        qmp=other / "qmp.sock",
        pidfile=other / "qemu.pid",
        serial_log=other / "serial.log",
    )


def test_x86_vms_get_a_generation_id_and_arm_ones_do_not(tmp_path: Path) -> None:
    x86 = build_argv("qemu-system-x86_64", config(tmp_path))
    assert "vmgenid,guid=auto" in x86
    arm = build_argv("qemu-system-aarch64", attrs.evolve(config(tmp_path), arch="arm64"))
    assert not any("vmgenid" in a for a in arm)


class FakeMonitor:
    """A monitor whose incoming migration finishes after a few polls."""

    def __init__(self, serial: Path, *, loaded: str = "completed", answer: str = "done") -> None:
        self.calls: list[tuple[str, dict[str, Any] | None]] = []
        self.serial = serial
        self.loaded = loaded
        self.answer = answer
        self.polls = 0

    def execute(self, cmd: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
        self.calls.append((cmd, args))
        if cmd == "query-status":
            self.polls += 1
            return {"status": "inmigrate" if self.polls < 3 else "paused"}
        if cmd == "query-migrate":
            return {"status": self.loaded}
        if cmd == "device_add":
            nonce = self.nonce
            # The guest answers on its console a moment later.
            threading.Timer(
                0.2,
                lambda: self.serial.write_text(f"[ 1.0] x\nvmkit-reseed: {self.answer} {nonce}\n"),
            ).start()
        return {}


def _identity(tmp_path: Path) -> tuple[str, Path]:
    keys.generate(tmp_path / "client", "c")
    keys.generate(tmp_path / "host", "h")
    return keys.public_line(tmp_path / "client"), tmp_path / "host"


def _load(tmp_path: Path, mon: FakeMonitor) -> dict[str, str]:
    client, host = _identity(tmp_path)
    saved = quickstart.SavedBoot(tmp_path / "saved dir")
    made: dict[str, str] = {}

    def reseed(extra: dict[str, str]) -> Path:
        made.update(extra)
        mon.nonce = extra["nonce"]  # type: ignore[attr-defined]
        # The guest runs again before the seed (and its clock) is made.
        assert ("cont", None) in mon.calls
        return make_seed(
            tmp_path / "reseed.img",
            authorized_key=client,
            host_key=host,
            hostname="vm",
            extra=extra,
        )

    quickstart.load(mon, saved, mon.serial, reseed)  # type: ignore[arg-type]
    return made


def test_load_resumes_then_hot_plugs_the_reseed_and_waits_for_its_nonce(tmp_path: Path) -> None:
    mon = FakeMonitor(tmp_path / "serial.log")
    before = time.time()
    made = _load(tmp_path, mon)
    names = [c for c, _ in mon.calls]
    assert names[0] == "migrate-incoming"
    # The state's path reaches QEMU's shell quoted.
    assert mon.calls[0][1] == {"uri": f"exec:cat '{tmp_path / 'saved dir' / 'state'}'"}
    assert names.index("cont") < names.index("blockdev-add") < names.index("device_add")
    device = dict(mon.calls[names.index("device_add")][1] or {})
    assert device["serial"] == quickstart.RESEED_SERIAL and device["driver"] == "virtio-blk-pci"
    assert before <= float(made["clock"]) <= time.time()
    assert len(made["machine-id"]) == 32 and len(made["nonce"]) == 16
    image = tmp_path / "reseed.img"
    assert debugfs(image, "cat /nonce").strip() == made["nonce"]
    assert debugfs(image, "cat /machine-id").strip() == made["machine-id"]


def test_a_state_that_does_not_load_is_a_quick_start_failure(tmp_path: Path) -> None:
    mon = FakeMonitor(tmp_path / "serial.log", loaded="failed")
    with pytest.raises(QuickStartFailed, match="could not load"):
        _load(tmp_path, mon)
    assert "cont" not in [c for c, _ in mon.calls]


def test_a_guest_that_fails_its_reseed_is_a_quick_start_failure(tmp_path: Path) -> None:
    mon = FakeMonitor(tmp_path / "serial.log", answer="failed")
    with pytest.raises(QuickStartFailed, match="identity"):
        _load(tmp_path, mon)


def test_a_seed_refuses_files_it_does_not_know(tmp_path: Path) -> None:
    client, host = _identity(tmp_path)
    with pytest.raises(InvalidInput, match="no file"):
        make_seed(
            tmp_path / "s.img", authorized_key=client, host_key=host, hostname="vm",
            extra={"../etc/passwd": "x"},
        )  # fmt: skip


class FakeChannel:
    """The guest side of the clock protocol: says ready, then reads the time."""

    def __init__(self, ready: bool = True, code: int = 0) -> None:
        self.out = b"ready\n" if ready else b""
        self.sent = b""
        self.code = code

    def settimeout(self, t: float) -> None:
        pass

    def recv(self, n: int) -> bytes:
        data, self.out = self.out[:n], self.out[n:]
        return data

    def sendall(self, data: bytes) -> None:
        self.sent += data

    def shutdown_write(self) -> None:
        pass

    def recv_exit_status(self) -> int:
        return self.code

    def close(self) -> None:
        pass


class FakeSession:
    def __init__(self, chan: FakeChannel) -> None:
        self.chan = chan
        self.argv: list[str] = []

    def open_channel(self, argv: list[str]) -> FakeChannel:
        self.argv = argv
        return self.chan


def test_the_clock_is_read_only_once_the_guest_is_ready() -> None:
    session = FakeSession(FakeChannel())
    before = time.time()
    clock.set_from_host(session)  # type: ignore[arg-type]
    assert session.argv[:3] == ["sudo", "-n", "sh"]
    sent = float(session.chan.sent.decode())
    assert before <= sent <= time.time()


@pytest.mark.parametrize("chan", [FakeChannel(ready=False), FakeChannel(code=1)])
def test_a_clock_that_cannot_be_set_is_an_ssh_error(chan: FakeChannel) -> None:
    with pytest.raises(SSHError, match="clock"):
        clock.set_from_host(FakeSession(chan))  # type: ignore[arg-type]


def _find_or_make(tmp_path: Path, launch: Any) -> quickstart.SavedBoot | None:
    box_dir = tmp_path / "box"
    box_dir.mkdir(exist_ok=True)
    backing = box_dir / "disk.qcow2"
    if not backing.exists():
        run([which("qemu-img"), "create", "-q", "-f", "qcow2", str(backing), "1G"], timeout=30)
    of: dict[str, object] = {"test": str(tmp_path)}
    return quickstart.find_or_make(
        box_dir, backing, config(tmp_path), of=of, disk_gib=1, binary="qemu-system-x86_64",
        launch=launch, progress=lambda _m: None,
    )  # fmt: skip


def test_a_saved_boot_that_cannot_be_made_is_recorded_and_not_tried_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    launched: list[list[str]] = []

    def qemu_refuses(argv: list[str]) -> None:
        launched.append(argv)
        raise QuickStartFailed("QEMU said no")

    assert _find_or_make(tmp_path, qemu_refuses) is None
    assert "could not save a boot for quick starts: QEMU said no" in caplog.text
    root = quickstart.saved_boots_dir(tmp_path / "box")
    assert oct(root.stat().st_mode & 0o777) == "0o700"
    (failed,) = root.glob("*.failed")
    assert failed.read_text() == "QEMU said no\n"
    assert not list(root.glob("*.making")) and not list(root.glob("*/"))
    # The throwaway VM's command line: its own disk on the box, its own seed.
    argv = " ".join(launched[0])
    assert "saved-boot" in argv and ".making/disk.qcow2" in argv
    assert _find_or_make(tmp_path, qemu_refuses) is None
    assert len(launched) == 1  # not tried again


def test_a_saved_boot_that_exists_is_used_as_it_is(tmp_path: Path) -> None:
    of: dict[str, object] = {"test": str(tmp_path)}
    saved = quickstart.SavedBoot(quickstart.saved_boots_dir(tmp_path / "box") / quickstart.key(of))
    saved.dir.mkdir(parents=True)
    saved.state.write_bytes(b"QEVM")
    saved.disk.write_bytes(b"QFI")

    def never(argv: list[str]) -> None:
        raise AssertionError("nothing is booted for a saved boot that exists")

    assert _find_or_make(tmp_path, never) == saved
    quickstart.forget(saved, "it did not load")
    assert _find_or_make(tmp_path, never) is None
