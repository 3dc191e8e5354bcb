"""The QEMU provider: qemu-system with QMP, user-mode networking and a shared-memory backend."""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import attrs

from vmkit import state
from vmkit.errors import (
    CommandFailed,
    CommandTimeout,
    HardwareVirtualizationUnavailable,
    PortInUse,
    ProviderError,
    QMPError,
    QuickStartFailed,
    VmkitError,
)
from vmkit.host import procs, signals
from vmkit.host.arch import find_qemu, qemu_version_text
from vmkit.host.netutil import free_port, read_banner
from vmkit.host.runner import ErrorRule, Result, classify, run, spawn
from vmkit.progress import Progress
from vmkit.providers.base import RESUMED_KEY, Capabilities, Status, VMState
from vmkit.providers.qemu import disks, quickstart
from vmkit.providers.qemu.argv import QemuConfig, build_argv, parse_qemu_version, tcg_keeps_aslr
from vmkit.providers.qemu.qmp import QMP, TCP_PORT_KEY, monitor_address

if TYPE_CHECKING:
    from vmkit.guest.ssh import SSHSession
    from vmkit.mechanisms.base import ForwardMechanism, ShareMechanism
    from vmkit.state import VMRecord


def _hav(result: Result, m: object) -> VmkitError:
    return HardwareVirtualizationUnavailable(
        "QEMU could not use hardware virtualization (KVM): " + _last_line(result),
        hint="run `vmkit doctor`; recreate the VM without --accel to use software emulation",
    )


def _port(result: Result, m: object) -> VmkitError:
    return PortInUse("QEMU could not bind its SSH port on 127.0.0.1: " + _last_line(result))


def _last_line(result: Result) -> str:
    lines = (result.stderr.strip() or result.stdout.strip()).splitlines()
    return lines[-1] if lines else f"exit {result.exit_code}"


#: Known qemu-system startup failures.
QEMU_RULES = [
    ErrorRule.of(
        r"failed to set MSR|Could not access KVM kernel module|failed to initialize kvm|"
        r"does not provide required features: (svm|vmx)|KVM is not supported",
        _hav,
    ),
    ErrorRule.of(r"Could not set up host forwarding rule", _port),
]


#: How long QEMU may take from its start to a monitor that answers.
START_TIMEOUT = 60.0
#: The ``extra`` key of a VM record whose disk is an overlay on a saved boot's disk.
SAVED_BOOT_KEY = "saved_boot"
#: The ``extra`` key of a VM record while a quick start runs: [pid, start time] of the vmkit
#: process doing it. If that process is gone and QEMU is not, the quick start was interrupted:
#: the guest is paused, or runs with the saved boot's identity.
RESUMING_KEY = "quick_start_by"

log = logging.getLogger("vmkit")


def _run_qemu(argv: list[str]) -> None:
    """Run a daemonizing QEMU; its known startup failures raised as vmkit errors."""
    run(argv, timeout=START_TIMEOUT, rules=QEMU_RULES)


