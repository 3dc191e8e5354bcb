"""SSH to a guest with paramiko: one kept connection, a pinned host key, argv-only commands.

Commands reach the guest as argument lists joined with ``shlex.join``: the guest's login
shell is the only shell that ever sees them, and every argument is quoted for it.
"""

from __future__ import annotations

import base64
import logging
import select
import shlex
import threading
import time
from collections.abc import Sequence

import paramiko

from vmkit.errors import GuestCommandFailed, HostKeyMismatch, SSHError
from vmkit.host.runner import Result
from vmkit.state import SSHEndpoint

# paramiko logs connection failures itself; vmkit raises them as SSHError instead, so without
# a handler Python's last-resort handler would print them a second time, as tracebacks.
logging.getLogger("paramiko").addHandler(logging.NullHandler())
logging.getLogger("paramiko").propagate = False


class _PinnedHostKey(paramiko.MissingHostKeyPolicy):
    """Refuses every key not already in the client's host keys (they hold only the pinned one)."""

    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        raise HostKeyMismatch(f"{hostname} presented an unexpected {key.get_name()} host key")


def _pkey_from_line(line: str) -> paramiko.PKey:
    kind, blob = line.split()[:2]
    return paramiko.PKey.from_type_string(kind, base64.b64decode(blob))


class SSHSession:
    """A kept SSH connection to one guest. Thread-safe for running commands."""

    def __init__(self, endpoint: SSHEndpoint, *, connect_timeout: float = 20.0) -> None:
        self.endpoint = endpoint
        self.connect_timeout = connect_timeout
        self._client: paramiko.SSHClient | None = None
        self._lock = threading.Lock()

    # -- connection -----------------------------------------------------------------------

    def _connect(self) -> paramiko.SSHClient:
        ep = self.endpoint
        client = paramiko.SSHClient()
        host_id = ep.host if ep.port == 22 else f"[{ep.host}]:{ep.port}"
        pinned = _pkey_from_line(ep.host_key)
        client.get_host_keys().add(host_id, pinned.get_name(), pinned)
        client.set_missing_host_key_policy(_PinnedHostKey())
        try:
            client.connect(
                ep.host,
                port=ep.port,
                username=ep.user,
                key_filename=ep.key_file,
                timeout=self.connect_timeout,
                banner_timeout=self.connect_timeout,
                auth_timeout=self.connect_timeout,
                allow_agent=False,
                look_for_keys=False,
            )
        except HostKeyMismatch:
            client.close()
            raise
        except paramiko.BadHostKeyException as e:
            client.close()
            raise HostKeyMismatch(
                f"{ep.host}:{ep.port} presented a host key other than the pinned one"
            ) from e
        except paramiko.AuthenticationException as e:
            client.close()
            raise SSHError(
                f"SSH login as {ep.user} to {ep.host}:{ep.port} was refused",
                hint=f"the guest does not accept the key {ep.key_file}",
            ) from e
        except (paramiko.SSHException, OSError, EOFError) as e:
            client.close()
            raise SSHError(
                f"cannot connect to SSH at {ep.host}:{ep.port}: {e or type(e).__name__}"
            ) from e
        transport = client.get_transport()
        if transport is not None:
            transport.set_keepalive(15)
        return client

    def client(self) -> paramiko.SSHClient:
        """The live paramiko client, reconnecting if the connection dropped."""
        with self._lock:
            c = self._client
            t = c.get_transport() if c else None
            if c is None or t is None or not t.is_active():
                if c is not None:
                    c.close()
                self._client = self._connect()
            assert self._client is not None
            return self._client

    def transport(self) -> paramiko.Transport:
        t = self.client().get_transport()
        if t is None:
            raise SSHError("SSH connection closed")
        return t

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def __enter__(self) -> SSHSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- commands -------------------------------------------------------------------------

    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float = 120.0,
        input: bytes | str | None = None,
        sudo: bool = False,
        hint: str | None = None,
    ) -> Result:
        """Run ``argv`` in the guest and return its ``Result``; ``GuestCommandFailed`` if non-zero."""
        if isinstance(argv, (str, bytes)):
            raise TypeError("SSHSession.run takes an argument list, never a command string")
        args = list(argv)
        if sudo:
            args = ["sudo", "-n", "--", *args]
        started = time.monotonic()
        try:
            chan = self.transport().open_session(timeout=self.connect_timeout)
            chan.settimeout(timeout)
            chan.exec_command(shlex.join(args))
            if input is not None:
                chan.sendall(input.encode() if isinstance(input, str) else input)
            chan.shutdown_write()
            out, err = _drain(chan, timeout)
            code = chan.recv_exit_status()
            chan.close()
        except TimeoutError as e:
            raise SSHError(
                f"`{shlex.join(args)[:100]}` did not finish within {timeout:g} s in the guest"
            ) from e
        except (paramiko.SSHException, OSError, EOFError) as e:
            raise SSHError(f"SSH failed while running `{shlex.join(args)[:100]}`: {e}") from e
        result = Result(
            args,
            code,
            out.decode(errors="replace"),
            err.decode(errors="replace"),
            time.monotonic() - started,
        )
        if check and code != 0:
            raise GuestCommandFailed(args, code, result.stdout, result.stderr, hint=hint)
        return result

    def open_channel(self, argv: Sequence[str]) -> paramiko.Channel:
        """Start ``argv`` in the guest and hand back its channel, for streaming callers."""
        chan = self.transport().open_session(timeout=self.connect_timeout)
        chan.exec_command(shlex.join(list(argv)))
        return chan


def _drain(chan: paramiko.Channel, timeout: float) -> tuple[bytes, bytes]:
    """Read stdout and stderr until both close, without deadlocking on a full stderr window.

    Waits on the channel's event descriptor (readable when either stream has data or the
    channel closes), so a reply is read the moment it arrives.
    """
    out = bytearray()
    err = bytearray()
    deadline = time.monotonic() + timeout
    while True:
        progressed = False
        if chan.recv_ready():
            out += chan.recv(65536)
            progressed = True
        if chan.recv_stderr_ready():
            err += chan.recv_stderr(65536)
            progressed = True
        if chan.exit_status_ready() and not chan.recv_ready() and not chan.recv_stderr_ready():
            # Data can still be in flight after the exit status; read until EOF.
            while True:
                chunk = chan.recv(65536)
                if not chunk:
                    break
                out += chunk
            while chan.recv_stderr_ready():
                err += chan.recv_stderr(65536)
            return bytes(out), bytes(err)
        if not progressed:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError()
            # Short cap: an exit status alone does not make the descriptor readable.
            select.select([chan], [], [], min(remaining, 0.05))
