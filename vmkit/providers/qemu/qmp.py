"""A synchronous facade over ``qemu.qmp``'s asyncio client that leaks no asyncio errors.

Each ``QMP`` owns a private event loop; every failure (connect, timeout, a command QEMU
refused, the socket closing) comes out as ``vmkit.errors.QMPError`` with what was sent and
what came back.

QEMU's monitor serves one client at a time: a second one waits, unanswered, until the first
disconnects. So a connection holds the VM's ``qmp.lock`` (a file lock beside the socket) from
connect to close, and vmkit processes queue for it instead of timing out on a monitor that is
busy with another's ``device_del`` (which waits seconds for the guest).

The monitor is a unix socket in the VM's folder, or, for a QEMU that runs on Windows (where
Python cannot reach a unix socket), a TCP port on 127.0.0.1: ``QMP.for_vm`` picks the one the
VM was started with.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from filelock import FileLock, Timeout
from qemu.qmp import ConnectError, ExecuteError, QMPClient
from qemu.qmp.error import QMPError as _LibQMPError

from vmkit.errors import QMPError
from vmkit.home import InstanceFiles

if TYPE_CHECKING:
    from vmkit.state import VMRecord

T = TypeVar("T")

#: How long a vmkit process waits for another one's monitor session (a ``device_del`` that
#: waits for the guest takes up to ~15 s) before it reports the monitor as busy.
LOCK_WAIT = 60.0


#: The ``extra`` key of a VM record whose monitor is a TCP port of 127.0.0.1.
TCP_PORT_KEY = "qmp_port"


def monitor_address(record: VMRecord) -> Path | int:
    """Where VM ``record``'s monitor listens: the TCP port it was started with, else its
    unix socket."""
    port = record.extra.get(TCP_PORT_KEY)
    return int(str(port)) if port else record.files.qmp


class QMP:
    """A connection to one QEMU monitor. Use as a context manager.

    ``address`` is the monitor's unix socket (its folder holds the lock), or a TCP port on
    127.0.0.1 with ``lock`` naming the lock file.
    """

    def __init__(
        self,
        address: Path | int,
        *,
        lock: Path | None = None,
        timeout: float = 10.0,
        lock_wait: float = LOCK_WAIT,
    ) -> None:
        if lock is None:
            if not isinstance(address, Path):
                raise TypeError("a monitor on a TCP port needs its lock file")
            lock = InstanceFiles(address.parent).qmp_lock
        self.address = address
        self.timeout = timeout
        self.lock_wait = lock_wait
        self._lock = FileLock(str(lock))
        self._loop = asyncio.new_event_loop()
        self._client = QMPClient(f"vmkit:{lock.parent.name}")
        self._listener: Any = None

    @classmethod
    def for_vm(cls, record: VMRecord, *, timeout: float = 10.0) -> QMP:
        """The monitor of VM ``record``, where it was started with it."""
        return cls(monitor_address(record), lock=record.files.qmp_lock, timeout=timeout)

    def __str__(self) -> str:
        if isinstance(self.address, Path):
            return str(self.address)
        return f"127.0.0.1:{self.address}"

    def _sync(self, coro: Coroutine[Any, Any, T], *, timeout: float | None, sent: Any = None) -> T:
        try:
            return self._loop.run_until_complete(asyncio.wait_for(coro, timeout))
        except ExecuteError as e:
            raise QMPError(
                f"QEMU refused {sent.get('execute') if isinstance(sent, dict) else sent}: {e.error.error.desc}",
                sent=sent,
                received=e.error,
            ) from e
        except TimeoutError as e:
            raise QMPError(f"QEMU's monitor did not answer within {timeout:g} s", sent=sent) from e
        except ConnectError as e:
            raise QMPError(f"cannot connect to QEMU's monitor at {self}: {e}", sent=sent) from e
        except (_LibQMPError, OSError, EOFError) as e:
            raise QMPError(f"QEMU's monitor failed: {e}", sent=sent) from e

    def connect(self) -> QMP:
        if isinstance(self.address, Path) and not self.address.exists():
            raise QMPError(
                f"QEMU's monitor socket {self.address} does not exist (is the VM running?)"
            )
        try:
            self._lock.acquire(timeout=self.lock_wait)
        except Timeout as e:
            raise QMPError(
                f"QEMU's monitor at {self} is busy: another vmkit command has used it "
                f"for over {self.lock_wait:g} s",
                sent="connect",
                hint="try again in a moment",
            ) from e
        try:
            where = (
                str(self.address) if isinstance(self.address, Path) else ("127.0.0.1", self.address)
            )
            self._sync(self._client.connect(where), timeout=self.timeout, sent="connect")
        except BaseException:
            self._lock.release()
            raise
        self._listener = self._client.events
        return self

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._loop.run_until_complete(asyncio.wait_for(self._client.disconnect(), 2.0))
        self._loop.close()
        if self._lock.is_locked:
            self._lock.release(force=True)

    def __enter__(self) -> QMP:
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def execute(
        self, command: str, arguments: dict[str, Any] | None = None, *, timeout: float | None = None
    ) -> Any:
        """Run a QMP command and return its ``return`` value."""
        sent = {"execute": command, "arguments": arguments or {}}
        return self._sync(
            self._client.execute(command, arguments),
            timeout=self.timeout if timeout is None else timeout,
            sent=sent,
        )

    def hmp(self, command_line: str) -> str:
        """Run a human-monitor command; its errors come back as text, so callers parse the result."""
        out = self.execute("human-monitor-command", {"command-line": command_line})
        return str(out)

    def wait_event(
        self, name: str, match: Callable[[dict[str, Any]], bool], *, timeout: float
    ) -> dict[str, Any]:
        """Wait for an event ``name`` whose data satisfies ``match``."""

        async def _wait() -> dict[str, Any]:
            async for event in self._listener:
                if event["event"] == name and match(event.get("data", {})):
                    return dict(event)
            raise QMPError(f"QEMU's monitor closed while waiting for {name}")

        return self._sync(_wait(), timeout=timeout, sent=f"wait for {name}")
