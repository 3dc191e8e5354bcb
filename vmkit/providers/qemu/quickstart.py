"""Quick start: a new QEMU VM resumes a boot saved once per box, instead of booting.

Under software emulation (TCG) a vmkit-mini boot takes ~30 s until dockerd answers, nearly all
of it the guest's own work (docs/boxes.md, "Boot time"). So the first VM of a box and machine
shape pays once for a *saved boot*: a throwaway VM booted with a throwaway identity until
dockerd answers, then paused and written to a file by QEMU's migration (``migrate`` to
``exec:cat``), beside its disk. Every new VM of that shape then starts QEMU with ``-incoming``,
loads the saved state (~1.5 s), and gets its own identity before anything talks to it:

1. its disk is an overlay on the saved boot's disk (the guest's memory expects those blocks);
2. QEMU's ``vmgenid`` device gets a new id, so the guest kernel reseeds its random generator;
3. vmkit hot-plugs the VM's seed, with a new machine id, the host's clock and a nonce, as a
   disk with the serial ``vmkit-reseed``; the guest (``/usr/lib/vmkit/reseed``, box recipe 6)
   installs the identity as the initrd would, sets its clock, makes sshd load the new host key
   and says ``vmkit-reseed: done NONCE`` on the console, which vmkit waits for.

SSH to the VM is pinned to the VM's own host key throughout: nothing vmkit sends reaches a guest
that still holds the saved identity, whose client key was never written to disk.

A saved boot is used only when everything the guest's memory depends on matches; that is its
key: the box's disk, QEMU's binary and version, the architecture, CPUs, memory, disk size,
kernel command line and accelerator. Only a VM's first start can resume (later its disk is its
own), only under TCG (a hardware-accelerated boot is quick anyway, and a CPU model of ``host``
would tie the state to one processor), only for amd64 guests (``vmgenid`` is x86's; the 32-bit
kernel finds no room for a hot-plugged device) and not on Windows hosts.
A saved boot lives in the box's folder, so rebuilding the box removes it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import shlex
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import attrs
from filelock import FileLock

from vmkit.errors import QuickStartFailed, SSHError, VmkitError
from vmkit.guest import console, keys
from vmkit.guest.seed import make_seed
from vmkit.guest.ssh import SSHSession
from vmkit.host import procs
from vmkit.host.netutil import free_port, read_banner
from vmkit.progress import Progress
from vmkit.providers.qemu import disks
from vmkit.providers.qemu.argv import QemuConfig, build_argv
from vmkit.providers.qemu.qmp import QMP
from vmkit.state import SSHEndpoint

log = logging.getLogger("vmkit")

#: The first vmkit-mini recipe whose guest can take a new identity while running.
RESEED_RECIPE = 6
#: Bump when what a saved boot holds or how it is made changes.
FORMAT = 1
#: The serial (and QEMU id) of the hot-plugged seed disk, which the guest's udev rule matches.
RESEED_SERIAL = "vmkit-reseed"
#: How long the throwaway VM may take to boot until dockerd answers.
MAKE_TIMEOUT = 600.0
#: How long the guest may take to install its new identity.
RESEED_TIMEOUT = 60.0

Launch = Callable[[list[str]], None]


@attrs.frozen
class SavedBoot:
    """A saved boot: QEMU's migration stream and the disk it was taken with."""

    dir: Path

    @property
    def state(self) -> Path:
        return self.dir / "state"

    @property
    def disk(self) -> Path:
        return self.dir / "disk.qcow2"

    @property
    def key(self) -> str:
        return self.dir.name


def why_not(
    *,
    box_name: str,
    recipe: int,
    accel: str,
    arch: str,
    host_os: str,
    first_start: bool,
    wanted: bool,
) -> str | None:
    """Why a VM's start cannot resume a saved boot, or None if it can."""
    if not wanted:
        return "the VM was made with quick start off"
    if not first_start:
        return "the VM has booted before: its disk is its own"
    if accel != "tcg":
        return f"the VM runs under {accel}, which boots quickly"
    if arch == "i386":
        # Measured: the 686 kernel finds no room for a hot-plugged device's BARs ("can't
        # assign; no space"), so the reseed disk never appears.
        return "a 32-bit guest cannot take the hot-plugged disk its identity comes on"
    if arch != "amd64":
        return f"quick start needs QEMU's vmgenid device, which {arch} guests lack here"
    if host_os == "win32":
        return "QEMU on Windows cannot load a saved boot through a pipe"
    if not box_name.startswith("vmkit-mini") or recipe < RESEED_RECIPE:
        return (
            f"the box cannot take a new identity while running (vmkit-mini recipe {RESEED_RECIPE}+)"
        )
    return None