class QemuProvider:
    """Runs VMs as qemu-system processes in the background, one folder each.

    On Linux and macOS QEMU daemonizes itself and its monitor is a unix socket in the VM's
    folder. QEMU for Windows can do neither: vmkit starts it detached, its output in
    ``qemu.log``, with the monitor on a TCP port of 127.0.0.1 (``host_os`` picks the way; the
    tests run the Windows way on Linux too).
    """

    name: ClassVar[str] = "qemu"
    host_os: ClassVar[str] = sys.platform
    capabilities: ClassVar[Capabilities] = Capabilities(
        share_mechanisms=("virtiofs", "sshfs"),
        forward_mechanisms=("hostfwd", "ssh-tunnel"),
        accelerators=True,
        console_log=True,
    )

    # -- lifecycle ------------------------------------------------------------------------

    def create(self, record: VMRecord, progress: Progress) -> None:
        from vmkit import boxes

        box = boxes.ensure(record.box, record.arch, progress=progress)
        progress("creating the VM's disk (a copy-on-write overlay on the box)")
        disks.overlay(record.files.disk, box.disk, record.disk)
        record.extra.update(
            box_disk_sha256=box.manifest["files"]["disk.qcow2"].get("sha256", ""),
            kernel=str(box.kernel),
            initrd=str(box.initrd),
            cmdline=box.cmdline,
        )

    def _config(self, record: VMRecord, ssh_port: int, accel: str, aslr: bool) -> QemuConfig:
        f = record.files
        return QemuConfig(
            name=record.name,
            cpus=record.cpus,
            memory=record.memory,
            accel=accel,
            kernel=_path(record, "kernel"),
            initrd=_path(record, "initrd"),
            cmdline=str(record.extra["cmdline"]),
            disk=f.disk,
            seed=f.seed,
            ssh_port=ssh_port,
            qmp=monitor_address(record),
            pidfile=f.pid,
            serial_log=f.serial_log,
            arch=record.arch,
            host_os=self.host_os,
            aslr=aslr,
        )

    def start(self, record: VMRecord, progress: Progress) -> None:
        if self._pid(record) is not None:
            if not self._interrupted(record):
                return
            # Never usable: boot instead (this is no longer the VM's first start).
            self.stop(record, timeout=0, force=True)
        f = record.files
        for stale in (f.qmp, f.pid):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()
        self._check_box(record)
        binary = find_qemu(record.arch)
        accel = str(record.extra.get("accel", "tcg"))
        aslr = accel != "tcg" or tcg_keeps_aslr(
            record.arch, parse_qemu_version(qemu_version_text(binary))
        )
        first_start = not record.extra.get("started")
        record.extra["started"] = True
        record.extra.pop(RESUMED_KEY, None)
        record.extra.pop(RESUMING_KEY, None)
        if first_start and self._quick_start(record, binary, accel, aslr, progress):
            return
        self._launch(
            record,
            lambda port: build_argv(binary, self._config(record, port, accel, aslr)),
            f"starting QEMU ({accel})",
            progress,
        )

    def _launch(
        self,
        record: VMRecord,
        argv_for: Callable[[int], list[str]],
        what: str,
        progress: Progress,
    ) -> None:
        """Start QEMU with ``argv_for(ssh_port)``; return once it runs (daemonized, or its
        monitor answers)."""
        f = record.files
        detached = self.host_os == "win32"
        # Another program can take the chosen port between the check and QEMU's bind; try again.
        assert record.ssh is not None
        for attempt in range(3):
            port = free_port()
            # Recorded before QEMU runs: a vmkit killed right after the launch must not leave
            # a record whose port no QEMU listens on (a VM "starting" forever).
            record.ssh = attrs.evolve(record.ssh, port=port)
            record.extra.pop(TCP_PORT_KEY, None)
            if detached:
                record.extra[TCP_PORT_KEY] = _another_port(port)
            state.save(record)
            progress(f"{what}, SSH on 127.0.0.1:{port}")
            argv = argv_for(port)
            try:
                if detached:
                    self._spawn(record, argv)
                else:
                    _run_qemu(argv)
            except PortInUse:
                if attempt == 2:
                    raise
                continue
            break
        # QEMU makes its monitor socket with the default umask; whoever can connect to it
        # owns the VM (and the VM folder is 0700 already).
        if not detached:
            with contextlib.suppress(FileNotFoundError):
                f.qmp.chmod(0o600)

    def _quick_start(
        self, record: VMRecord, binary: str, accel: str, aslr: bool, progress: Progress
    ) -> bool:
        """Resume the VM's first start from its box's saved boot (``quickstart``); False if
        it cannot, and then the VM is as before: stopped, its disk unused on the box."""
        from vmkit import boxes
        from vmkit.guest import keys
        from vmkit.guest.seed import hostname_for, make_seed

        box = boxes.find(record.box, record.arch)
        reason = quickstart.why_not(
            box_name=record.box,
            recipe=int(box.manifest.get("recipe_version", 0)),
            accel=accel,
            arch=record.arch,
            host_os=self.host_os,
            first_start=True,
            wanted=bool(record.extra.get("quick_start", True)),
        )
        if reason is not None:
            log.debug(f"no quick start for {record.name}: {reason}")
            return False
        config = self._config(record, 0, accel, aslr)
        saved = quickstart.find_or_make(
            box.dir,
            box.disk,
            config,
            of=quickstart.shape(
                config,
                binary=binary,
                qemu_version=qemu_version_text(binary),
                box_disk_sha256=str(record.extra.get("box_disk_sha256", "")),
                disk_gib=record.disk,
            ),
            disk_gib=record.disk,
            binary=binary,
            launch=_run_qemu,
            progress=progress,
        )
        if saved is None:
            return False
        f = record.files
        reseed = f.dir / "reseed.img"

        def write_reseed(extra: dict[str, str]) -> Path:
            return make_seed(
                reseed,
                authorized_key=keys.public_line(f.client_key),
                host_key=f.host_key,
                hostname=hostname_for(record.name),
                extra=extra,
            )

        # Recorded first: a vmkit killed after the next step leaves a disk on the saved boot.
        record.extra[RESUMED_KEY] = saved.key
        record.extra[SAVED_BOOT_KEY] = str(saved.dir)
        record.extra[RESUMING_KEY] = [os.getpid(), procs.started_at(os.getpid())]
        state.save(record)
        disks.overlay(f.disk, saved.disk, record.disk)
        try:
            self._launch(
                record,
                lambda port: [
                    *build_argv(binary, self._config(record, port, accel, aslr)),
                    "-incoming",
                    "defer",
                ],
                "resuming QEMU from the box's saved boot (quick start)",
                progress,
            )
            with QMP.for_vm(record, timeout=60) as q:
                quickstart.load(q, saved, f.serial_log, write_reseed)
            record.extra.pop(RESUMING_KEY)
            state.save(record)
        except VmkitError as e:
            if isinstance(e, QuickStartFailed):
                quickstart.forget(saved, e.message)
            log.warning(f"quick start failed ({e.message}); booting the VM instead")
            self.stop(record, timeout=0, force=True)
            disks.overlay(f.disk, box.disk, record.disk)
            for key in (RESUMED_KEY, SAVED_BOOT_KEY, RESUMING_KEY):
                record.extra.pop(key, None)
            state.save(record)
            return False
        finally:
            with contextlib.suppress(FileNotFoundError):
                reseed.unlink()
        return True

    def _spawn(self, record: VMRecord, argv: list[str]) -> None:
        """Start QEMU detached and return once its monitor answers; its startup errors (read
        from ``qemu.log``) are raised as ``run`` would raise them for a daemonizing QEMU."""
        log = record.files.qemu_log
        with contextlib.suppress(FileNotFoundError):
            log.unlink()  # only this attempt's output is read for its error
        proc = spawn(argv, log=log)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            code = proc.poll()
            if code is not None:
                output = log.read_text(errors="replace") if log.exists() else ""
                result = Result(argv, code, "", output, 0.0)
                raise classify(result, QEMU_RULES) or CommandFailed(result)
            with contextlib.suppress(QMPError), QMP.for_vm(record, timeout=2) as q:
                q.execute("query-status")
                return
            if time.monotonic() > deadline:
                proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(5)
                raise CommandTimeout(argv, START_TIMEOUT, hint=f"QEMU's output: {log}")
            time.sleep(0.1)

    def _check_box(self, record: VMRecord) -> None:
        """Refuse to boot an overlay whose base box was rebuilt: its blocks would not match."""
        from vmkit import boxes

        saved_boot = record.extra.get(SAVED_BOOT_KEY)
        if saved_boot and not Path(str(saved_boot)).is_dir():
            raise ProviderError(
                f"the saved boot that VM {record.name!r} was quick-started from is gone",
                hint="its disk is an overlay on it: destroy and recreate the VM",
            )
        made_from = record.extra.get("box_disk_sha256")
        if not made_from:
            return
        try:
            now = boxes.find(record.box, record.arch).manifest["files"]["disk.qcow2"].get("sha256")
        except VmkitError as e:
            raise ProviderError(
                f"the box {record.box} ({record.arch}) that VM {record.name!r} was made from is gone",
                hint="destroy and recreate the VM",
            ) from e
        if now != made_from:
            raise ProviderError(
                f"the box {record.box} ({record.arch}) was rebuilt after VM {record.name!r} was made from it",
                hint="its disk is an overlay on the old box: destroy and recreate the VM",
            )

    def stop(self, record: VMRecord, *, timeout: float, force: bool = False) -> None:
        pid = self._pid(record)
        if pid is None:
            return
        marker = str(record.files.pid)
        if not force:
            with contextlib.suppress(QMPError), QMP.for_vm(record) as q:
                q.execute("system_powerdown")
            if procs.wait_gone(pid, timeout):
                return
        with contextlib.suppress(QMPError), QMP.for_vm(record, timeout=3) as q:
            q.execute("quit")
        if not procs.wait_gone(pid, 5):
            procs.terminate(pid, marker)
        if procs.alive(pid, marker):
            signals.kill(pid)
            procs.wait_gone(pid, 5)

    def destroy(self, record: VMRecord) -> None:
        self.stop(record, timeout=0, force=True)

    def status(self, record: VMRecord, *, ask_guest: bool = True) -> Status:
        f = record.files
        if record.extra.get("incomplete") or not f.state.exists():
            pid = self._pid(record)
            return Status(VMState.BROKEN, "creation did not finish", ("no VM record",), pid)
        pid = self._pid(record)
        if pid is None:
            if not f.disk.exists():
                return Status(VMState.BROKEN, "disk missing", (f"{f.disk} does not exist",))
            return Status(VMState.STOPPED)
        try:
            with QMP.for_vm(record, timeout=5) as q:
                qs = q.execute("query-status")
        except QMPError as e:
            return Status(
                VMState.BROKEN, "QEMU runs but its monitor does not answer", (e.message,), pid
            )
        run_state = str(qs.get("status", ""))
        if RESUMING_KEY in record.extra:
            if self._interrupted(record):
                return Status(
                    VMState.BROKEN,
                    "its quick start was interrupted",
                    ("`vmkit start` boots it instead; `vmkit destroy` removes it",),
                    pid,
                )
            return Status(VMState.STARTING, "resuming from the box's saved boot", pid=pid)
        if run_state == "running":
            if not ask_guest:
                return Status(VMState.STARTING, "running; the guest was not asked", pid=pid)
            if record.ssh and read_banner(record.ssh.host, record.ssh.port, timeout=1.5):
                return Status(VMState.RUNNING, pid=pid)
            return Status(VMState.STARTING, "booting: SSH not answering yet", pid=pid)
        if run_state == "prelaunch":
            return Status(VMState.STARTING, "QEMU has not started the guest's CPUs yet", pid=pid)
        if run_state in ("paused", "suspended"):
            return Status(VMState.PAUSED, run_state, pid=pid)
        if run_state == "shutdown":
            return Status(VMState.STOPPING, run_state, pid=pid)
        return Status(VMState.BROKEN, f"QEMU reports {run_state}", (run_state,), pid)

    def _interrupted(self, record: VMRecord) -> bool:
        """A quick start began and the vmkit process doing it is gone."""
        by = record.extra.get(RESUMING_KEY)
        if not isinstance(by, list) or len(by) != 2:
            return False
        return not procs.same_process(int(by[0]), float(by[1]))

    def _pid(self, record: VMRecord) -> int | None:
        """QEMU's pid if the process named in the pid file is this VM's QEMU (whose command
        line names that pid file)."""
        pid = procs.read_pid(record.files.pid)
        return pid if procs.alive(pid, str(record.files.pid)) else None

    # -- mechanisms -----------------------------------------------------------------------

    def share_mechanisms(
        self, record: VMRecord, ssh: Callable[[], SSHSession]
    ) -> list[ShareMechanism]:
        from vmkit.mechanisms.sshfs import ReverseSSHFS
        from vmkit.providers.qemu.virtiofs import VirtioFS

        return [VirtioFS(record, ssh), ReverseSSHFS(record, ssh)]

    def forward_mechanisms(
        self, record: VMRecord, ssh: Callable[[], SSHSession]
    ) -> list[ForwardMechanism]:
        from vmkit.mechanisms.tunnel import SSHTunnel
        from vmkit.providers.qemu.hostfwd import HostFwd

        return [HostFwd(record), SSHTunnel(record, ssh)]


def _another_port(taken: int) -> int:
    """A free port of 127.0.0.1 other than ``taken``."""
    while (port := free_port()) == taken:
        pass
    return port


def _path(record: VMRecord, key: str) -> Path:
    value = record.extra.get(key)
    if not value:
        raise ProviderError(
            f"VM {record.name!r} has no {key} recorded", hint="destroy and recreate it"
        )
    return Path(str(value))
