"""Host-side port helpers: finding a free port and checking one before promising it."""

from __future__ import annotations

import contextlib
import socket

from vmkit.errors import InvalidInput, PortInUse


def check_port_number(port: int, what: str = "port") -> int:
    """``port`` if it is 1-65535, else ``InvalidInput``."""
    if not 1 <= port <= 65535:
        raise InvalidInput(f"{what} {port} is not a valid port number", hint="use 1-65535")
    return port


def port_is_free(port: int, host: str = "127.0.0.1", proto: str = "tcp") -> bool:
    """True if nothing on this host holds ``host:port`` (binding it is the only honest check)."""
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as s:
        # SO_REUSEADDR so a port in TIME_WAIT (free for a new listener) counts as free.
        if kind == socket.SOCK_STREAM:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def require_free(port: int, host: str = "127.0.0.1", proto: str = "tcp") -> None:
    """``PortInUse`` naming the port if something already holds it."""
    if not port_is_free(port, host, proto):
        raise PortInUse(f"host port {port}/{proto} on {host} is already in use")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def read_banner(host: str, port: int, timeout: float = 2.0) -> str | None:
    """The first line a TCP server sends (an SSH banner), or None if there is none yet."""
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout) as s:
        s.settimeout(timeout)
        data = s.recv(256)
        if data:
            return data.split(b"\n", 1)[0].decode(errors="replace").strip()
    return None
