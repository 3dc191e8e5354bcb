"""A VM's record on disk: what it is, how to reach it, and its desired shares and forwards.

The record is JSON, written atomically (temp file + rename) under a per-VM file lock, so two
vmkit commands on one VM never corrupt it and a crash leaves either the old or the new file.
Running state is never cached here: providers read it from the real process each time.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
from filelock import FileLock, Timeout

from vmkit.errors import VMExists, VMLocked, VMNotFound
from vmkit.home import InstanceFiles, check_name, vms_dir

SCHEMA = 1


@attrs.frozen
class ShareSpec:
    """A desired shared folder: host ``source`` appears in the guest at ``target``."""

    source: str
    target: str
    readonly: bool = False
    mechanism: str = ""  # chosen when applied; empty means "pick the best"
    tag: str = ""  # mechanism-specific handle (virtio-fs tag, VirtualBox share name)
    # Made by vmkit on its own: "" (the user made it), "container" (a Docker bind mount).
    auto: str = ""
    owner: str = ""  # for an automatic entry: the container it was made for

    def describe_origin(self) -> str:
        """``user``, or ``auto (container web)``."""
        return _origin(self.auto, self.owner)


@attrs.frozen
class ForwardSpec:
    """A desired port forward: ``host_ip:host_port`` on the host reaches ``guest_port`` in the guest."""

    host_port: int
    guest_port: int
    proto: str = "tcp"
    host_ip: str = "127.0.0.1"
    mechanism: str = ""
    # Made by vmkit on its own: "" (the user made it), "container" (a port a container
    # publishes), "listener" (a server listening in the guest, with `vmkit forward --auto on`).
    auto: str = ""
    owner: str = ""  # the container's name, or the listener's port

    def describe_origin(self) -> str:
        """``user``, or ``auto (container web)``."""
        return _origin(self.auto, self.owner)

    @property
    def key(self) -> tuple[str, int]:
        return (self.proto, self.host_port)


def _origin(auto: str, owner: str) -> str:
    if not auto:
        return "user"
    return f"auto ({auto} {owner})" if owner else f"auto ({auto})"


@attrs.frozen
class Intent:
    """A live change under way, written to the record before its first side effect.

    ``op`` is ``share``, ``unshare``, ``forward`` or ``unforward``; ``share``/``forward`` is
    the spec with its mechanism (and so the names of everything it makes) already chosen. A
    command that finishes removes its intent in the same write that records the result; one
    that was killed leaves it, and the next command on the VM (or ``vmkit repair``) settles
    it: a half-made share or forward is removed, a half-done removal is finished.
    """

    op: str
    share: ShareSpec | None = None
    forward: ForwardSpec | None = None
    pid: int = 0  # the vmkit process that wrote it
    since: float = 0.0  # time.time() when it was written

    def describe(self) -> str:
        """``share of /data``, ``forward of port 8080/tcp``: what the change was about."""
        if self.share is not None:
            return f"{self.op} of {self.share.source or self.share.target}"
        if self.forward is not None:
            return f"{self.op} of port {self.forward.host_port}/{self.forward.proto}"
        return self.op


@attrs.frozen
class SSHEndpoint:
    """How to reach a guest's sshd; the host key is pinned, never learned on first use."""

    host: str
    port: int
    user: str
    key_file: str
    host_key: str  # "ssh-ed25519 AAAA..." as in known_hosts, without the host column


@attrs.define
class VMRecord:
    """What vmkit knows about one VM, persisted as ``vm.json`` in its folder."""

    name: str
    provider: str
    box: str = ""
    arch: str = "amd64"
    cpus: int = 2
    memory: int = 1024  # MiB
    disk: int = 8  # GiB
    ssh: SSHEndpoint | None = None
    shares: list[ShareSpec] = attrs.Factory(list)
    forwards: list[ForwardSpec] = attrs.Factory(list)
    # Changes begun and not finished (their command was killed); see ``Intent``.
    pending: list[Intent] = attrs.Factory(list)
    # Provider-specific values (QEMU's accelerator and SSH port, VirtualBox's VM UUID, ...).
    extra: dict[str, Any] = attrs.Factory(dict)
    schema: int = SCHEMA

    @property
    def files(self) -> InstanceFiles:
        return InstanceFiles.of(self.name)

    def to_json(self) -> str:
        return json.dumps(attrs.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VMRecord:
        d = dict(d)
        ssh = d.pop("ssh", None)
        shares = d.pop("shares", [])
        forwards = d.pop("forwards", [])
        pending = d.pop("pending", [])
        known = {a.name for a in attrs.fields(cls)}
        return cls(
            ssh=SSHEndpoint(**ssh) if ssh else None,
            shares=[ShareSpec(**s) for s in shares],
            forwards=[ForwardSpec(**f) for f in forwards],
            pending=[_intent(i) for i in pending],
            **{k: v for k, v in d.items() if k in known},
        )


def _intent(d: dict[str, Any]) -> Intent:
    d = dict(d)
    share, forward = d.pop("share", None), d.pop("forward", None)
    return Intent(
        share=ShareSpec(**share) if share else None,
        forward=ForwardSpec(**forward) if forward else None,
        **d,
    )


def atomic_write(path: Path, text: str, mode: int = 0o644) -> None:
    """Write ``text`` to ``path`` so that readers see the old or the new file, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def locked(name: str, timeout: float = 120.0) -> Iterator[None]:
    """Hold the VM's file lock; raises ``VMLocked`` if another process keeps it past ``timeout``.

    ``destroy`` removes the lock file while holding it (see ``drop_lock``); a process that was
    waiting then holds a lock on a file no longer there, so it takes the lock again.
    """
    files = InstanceFiles.of(name)
    deadline = time.monotonic() + timeout
    while True:
        files.lock.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(files.lock), timeout=max(deadline - time.monotonic(), 0))
        try:
            lock.acquire()
        except Timeout as e:
            raise VMLocked(f"VM {name!r} is busy: another vmkit command holds its lock") from e
        if files.lock.exists():
            break
        lock.release()
    try:
        yield
    finally:
        lock.release()


def drop_lock(name: str) -> None:
    """Remove the VM's lock file; call it holding the lock, as the last step of destroy."""
    with contextlib.suppress(FileNotFoundError):
        InstanceFiles.of(name).lock.unlink()


def exists(name: str) -> bool:
    return InstanceFiles.of(name).dir.is_dir()


def load(name: str) -> VMRecord:
    """The record of VM ``name``; ``VMNotFound`` if there is none.

    A folder without a readable record (a crash during create) still loads, as a bare record,
    so that ``status`` can report it and ``destroy`` can clean it up.
    """
    files = InstanceFiles.of(name)
    if not files.dir.is_dir():
        raise VMNotFound(f"no VM named {name!r}")
    try:
        data = json.loads(files.state.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return VMRecord(name=name, provider="", extra={"incomplete": True})
    return VMRecord.from_dict(data)


def save(record: VMRecord) -> None:
    atomic_write(record.files.state, record.to_json())


def new_folder(name: str) -> InstanceFiles:
    """Create the folder of a new VM; ``VMExists`` if the name is taken."""
    check_name(name)
    files = InstanceFiles.of(name)
    files.dir.parent.mkdir(parents=True, exist_ok=True)
    try:
        files.dir.mkdir(mode=0o700)
    except FileExistsError as e:
        raise VMExists(f"a VM named {name!r} exists already") from e
    return files


def names() -> list[str]:
    """Names of all VMs with a folder, sorted."""
    root = vms_dir()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
