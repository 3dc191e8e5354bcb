"""virtio-fs shares hot-plugged into a running QEMU guest.

Per share: one ``virtiofsd`` for the host folder, a QMP ``chardev-add`` for its socket, a
``device_add vhost-user-fs-pci`` and a ``mount -t virtiofs`` in the guest. Guest RAM must be a
shared memory backend (vmkit's QEMU command line makes it so); without it virtiofsd dies and
the guest hangs, so ``check`` looks at ``query-memdev`` first.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path

import attrs

from vmkit.errors import GuestModuleMissing, NotSupported, ProviderError, QMPError, VmkitError
from vmkit.guest.ssh import SSHSession
from vmkit.host import procs
from vmkit.host.runner import spawn
from vmkit.mechanisms.base import guest_mountpoints, prepare_mountpoint, unmount
from vmkit.providers.qemu.qmp import QMP
from vmkit.state import ShareSpec, VMRecord

VIRTIOFSD_PATHS = ("/usr/lib/qemu/virtiofsd", "/usr/libexec/virtiofsd", "/usr/lib/virtiofsd")


def share_tag(target: str) -> str:
    """A stable, short virtio-fs tag for a guest path (tags are limited to 36 bytes)."""
    return "vmkit-" + hashlib.sha256(target.encode()).hexdigest()[:12]


def find_virtiofsd() -> str:
    for p in VIRTIOFSD_PATHS:
        if Path(p).is_file():
            return p
    raise NotSupported(
        "virtiofsd is not installed", hint="install qemu-system-common (Debian 12) or virtiofsd"
    )


@attrs.define
class VirtioFS:
    """The fastest share for QEMU guests: near-native listing, tens of MiB/s under TCG."""

    record: VMRecord
    ssh: Callable[[], SSHSession]
    name: str = "virtiofs"

    def _qmp(self) -> QMP:
        return QMP(self.record.files.qmp)

    def check(self) -> None:
        find_virtiofsd()
        if os.geteuid() != 0:
            # Debian 12's virtiofsd (the C one in qemu-system-common) sandboxes itself with
            # namespaces and pivot_root, which needs root; the Rust virtiofsd does not.
            raise NotSupported(
                "virtiofsd needs root on this host", hint="run vmkit as root, or use sshfs"
            )
        with self._qmp() as q:
            memdevs = q.execute("query-memdev")
        if not any(m.get("share") for m in memdevs):
            raise NotSupported(
                "the VM's RAM is not shared memory, which virtio-fs needs",
                hint="VMs made by vmkit have it; this one was started otherwise",
            )
        r = self.ssh().run(["modprobe", "virtiofs"], sudo=True, check=False)
        if r.exit_code != 0:
            raise GuestModuleMissing(f"the guest has no virtiofs module: {r.stderr.strip()}")

    def add(self, spec: ShareSpec) -> ShareSpec:
        files = self.record.files
        tag = share_tag(spec.target)
        sock = files.virtiofs_sock(tag)
        pidfile = files.virtiofs_pid(tag)
        undo: list[Callable[[], None]] = []
        try:
            with contextlib.suppress(FileNotFoundError):
                sock.unlink()
            proc = spawn(
                [
                    find_virtiofsd(),
                    "-f",
                    f"--socket-path={sock}",
                    "-o",
                    "source=" + _fuse_opt_escape(spec.source),
                    "-o",
                    # No "-o xattr": it costs a host round trip per file on every
                    # listing (measured: `ls -l` of 2000 files 7x slower) and
                    # bind mounts into containers do not need extended attributes.
                    "cache=auto",
                ],
                log=files.virtiofs_log(tag),
            )
            pidfile.write_text(str(proc.pid))
            undo.append(lambda: _stop_daemon(pidfile, sock))
            _wait_socket(sock, proc.pid, timeout=10)
            with self._qmp() as q:
                q.execute(
                    "chardev-add",
                    {
                        "id": f"chr-{tag}",
                        "backend": {
                            "type": "socket",
                            "data": {
                                "addr": {"type": "unix", "data": {"path": str(sock)}},
                                "server": False,
                            },
                        },
                    },
                )
                undo.append(lambda: self._chardev_remove(tag))
                q.execute(
                    "device_add",
                    {
                        "driver": "vhost-user-fs-pci",
                        "chardev": f"chr-{tag}",
                        "tag": tag,
                        "id": f"dev-{tag}",
                    },
                )
                undo.append(lambda: self._device_del(tag))
            ssh = self.ssh()
            prepare_mountpoint(ssh, spec.target)
            opts = ["-o", "ro"] if spec.readonly else []
            # The new PCI device needs a moment to be probed; retry the mount briefly.
            deadline = time.monotonic() + 10
            while True:
                r = ssh.run(
                    ["mount", "-t", "virtiofs", *opts, "--", tag, spec.target],
                    sudo=True,
                    check=False,
                )
                if r.exit_code == 0:
                    break
                if time.monotonic() > deadline:
                    raise ProviderError(
                        f"the guest could not mount the share at {spec.target}: {r.stderr.strip()}"
                    )
                time.sleep(0.1)
        except BaseException:
            for step in reversed(undo):
                with contextlib.suppress(VmkitError, OSError):
                    step()
            raise
        return attrs.evolve(spec, mechanism=self.name, tag=tag)

    def remove(self, spec: ShareSpec) -> None:
        tag = spec.tag or share_tag(spec.target)
        with contextlib.suppress(VmkitError):
            unmount(self.ssh(), spec.target)
        self._device_del(tag)
        self._chardev_remove(tag)
        files = self.record.files
        _stop_daemon(files.virtiofs_pid(tag), files.virtiofs_sock(tag))

    def active(self) -> list[ShareSpec]:
        with self._qmp() as q:
            devices = {d["name"] for d in q.execute("qom-list", {"path": "/machine/peripheral"})}
        mounts = guest_mountpoints(self.ssh())
        return [
            s
            for s in self.record.shares
            if s.mechanism == self.name
            and f"dev-{s.tag}" in devices
            and mounts.get(s.target) == "virtiofs"
        ]

    def _device_del(self, tag: str) -> None:
        with self._qmp() as q:
            try:
                q.execute("device_del", {"id": f"dev-{tag}"})
            except QMPError as e:
                if "not found" in str(e).lower():
                    return
                raise
            with contextlib.suppress(QMPError):
                q.wait_event(
                    "DEVICE_DELETED", lambda d: d.get("device") == f"dev-{tag}", timeout=15
                )

    def _chardev_remove(self, tag: str) -> None:
        with self._qmp() as q:
            try:
                q.execute("chardev-remove", {"id": f"chr-{tag}"})
            except QMPError as e:
                if "not found" not in str(e).lower():
                    raise


def _fuse_opt_escape(value: str) -> str:
    """Quote a value for libfuse's comma-separated ``-o`` list (commas are legal in folder names)."""
    return value.replace("\\", "\\\\").replace(",", "\\,")


def _wait_socket(sock: Path, pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not sock.exists():
        if not procs.running(pid):
            raise ProviderError("virtiofsd exited at once", hint=f"see {sock.with_suffix('.log')}")
        if time.monotonic() > deadline:
            raise ProviderError(f"virtiofsd did not create {sock} within {timeout:g} s")
        time.sleep(0.02)


def _stop_daemon(pidfile: Path, sock: Path) -> None:
    pid = procs.read_pid(pidfile)
    if pid is not None:
        procs.terminate(pid, str(sock), timeout=3)
    # virtiofsd's sandbox child can outlive its parent by a moment; wait for all of them.
    for straggler in procs.find(str(sock)):
        procs.terminate(straggler, str(sock), timeout=3)
    for p in (pidfile, sock):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
