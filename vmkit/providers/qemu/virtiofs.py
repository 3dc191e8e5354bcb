"""virtio-fs shares hot-plugged into a running QEMU guest.

Each ``virtiofsd`` runs confined by vmkit/host/fsguard.py: in a user namespace where the host
user is the guest's login user, with the share bind-mounted (read-only for ``--readonly``),
and a seccomp filter that keeps set-id bits, device nodes, chown and foreign owners out of the
host folder. So ownership and read-only hold on the host, and no root is needed.

Per share: one ``virtiofsd`` for the host folder, a QMP ``chardev-add`` for its socket, a
``device_add vhost-user-fs-pci`` and a ``mount -t virtiofs`` in the guest. Guest RAM must be a
shared memory backend (vmkit's QEMU command line makes it so); without it virtiofsd dies and
the guest hangs, so ``check`` looks at ``query-memdev`` first.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import attrs

from vmkit.errors import GuestModuleMissing, NotSupported, ProviderError, QMPError, VmkitError
from vmkit.guest.ssh import SSHSession
from vmkit.host import fsguard, procs
from vmkit.host.faults import point
from vmkit.host.runner import spawn
from vmkit.mechanisms.base import (
    Leftover,
    guest_mountpoints,
    guest_mounts,
    prepare_mountpoint,
    unmount,
)
from vmkit.providers.qemu.argv import HOTPLUG_PORT_ID, HOTPLUG_PORTS
from vmkit.providers.qemu.qmp import QMP
from vmkit.state import ShareSpec, VMRecord

#: Every name vmkit gives a share's pieces holds its tag: chardev ``chr-TAG``, device
#: ``dev-TAG``, files ``virtiofs-TAG.{sock,pid,log}``, and the guest mount's source is TAG.
_TAG = re.compile(r"vmkit-[0-9a-f]{12}")

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
        return QMP.for_vm(self.record)

    def check(self) -> None:
        find_virtiofsd()
        why = fsguard.unavailable()
        if why:
            # virtiofsd runs confined (vmkit/host/fsguard.py): without that it could neither
            # map ownership nor enforce --readonly on the host.
            raise NotSupported(
                f"virtio-fs cannot be confined here: {why}",
                hint="allow user namespaces (sysctl user.max_user_namespaces, "
                "kernel.unprivileged_userns_clone) and install libseccomp2, or use sshfs",
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

    def planned(self, spec: ShareSpec) -> ShareSpec:
        return attrs.evolve(spec, mechanism=self.name, tag=share_tag(spec.target))

    def add(self, spec: ShareSpec) -> ShareSpec:
        files = self.record.files
        tag = share_tag(spec.target)
        sock = files.virtiofs_sock(tag)
        pidfile = files.virtiofs_pid(tag)
        undo: list[Callable[[], None]] = []
        try:
            with contextlib.suppress(FileNotFoundError):
                sock.unlink()
            uid, gid = _login_ids(self.ssh())
            root = files.virtiofs_root(tag)
            root.mkdir(mode=0o700, exist_ok=True)
            server = [
                find_virtiofsd(),
                "-f",
                "-o",
                # The share is bind-mounted on this folder in virtiofsd's namespace; the name
                # carries the tag, so a daemon is found by its command line.
                "source=" + _fuse_opt_escape(str(root)),
                "-o",
                # No "-o xattr": it costs a host round trip per file on every
                # listing (measured: `ls -l` of 2000 files 7x slower) and
                # bind mounts into containers do not need extended attributes.
                "cache=auto",
                # No device nodes, no file capabilities (fsguard's filter also refuses them).
                "-o",
                "modcaps=-mknod:-setfcap",
                # fsguard raised the descriptor limit; a user namespace cannot raise it more.
                "--rlimit-nofile=0",
            ]
            argv = fsguard.command(
                spec.source,
                root=str(root),
                listen=str(sock),
                readonly=spec.readonly,
                uid=uid,
                gid=gid,
                server=server,
            )
            proc = spawn(argv, log=files.virtiofs_log(tag))
            pidfile.write_text(str(proc.pid))
            undo.append(lambda: _stop_daemon(pidfile, sock, root))
            _wait_socket(sock, proc.pid, server[0], timeout=10)
            sock.chmod(0o600)
            point("virtiofs:daemon")
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
                point("virtiofs:chardev")
                self._device_add(q, tag)
                undo.append(lambda: self._device_del(tag))
                point("virtiofs:device")
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

    def _device_add(self, q: QMP, tag: str) -> None:
        device = {
            "driver": "vhost-user-fs-pci",
            "chardev": f"chr-{tag}",
            "tag": tag,
            "id": f"dev-{tag}",
        }
        if self.record.arch != "arm64":
            q.execute("device_add", device)
            return
        # The Arm virt machine hot-plugs only into the empty root ports made at boot: the
        # first free one takes it (QEMU refuses a port that holds a device already).
        ports = [HOTPLUG_PORT_ID.format(i) for i in range(HOTPLUG_PORTS)]
        for port in ports[:-1]:
            with contextlib.suppress(QMPError):
                q.execute("device_add", {**device, "bus": port})
                return
        q.execute("device_add", {**device, "bus": ports[-1]})

    def remove(self, spec: ShareSpec) -> None:
        tag = spec.tag or share_tag(spec.target)
        if spec.target:
            with contextlib.suppress(VmkitError):
                unmount(self.ssh(), spec.target)
        point("virtiofs:unmounted")
        self._device_del(tag)
        point("virtiofs:device-deleted")
        self._chardev_remove(tag)
        point("virtiofs:chardev-removed")
        files = self.record.files
        _stop_daemon(files.virtiofs_pid(tag), files.virtiofs_sock(tag), files.virtiofs_root(tag))

    def leftovers(self, wanted: Sequence[ShareSpec]) -> list[Leftover]:
        """Pieces of virtio-fs shares none of ``wanted`` accounts for, found by their names:
        QEMU's chardevs and devices, ``virtiofsd`` processes (pid files and command lines),
        their sockets, and guest mounts."""
        keep = {s.tag or share_tag(s.target) for s in wanted if s.mechanism == self.name}
        with self._qmp() as q:
            chardevs = {str(c["label"]) for c in q.execute("query-chardev")}
            devices = {
                str(d["name"]) for d in q.execute("qom-list", {"path": "/machine/peripheral"})
            }
        mounts = {
            m.source: m.target
            for m in guest_mounts(self.ssh())
            if m.fstype == "virtiofs" and _TAG.fullmatch(m.source)
        }
        files = self.record.files
        daemons = _daemons(files.dir)
        pieces: dict[str, list[str]] = {}
        for tag, target in mounts.items():
            pieces.setdefault(tag, []).append(f"guest mount {target}")
        for kind, prefix, names in (("device", "dev-", devices), ("chardev", "chr-", chardevs)):
            for n in sorted(names):
                if n.startswith(prefix) and _TAG.fullmatch(n[len(prefix) :]):
                    pieces.setdefault(n[len(prefix) :], []).append(f"{kind} {n}")
        for tag, pid in daemons.items():
            pieces.setdefault(tag, []).append(f"virtiofsd (pid {pid})")
        for f in sorted(files.dir.glob("virtiofs-vmkit-*")):
            m = _TAG.search(f.name)
            if m and m.group() not in daemons and f.suffix in (".sock", ".pid", ".root"):
                pieces.setdefault(m.group(), []).append(f"stale file {f.name}")
        out = []
        for tag in sorted(set(pieces) - keep):
            spec = ShareSpec(source="", target=mounts.get(tag, ""), mechanism=self.name, tag=tag)
            out += [Leftover(self.name, what, share=spec) for what in pieces[tag]]
        return out

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


def _daemons(folder: Path) -> dict[str, int]:
    """Running virtiofsd of a VM folder by tag, from pid files and from command lines
    (a command killed between starting one and writing its pid file leaves no pid file)."""
    found: dict[str, int] = {}
    for pid in procs.find(str(folder / "virtiofs-")):
        for arg in procs.cmdline(pid) or []:
            # virtiofsd's "source=…/virtiofs-TAG.root"; fsguard's "--listen=…/virtiofs-TAG.sock"
            m = _TAG.search(Path(arg).name)
            if arg.startswith(("source=", "--listen=", "--socket-path=")) and m:
                found.setdefault(m.group(), pid)
    return found


def _login_ids(ssh: SSHSession) -> tuple[int, int]:
    """The guest login user's uid and gid: the host user's files appear as theirs."""
    out = ssh.run(["sh", "-c", "id -u; id -g"]).stdout.split()
    try:
        return int(out[0]), int(out[1])
    except (IndexError, ValueError):
        raise ProviderError(f"the guest's `id` printed {out!r}, not a uid and a gid") from None


def _fuse_opt_escape(value: str) -> str:
    """Quote a value for libfuse's comma-separated ``-o`` list (commas are legal in folder names)."""
    return value.replace("\\", "\\\\").replace(",", "\\,")


def _wait_socket(sock: Path, pid: int, program: str, timeout: float) -> None:
    """Until ``sock`` listens and the confinement is done: the process is ``program`` itself
    (fsguard's setup fails, and the process ends, before it executes ``program``)."""
    deadline = time.monotonic() + timeout
    while not (sock.exists() and (procs.cmdline(pid) or [""])[0] == program):
        if not procs.running(pid):
            raise ProviderError("virtiofsd exited at once", hint=f"see {sock.with_suffix('.log')}")
        if time.monotonic() > deadline:
            raise ProviderError(f"virtiofsd did not start on {sock} within {timeout:g} s")
        time.sleep(0.02)


def _stop_daemon(pidfile: Path, sock: Path, root: Path) -> None:
    pid = procs.read_pid(pidfile)
    if pid is not None:
        procs.terminate(pid, str(root), timeout=3)
    # virtiofsd's sandbox child can outlive its parent by a moment; wait for all of them.
    for marker in (str(sock), str(root)):
        for straggler in procs.find(marker):
            procs.terminate(straggler, marker, timeout=3)
    for p in (pidfile, sock):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
    with contextlib.suppress(OSError):
        root.rmdir()  # empty outside the daemon's namespace
