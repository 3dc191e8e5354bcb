"""Local endpoints for vmkit's agent and each VM's Docker endpoint, the same on every host OS.

One abstraction, two carriers:

* Linux and macOS: a unix socket in the VM folder (the folder is 0700; the socket is made
  0600 by binding under a umask, so no other user can connect in between);
* Windows: a named pipe ``\\\\.\\pipe\\vmkit-NAME-KIND`` (what the Windows docker CLI and
  docker-py call ``npipe:////./pipe/vmkit-NAME-KIND``), whose security descriptor lets only
  the current user connect.

A ``Listener`` accepts ``Stream``s; a client gets one from ``connect``. A ``Stream`` is a
byte stream with a half-close (``shutdown_write``), which is all the agent's request
protocol, the byte pumps and the Docker proxy need.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from pathlib import Path
from typing import Protocol

import attrs

from vmkit.errors import InvalidInput, ProviderError

__all__ = ["Address", "Listener", "Stream", "address_for", "connect", "listen"]

# sockaddr_un.sun_path holds 108 bytes on Linux, 104 on macOS (with the NUL).
_MAX_UNIX_PATH = 103


class Stream(Protocol):
    """A connected byte stream."""

    def recv(self, n: int) -> bytes:
        """Up to ``n`` bytes; ``b""`` at end of stream."""
        ...

    def sendall(self, data: bytes) -> None: ...

    def shutdown_write(self) -> None:
        """Tell the peer no more bytes come (it still may answer)."""
        ...

    def settimeout(self, timeout: float | None) -> None: ...

    def close(self) -> None: ...


class Listener(Protocol):
    """A listening endpoint."""

    def accept(self, timeout: float) -> Stream | None:
        """The next client, or ``None`` after ``timeout`` seconds without one."""
        ...

    def close(self) -> None: ...


@attrs.frozen
class Address:
    """Where a local endpoint lives: a unix socket path, or a Windows pipe name."""

    path: str
    pipe: bool = False

    @property
    def docker_host(self) -> str:
        """The ``DOCKER_HOST`` URL for this endpoint."""
        if self.pipe:
            return "npipe://" + self.path.replace("\\", "/")
        return "unix://" + self.path

    def exists(self) -> bool:
        """Whether something serves (or served) here; a pipe is checked by connecting."""
        if self.pipe:
            try:
                connect(self, timeout=1).close()
            except ProviderError:
                return False
            return True
        return os.path.exists(self.path)


def address_for(sock: Path, pipe_name: str) -> Address:
    """The endpoint at unix socket ``sock``, or on Windows at pipe ``\\\\.\\pipe\\PIPE_NAME``."""
    if sys.platform == "win32":
        return Address(f"\\\\.\\pipe\\{pipe_name}", pipe=True)
    return Address(str(sock))


def listen(address: Address) -> Listener:
    """Start listening at ``address`` (a stale socket file there is replaced)."""
    if sys.platform == "win32":
        from vmkit.host import winpipe

        return winpipe.PipeListener(address.path)
    else:
        return _UnixListener(address.path)


def connect(address: Address, *, timeout: float = 10.0) -> Stream:
    """A stream to the endpoint at ``address``; ``ProviderError`` if nothing answers."""
    if sys.platform == "win32":
        from vmkit.host import winpipe

        return winpipe.connect(address.path, timeout)
    else:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        try:
            s.connect(address.path)
        except OSError as e:
            s.close()
            raise ProviderError(f"nothing answers on {address.path}: {e.strerror or e}") from e
        s.settimeout(None)
        return SocketStream(s)


class SocketStream:
    """A connected socket as a ``Stream``."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def recv(self, n: int) -> bytes:
        return self.sock.recv(n)

    def sendall(self, data: bytes) -> None:
        self.sock.sendall(data)

    def shutdown_write(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)

    def settimeout(self, timeout: float | None) -> None:
        self.sock.settimeout(timeout)

    def close(self) -> None:
        self.sock.close()


if sys.platform != "win32":

    class _UnixListener:
        def __init__(self, path: str) -> None:
            if len(os.fsencode(path)) > _MAX_UNIX_PATH:
                raise InvalidInput(
                    f"the socket path {path} is too long for a unix socket",
                    hint="set VMKIT_HOME to a shorter folder",
                )
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            old = os.umask(0o177)  # born 0600: no window in which another user could connect
            try:
                s.bind(path)
            except OSError as e:
                s.close()
                raise ProviderError(f"cannot listen on {path}: {e.strerror or e}") from e
            finally:
                os.umask(old)
            s.listen(64)
            self.sock = s
            self.path = path

        def accept(self, timeout: float) -> Stream | None:
            self.sock.settimeout(timeout)
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                return None
            conn.settimeout(None)
            return SocketStream(conn)

        def close(self) -> None:
            self.sock.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