def shape(
    config: QemuConfig, *, binary: str, qemu_version: str, box_disk_sha256: str, disk_gib: int
) -> dict[str, object]:
    """Everything a saved guest's memory depends on (what ``key`` hashes)."""
    return {
        "format": FORMAT,
        "binary": str(Path(binary).resolve()),
        "qemu": qemu_version.strip(),
        "box": box_disk_sha256,
        "kernel": str(config.kernel),
        "initrd": str(config.initrd),
        "arch": config.arch,
        "cpus": config.cpus,
        "memory": config.memory,
        "disk": disk_gib,
        "accel": config.accel,
        "aslr": config.aslr,
        "cmdline": config.cmdline,
        "host_os": config.host_os,
    }


def key(of: dict[str, object]) -> str:
    """The saved boot's key (its folder's name): a digest of its ``shape``."""
    return hashlib.sha256(json.dumps(of, sort_keys=True).encode()).hexdigest()[:16]


def saved_boots_dir(box_dir: Path) -> Path:
    """Where a box's saved boots live: in its folder, so that rebuilding the box removes them."""
    return box_dir / "saved-boots"


def find_or_make(
    box_dir: Path,
    box_disk: Path,
    config: QemuConfig,
    *,
    of: dict[str, object],
    disk_gib: int,
    binary: str,
    launch: Launch,
    progress: Progress,
) -> SavedBoot | None:
    """The saved boot of shape ``of``, made now if there is none; None if one could not be
    made or resumed before (the reason is in ``KEY.failed``, until the box is rebuilt)."""
    name = key(of)
    root = saved_boots_dir(box_dir)
    # A saved boot holds a guest's memory, with the throwaway host key it had.
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    saved = SavedBoot(root / name)
    failed = root / f"{name}.failed"
    with FileLock(str(root / f"{name}.lock")):
        if failed.exists():
            return None
        if saved.state.is_file() and saved.disk.is_file():
            return saved
        progress("saving a booted VM of this box for quick starts (once per box and VM size)")
        try:
            _make(saved, box_disk, config, of, disk_gib=disk_gib, binary=binary, launch=launch)
        except VmkitError as e:
            failed.write_text(f"{e.message}\n", encoding="utf-8")
            log.warning(f"could not save a boot for quick starts: {e.message}; booting instead")
            return None
    return saved


def forget(saved: SavedBoot, reason: str) -> None:
    """Never use ``saved`` again: a VM could not be resumed from it."""
    failed = saved.dir.with_name(f"{saved.key}.failed")
    failed.write_text(f"{reason}\n", encoding="utf-8")


