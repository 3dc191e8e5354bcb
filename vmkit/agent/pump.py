"""The agent's sessions: a reverse-sshfs share (answered by sftpjail) and an SSH-tunnel listener.

Each direction of a connection is pumped on its own and its EOF passed on separately,
because programs like busybox nc half-close and still expect the answer.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable

import attrs
import paramiko

from vmkit.errors import NotSupported, PortInUse, ProviderError, SSHError, VmkitError
from vmkit.guest.ssh import SSHSession
from vmkit.host.transport import SocketStream, Stream
from vmkit.mechanisms.base import guest_mountpoints, prepare_mountpoint, unmount
from vmkit.state import ForwardSpec, ShareSpec


class SSHFSSession:
    """One share: ``sshfs -o passive`` in the guest, answered over its SSH channel by an SFTP
    server confined to the share (vmkit/agent/sftpjail.py)."""

    def __init__(self, ssh: SSHSession, spec: ShareSpec) -> None:
        self.ssh = ssh
        self.spec = attrs.evolve(spec, mechanism="sshfs", tag=spec.tag or "sshfs")
        self._chan: paramiko.Channel | None = None
        self._server: threading.Thread | None = None

    def start(self, timeout: float = 15.0) -> None:
        if self.spec.target in guest_mountpoints(self.ssh):
            raise ProviderError(
                f"{self.spec.target} is already a mount point in the guest",
                hint="unmount it in the guest, or share at another --to path",
            )
        prepare_mountpoint(self.ssh, self.spec.target)
        opts = ["-o", "passive", "-o", "allow_other", "-o", "reconnect"]
        if self.spec.readonly:
            opts += ["-o", "ro"]
        from vmkit.agent import sftpjail

        source = ":" + sftpjail.sftp_path(self.spec.source)
        argv = ["sudo", "-n", "sshfs", "-f", *opts, source, self.spec.target]
        # The channel's stdin/stdout carry SFTP; sshfs's stderr stays on the channel.
        self._chan = chan = self.ssh.open_channel(argv)
        self._server = sftpjail.serve(chan, self.spec.source, readonly=self.spec.readonly)
        deadline = time.monotonic() + timeout
        while guest_mountpoints(self.ssh).get(self.spec.target) != "fuse.sshfs":
            if chan.exit_status_ready() or time.monotonic() > deadline:
                err = b""
                while chan.recv_stderr_ready():
                    err += chan.recv_stderr(65536)
                self.stop()
                msg = err.decode(errors="replace").strip() or "no mount appeared"
                if "sshfs: command not found" in msg or "sshfs: not found" in msg:
                    raise NotSupported("the guest has no sshfs", hint="install sshfs in the guest")
                raise ProviderError(f"sshfs in the guest could not mount {self.spec.target}: {msg}")
            time.sleep(0.05)

    def alive(self) -> bool:
        return self._chan is not None and not self._chan.exit_status_ready()

    def unmount(self) -> None:
        unmount(self.ssh, self.spec.target)

    def stop(self) -> None:
        with contextlib.suppress(VmkitError):
            self.unmount()
        if self._chan is not None:
            self._chan.close()
        if self._server is not None:
            self._server.join(5)


def pump(
    recv: Callable[[int], bytes], send: Callable[[bytes], None], eof: Callable[[], None]
) -> None:
    """Copy one direction of a connection until its end, then pass the EOF on with ``eof``.

    The one byte pump of the agent: sshfs sessions, SSH tunnels and the Docker endpoint all
    carry each direction with it. Errors of either side end the copy as an EOF would.
    """
    with contextlib.suppress(OSError, EOFError, ValueError, paramiko.SSHException):
        while True:
            data = recv(65536)
            if not data:
                break
            send(data)
    with contextlib.suppress(OSError, EOFError, ValueError, paramiko.SSHException):
        eof()


def pump_both(
    a: Stream | paramiko.Channel,
    b: Stream | paramiko.Channel,
    first: bytes = b"",
    back: bytes = b"",
) -> None:
    """Carry ``a`` ↔ ``b`` until both directions ended, then close both.

    ``first`` is sent to ``b`` and ``back`` to ``a`` before anything else (bytes a parser read
    ahead). Returns when both sides have finished.
    """

    def a_to_b() -> None:
        if first:
            with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
                b.sendall(first)
        pump(a.recv, b.sendall, b.shutdown_write)

    t = threading.Thread(target=a_to_b, daemon=True)
    t.start()
    if back:
        with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
            a.sendall(back)
    pump(b.recv, a.sendall, a.shutdown_write)
    t.join()
    for s in (a, b):
        with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
            s.close()


class Tunnel:
    """A listening socket on the host; each connection becomes a direct-tcpip channel to the guest."""

    def __init__(self, ssh: Callable[[], SSHSession], spec: ForwardSpec) -> None:
        if spec.proto != "tcp":
            raise NotSupported(
                "SSH tunnels carry TCP only",
                hint="UDP forwards need the hostfwd or natpf mechanism",
            )
        self.ssh = ssh
        self.spec = attrs.evolve(spec, mechanism="ssh-tunnel")
        self._sock: socket.socket | None = None
        self._stop = threading.Event()
        self._accepting: threading.Thread | None = None

    def start(self) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((self.spec.host_ip, self.spec.host_port))
        except OSError as e:
            s.close()
            raise PortInUse(
                f"host port {self.spec.host_port} on {self.spec.host_ip} is already in use"
            ) from e
        s.listen(64)
        s.settimeout(0.5)
        self._sock = s
        self._accepting = threading.Thread(target=self._accept_loop, daemon=True)
        self._accepting.start()

    def alive(self) -> bool:
        return self._sock is not None and not self._stop.is_set()

    def stop(self) -> None:
        """Stop listening; the port is free when this returns."""
        self._stop.set()
        if self._sock is not None:
            self._sock.close()
        # The accept loop's pending poll holds the listening socket until it returns (≤ 0.5 s):
        # a forward added again on the same port right after would find it taken.
        if self._accepting is not None and self._accepting is not threading.current_thread():
            self._accepting.join(timeout=2)

    def _accept_loop(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                conn, peer = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn, peer), daemon=True).start()

    def _serve(self, conn: socket.socket, peer: tuple[str, int]) -> None:
        try:
            chan = (
                self.ssh()
                .transport()
                .open_channel("direct-tcpip", ("127.0.0.1", self.spec.guest_port), peer, timeout=15)
            )
        except (SSHError, paramiko.SSHException, OSError, EOFError):
            conn.close()
            return

        pump_both(SocketStream(conn), chan)
