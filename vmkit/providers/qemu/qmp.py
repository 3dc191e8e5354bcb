"""A synchronous facade over ``qemu.qmp``'s asyncio client that leaks no asyncio errors.

Each ``QMP`` owns a private event loop; every failure (connect, timeout, a command QEMU
refused, the socket closing) comes out as ``vmkit.errors.QMPError`` with what was sent and
what came back.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from qemu.qmp import ConnectError, ExecuteError, QMPClient
from qemu.qmp.error import QMPError as _LibQMPError

from vmkit.errors import QMPError

T = TypeVar("T")


class QMP:
    """A connection to one QEMU monitor socket. Use as a context manager."""

    def __init__(self, socket: Path, *, timeout: float = 10.0) -> None:
        self.socket = socket
        self.timeout = timeout
        self._loop = asyncio.new_event_loop()
        self._client = QMPClient(f"vmkit:{socket.parent.name}")
        self._listener: Any = None

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
            raise QMPError(
                f"cannot connect to QEMU's monitor at {self.socket}: {e}", sent=sent
            ) from e
        except (_LibQMPError, OSError, EOFError) as e:
            raise QMPError(f"QEMU's monitor failed: {e}", sent=sent) from e

    def connect(self) -> QMP:
        if not self.socket.exists():
            raise QMPError(
                f"QEMU's monitor socket {self.socket} does not exist (is the VM running?)"
            )
        self._sync(self._client.connect(str(self.socket)), timeout=self.timeout, sent="connect")
        self._listener = self._client.events
        return self

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._loop.run_until_complete(asyncio.wait_for(self._client.disconnect(), 2.0))
        self._loop.close()

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