def _make(
    saved: SavedBoot,
    box_disk: Path,
    config: QemuConfig,
    of: dict[str, object],
    *,
    disk_gib: int,
    binary: str,
    launch: Launch,
) -> None:
    """Boot a throwaway VM of ``config``'s shape until dockerd answers and save it as ``saved``."""
    # One maker at a time (the caller's lock); a maker killed before its clean-up left its QEMU.
    work = saved.dir.with_name(f"{saved.key}.making")
    pidfile = work / "qemu.pid"
    stale = procs.read_pid(pidfile)
    if stale is not None:
        procs.terminate(stale, str(pidfile))
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(mode=0o700)
    # The monitor's unix socket path must stay short (108 bytes), unlike the box cache's.
    run_dir = Path(tempfile.mkdtemp(prefix="vmkit-saving-"))
    try:
        client_key = run_dir / "client"
        keys.generate(client_key, "vmkit@saved-boot")
        host_pub = keys.generate(run_dir / "host", "root@saved-boot")
        seed = make_seed(
            run_dir / "seed.img",
            authorized_key=keys.public_line(client_key),
            host_key=run_dir / "host",
            hostname="vmkit",
        )
        disks.overlay(work / "disk.qcow2", box_disk, disk_gib)
        port = free_port()
        throwaway = attrs.evolve(
            config,
            name="saved-boot",
            disk=work / "disk.qcow2",
            seed=seed,
            ssh_port=port,
            qmp=run_dir / "qmp.sock",
            pidfile=pidfile,
            serial_log=run_dir / "serial.log",
        )
        launch(build_argv(binary, throwaway))
        endpoint = SSHEndpoint(
            host="127.0.0.1",
            port=port,
            user="vmkit",
            key_file=str(client_key),
            host_key=keys.key_type_and_blob(host_pub),
        )
        _wait_docker(endpoint, pidfile, throwaway.serial_log)
        with QMP(throwaway.qmp, lock=run_dir / "qmp.lock", timeout=30) as q:
            q.execute("stop")
            target = work / "state"
            target.touch(mode=0o600)
            q.execute("migrate", {"uri": f"exec:cat > {shlex.quote(str(target))}"})
            _wait_migration(q)
            q.execute("quit")
        pid = procs.read_pid(pidfile)
        if pid is not None:
            procs.wait_gone(pid, 10)
        pidfile.unlink(missing_ok=True)
        meta = {"made": time.time(), "shape": of}
        (work / "meta.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
        os.replace(work, saved.dir)
    finally:
        pid = procs.read_pid(pidfile)
        if pid is not None:
            procs.terminate(pid, str(pidfile))
        shutil.rmtree(run_dir, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


def _wait_docker(endpoint: SSHEndpoint, pidfile: Path, serial_log: Path) -> None:
    """Wait until the throwaway VM's dockerd answers over SSH, then drop the connection."""
    deadline = time.monotonic() + MAKE_TIMEOUT
    session = SSHSession(endpoint, connect_timeout=20)
    try:
        while time.monotonic() < deadline:
            if not procs.alive(procs.read_pid(pidfile), str(pidfile)):
                raise QuickStartFailed(
                    "the VM booted to be saved stopped",
                    hint=f"its console said: {console.read(serial_log).last or 'nothing'}",
                )
            if read_banner(endpoint.host, endpoint.port, timeout=3) is None:
                time.sleep(0.25)
                continue
            try:
                if session.run(
                    ["docker", "info", "--format", "{{.ServerVersion}}"], check=False, timeout=60
                ).ok:
                    return
            except SSHError:
                session.close()
            time.sleep(0.5)
    finally:
        session.close()
    raise QuickStartFailed(f"the VM booted to be saved had no dockerd after {MAKE_TIMEOUT:.0f} s")


def _wait_migration(q: QMP) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        status = q.execute("query-migrate")
        if status.get("status") == "completed":
            return
        if status.get("status") in ("failed", "cancelled"):
            raise QuickStartFailed(
                f"QEMU could not save the VM: {status.get('error-desc', status)}"
            )
        time.sleep(0.1)
    raise QuickStartFailed("QEMU did not finish saving the VM in 300 s")


def load(
    q: QMP, saved: SavedBoot, serial_log: Path, reseed: Callable[[dict[str, str]], Path]
) -> None:
    """Load ``saved`` into the QEMU behind ``q`` (started with ``-incoming defer``), run it, and
    give the guest its own identity.

    ``reseed(extra)`` writes the VM's seed with ``extra``'s reseed files and returns its path.
    Raises ``QuickStartFailed`` if the state does not load or the guest does not take the
    identity; the caller then stops QEMU and boots instead.
    """
    q.execute("migrate-incoming", {"uri": f"exec:cat {shlex.quote(str(saved.state))}"})
    deadline = time.monotonic() + 120
    while (status := str(q.execute("query-status").get("status"))) == "inmigrate":
        if time.monotonic() > deadline:
            raise QuickStartFailed("QEMU did not load the saved boot in 120 s")
        time.sleep(0.05)
    loaded = q.execute("query-migrate").get("status")
    if status != "paused" or loaded != "completed":
        raise QuickStartFailed(
            f"QEMU could not load the saved boot (migration {loaded}, VM {status})"
        )
    q.execute("cont")
    nonce = secrets.token_hex(8)
    # Made once the guest runs again, so that the clock it is given is as late as can be.
    path = reseed({"machine-id": uuid.uuid4().hex, "clock": f"{time.time():.6f}", "nonce": nonce})
    q.execute(
        "blockdev-add",
        {
            "driver": "raw",
            "node-name": RESEED_SERIAL,
            "read-only": True,
            "file": {"driver": "file", "filename": str(path)},
        },
    )
    q.execute(
        "device_add",
        {
            "driver": "virtio-blk-pci",
            "drive": RESEED_SERIAL,
            "id": RESEED_SERIAL,
            "serial": RESEED_SERIAL,
        },
    )
    _wait_reseeded(serial_log, nonce)


def _wait_reseeded(serial_log: Path, nonce: str) -> None:
    done, failed = f"vmkit-reseed: done {nonce}", f"vmkit-reseed: failed {nonce}"
    deadline = time.monotonic() + RESEED_TIMEOUT
    while time.monotonic() < deadline:
        text = serial_log.read_text(errors="replace") if serial_log.exists() else ""
        if done in text:
            return
        if failed in text:
            raise QuickStartFailed("the resumed guest could not install its identity")
        time.sleep(0.05)
    raise QuickStartFailed(
        f"the resumed guest did not install its identity in {RESEED_TIMEOUT:.0f} s"
    )
