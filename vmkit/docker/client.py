"""Docker in the VM, reached over the VM's one kept SSH connection.

Two ways in, both riding ``vm.ssh().transport()`` (the VM's own key, the pinned host key,
nothing read from or written to ``~/.ssh``):

* :func:`docker_client` gives a docker-py ``DockerClient`` whose HTTP connections are SSH
  channels: a ``direct-streamlocal@openssh.com`` channel to ``/run/docker.sock`` when the
  guest's sshd allows it (a channel open costs one round trip), else ``docker system
  dial-stdio`` run in the guest (what the docker CLI does over ``ssh://``; it starts a guest
  process per connection). HTTP keep-alive reuses channels, so most calls open nothing.
* :func:`ensure_socket` starts a small helper process (``python -m vmkit.docker.client serve``)
  that listens on ``docker.sock`` in the VM's folder and carries each connection the same way.
  The host's docker CLI, ``vmkit env`` and docker contexts point ``DOCKER_HOST`` at it: the
  docker CLI's own ``ssh://`` transport starts an ``ssh`` process per connection and cannot be
  told which key and known_hosts to use without touching ``~/.ssh``.
"""

from __future__ import annotations

import contextlib
import os
import queue
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import paramiko
import requests.adapters
import urllib3
import urllib3.connection
import urllib3.connectionpool

from vmkit import state
from vmkit.errors import DockerError, InvalidInput, SSHError, VmkitError
from vmkit.guest.ssh import SSHSession
from vmkit.home import InstanceFiles
from vmkit.host import procs, runner
from vmkit.host.netutil import check_port_number
from vmkit.progress import Progress, no_progress

if TYPE_CHECKING:
    import docker

    from vmkit.vm import VM

__all__ = [
    "GUEST_SOCKET",
    "ChannelOpener",
    "RunSetup",
    "docker_client",
    "docker_host_url",
    "ensure_socket",
    "open_docker_channel",
    "parse_forward",
    "prepare_run",
    "run",
]

GUEST_SOCKET = "/run/docker.sock"
# Docker 20.10 (Debian 12) speaks API 1.41; naming it skips a version round trip per client.
API_VERSION = "1.41"
# docker-py's APIClient treats a base URL starting with this as "sockets are paramiko channels".
_BASE_URL = "http+docker://ssh"

ChannelOpener = Callable[[], paramiko.Channel]


# -- one channel to dockerd ---------------------------------------------------------------


def _open_streamlocal(transport: paramiko.Transport, path: str, timeout: float) -> paramiko.Channel:
    """Open a ``direct-streamlocal@openssh.com`` channel (OpenSSH's ``ssh -L local:/remote.sock``).

    paramiko's ``open_channel`` only knows the extra fields of tcpip and x11 channels, so this
    repeats its few steps with the streamlocal fields: socket path, reserved string, reserved int.
    """
    from paramiko.channel import Channel
    from paramiko.common import cMSG_CHANNEL_OPEN
    from paramiko.message import Message

    t: Any = transport  # paramiko internals, stable from 2.x to 5.x
    if not t.is_active():
        raise paramiko.SSHException("SSH session not active")
    with t.lock:
        window = t._sanitize_window_size(None)
        packet = t._sanitize_packet_size(None)
        chanid = t._next_channel()
        m = Message()
        m.add_byte(cMSG_CHANNEL_OPEN)
        m.add_string("direct-streamlocal@openssh.com")
        m.add_int(chanid)
        m.add_int(window)
        m.add_int(packet)
        m.add_string(path)
        m.add_string("")
        m.add_int(0)
        c: Any = Channel(chanid)
        t._channels.put(chanid, c)
        t.channel_events[chanid] = event = threading.Event()
        t.channels_seen[chanid] = True
        c._set_transport(transport)
        c._set_window(window, packet)
    t._send_user_message(m)
    if not event.wait(timeout):
        raise paramiko.SSHException("timeout opening a streamlocal channel")
    opened = t._channels.get(chanid)
    if opened is None:
        raise t.get_exception() or paramiko.ChannelException(1, "channel refused")
    assert isinstance(opened, paramiko.Channel)
    return opened


class _Dialer:
    """Opens channels to dockerd on one SSH session, remembering whether streamlocal works."""

    def __init__(self, ssh: SSHSession, *, timeout: float = 20.0) -> None:
        self.ssh = ssh
        self.timeout = timeout
        self.streamlocal: bool | None = None  # unknown until the first try

    def __call__(self) -> paramiko.Channel:
        try:
            transport = self.ssh.transport()
            if self.streamlocal is not False:
                try:
                    chan = _open_streamlocal(transport, GUEST_SOCKET, self.timeout)
                    self.streamlocal = True
                    return chan
                except paramiko.ChannelException:
                    # sshd says no (AllowStreamLocalForwarding no, or no access to the socket).
                    if self.streamlocal:
                        raise
                    self.streamlocal = False
            chan = transport.open_session(timeout=self.timeout)
            chan.exec_command("docker system dial-stdio")
            return chan
        except (paramiko.SSHException, OSError, EOFError) as e:
            raise SSHError(
                f"cannot open a channel to the guest's dockerd: {e or type(e).__name__}",
                hint="is docker.service running in the guest? `vmkit ssh NAME -- systemctl status docker`",
            ) from e


def open_docker_channel(vm: VM) -> paramiko.Channel:
    """One raw byte stream to the guest's dockerd (HTTP is up to the caller)."""
    return _dialer_for(vm)()


# -- docker-py over channels --------------------------------------------------------------


class _ChannelConnection(urllib3.connection.HTTPConnection):
    """An HTTP connection whose socket is a paramiko channel."""

    def __init__(self, opener: ChannelOpener, timeout: float | None) -> None:
        super().__init__("localhost", timeout=timeout)
        self._opener = opener
        self._channel_timeout = timeout

    def connect(self) -> None:
        chan = self._opener()
        chan.settimeout(self._channel_timeout)
        self.sock = chan


class _ChannelPool(urllib3.connectionpool.HTTPConnectionPool):
    def __init__(self, opener: ChannelOpener, timeout: float | None, maxsize: int) -> None:
        super().__init__("localhost", timeout=timeout, maxsize=maxsize)
        self._opener = opener
        self._channel_timeout = timeout

    def _new_conn(self) -> urllib3.connection.HTTPConnection:
        return _ChannelConnection(self._opener, self._channel_timeout)

    def _get_conn(self, timeout: float | None = None) -> urllib3.connection.HTTPConnection:
        # urllib3's own staleness check polls ``fileno()``, which costs a pipe per channel;
        # a channel knows itself whether the guest closed it.
        while True:
            try:
                if self.pool is None:
                    raise urllib3.exceptions.ClosedPoolError(self, "Pool is closed.")
                conn = self.pool.get(block=False)
            except queue.Empty:
                return self._new_conn()
            if conn is None:
                return self._new_conn()
            assert isinstance(conn, urllib3.connection.HTTPConnection)
            chan = conn.sock
            if chan is None or not (
                isinstance(chan, paramiko.Channel) and (chan.closed or chan.eof_received)
            ):
                return conn
            conn.close()


class ChannelAdapter(requests.adapters.HTTPAdapter):
    """A requests transport adapter: every HTTP connection is a channel from ``opener``."""

    def __init__(self, opener: ChannelOpener, *, timeout: float | None = 60, maxsize: int = 10):
        self._pool = _ChannelPool(opener, timeout, maxsize)
        super().__init__()

    def get_connection(
        self, url: str | bytes, proxies: Any = None
    ) -> urllib3.connectionpool.HTTPConnectionPool:
        return self._pool

    def get_connection_with_tls_context(
        self, request: Any, verify: Any, proxies: Any = None, cert: Any = None
    ) -> urllib3.connectionpool.HTTPConnectionPool:
        return self._pool

    def close(self) -> None:
        self._pool.close()
        super().close()


_lock = threading.Lock()
_dialers: dict[tuple[str, str], _Dialer] = {}


def _dialer_for(vm: VM) -> _Dialer:
    ssh = vm.ssh()
    key = (str(vm.record.files.dir), repr(ssh.endpoint))
    with _lock:
        d = _dialers.get(key)
        if d is None or d.ssh is not ssh:
            d = _dialers[key] = _Dialer(ssh)
        return d


def docker_client(vm: VM, *, timeout: float = 120) -> docker.DockerClient:
    """A docker-py ``DockerClient`` for the VM's dockerd, over the VM's kept SSH connection.

    Every HTTP connection of the client is an SSH channel on ``vm.ssh()``; no ``ssh`` process,
    no ``~/.ssh`` file, and the guest's host key must match the one pinned for the VM.
    """
    import docker

    api = docker.APIClient(base_url="tcp://127.0.0.1:1", version=API_VERSION, timeout=timeout)
    adapter = ChannelAdapter(_dialer_for(vm), timeout=timeout)
    api.mount(_BASE_URL, adapter)
    api._custom_adapter = adapter
    api.base_url = _BASE_URL
    client = docker.DockerClient.__new__(docker.DockerClient)
    client.api = api
    return client


@contextlib.contextmanager
def session(vm: VM, what: str) -> Iterator[docker.DockerClient]:
    """A client for a few calls: closed after, docker-py's errors translated (``what`` failed)."""
    client = vm.docker()
    try:
        yield client
    except VmkitError:
        raise
    except Exception as e:
        raise translate(e, what) from e
    finally:
        client.close()


def require_image(client: docker.DockerClient, vm: VM, image: str, *, hint: str) -> dict[str, Any]:
    """``image``'s inspect data, or ``DockerError`` naming the VM if it is not in its Docker."""
    import docker.errors

    try:
        return dict(client.api.inspect_image(image))
    except docker.errors.ImageNotFound:
        raise DockerError(f"image {image!r} is not in VM {vm.name!r}", hint=hint) from None


def translate(e: Exception, what: str) -> VmkitError:
    """A ``VmkitError`` for a docker-py exception (``DockerError`` with the daemon's words)."""
    import docker.errors

    if isinstance(e, VmkitError):
        return e
    if isinstance(e, docker.errors.APIError):
        detail = e.explanation or str(e)
        if isinstance(detail, bytes):
            detail = detail.decode(errors="replace")
        return DockerError(f"{what}: {detail}")
    if isinstance(e, requests.exceptions.ConnectionError):
        return DockerError(
            f"{what}: the connection to the VM's dockerd broke ({e})",
            hint="check that the VM runs: `vmkit status`",
        )
    return DockerError(f"{what}: {e}")


# -- a host socket for the docker CLI -----------------------------------------------------


def docker_host_url(vm: VM) -> str:
    """The ``DOCKER_HOST`` value for the VM (its helper socket must be running)."""
    return "unix://" + str(vm.record.files.docker_sock)


def _answers(path: Path) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(2)
    try:
        s.connect(str(path))
    except OSError:
        return False
    finally:
        s.close()
    return True


def ensure_socket(vm: VM, *, timeout: float = 15) -> Path:
    """Start (if not running) the helper that serves the VM's dockerd on a host unix socket."""
    if not hasattr(socket, "AF_UNIX"):
        raise DockerError(
            "this Python has no unix sockets, so vmkit cannot serve dockerd to the docker CLI",
            hint="use the Python API (`vm.docker()`) or `vmkit ssh NAME -- docker ...`",
        )
    vm.require_running()
    files = vm.record.files
    path = files.docker_sock
    if len(os.fsencode(path)) > 100:
        raise DockerError(
            f"the socket path {path} is too long for a unix socket",
            hint="set VMKIT_HOME to a shorter folder",
        )
    pid = procs.read_pid(files.docker_sock_pid)
    if procs.alive(pid, str(files.dir)) and _answers(path):
        return path
    if pid is not None:
        procs.terminate(pid, str(files.dir))
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    log = files.docker_sock_log
    proc = runner.spawn(
        [sys.executable, "-m", "vmkit.docker.client", "serve", str(files.dir)], log=log
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        if _answers(path):
            return path
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    tail = log.read_text(errors="replace").strip().splitlines()[-3:] if log.exists() else []
    raise DockerError(
        "the docker socket helper did not start" + (": " + " / ".join(tail) if tail else ""),
        hint=f"see {log}",
    )


def _pump(src_recv: Callable[[int], bytes], dst_send: Callable[[bytes], None]) -> None:
    with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
        while True:
            data = src_recv(65536)
            if not data:
                break
            dst_send(data)


def _serve_one(conn: socket.socket, dial: Callable[[], _Dialer]) -> None:
    try:
        chan = dial()()
    except VmkitError as e:
        print(f"cannot reach dockerd: {e}", file=sys.stderr, flush=True)
        conn.close()
        return

    def up() -> None:
        _pump(conn.recv, chan.sendall)
        with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
            chan.shutdown_write()

    t = threading.Thread(target=up, daemon=True)
    t.start()
    _pump(chan.recv, conn.sendall)
    with contextlib.suppress(OSError):
        conn.shutdown(socket.SHUT_WR)
    t.join()
    conn.close()
    chan.close()


def serve(folder: Path) -> None:
    """The helper process: accept on ``docker.sock``, carry each connection over one SSH session."""
    files = InstanceFiles(folder)
    current: list[_Dialer] = []
    lock = threading.Lock()

    def dialer() -> _Dialer:
        # Re-read the record per connection: a restarted VM has a new SSH port.
        ep = state.load(files.name).ssh
        if ep is None:
            raise SSHError(f"VM {files.name!r} has no SSH endpoint")
        with lock:
            if not current or current[0].ssh.endpoint != ep:
                if current:
                    current[0].ssh.close()
                current[:] = [_Dialer(SSHSession(ep))]
            return current[0]

    dialer().ssh.transport()  # fail now, visibly, rather than on the first client
    path = files.docker_sock
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)  # the socket is root in the guest: owner only
    try:
        listener.bind(str(path))
    finally:
        os.umask(old)
    listener.listen(64)
    state.atomic_write(files.docker_sock_pid, f"{os.getpid()}\n")
    print(f"serving {path} (pid {os.getpid()})", file=sys.stderr, flush=True)
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=_serve_one, args=(conn, dialer), daemon=True).start()


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "serve":
        serve(Path(sys.argv[2]))
    else:
        sys.exit("usage: python -m vmkit.docker.client serve VM_FOLDER")


# -- running an image with shares and forwards --------------------------------------------


@attrs.frozen
class RunSetup:
    """What ``prepare_run`` put in place: guest paths to mount and ports to publish."""

    image: str
    volumes: list[str]  # guest paths, mounted at the same path in the container
    ports: list[tuple[int, int]]  # (host port, guest port = container port)

    def docker_args(self) -> list[str]:
        """``docker run`` options for the volumes and ports."""
        args: list[str] = []
        for v in self.volumes:
            args += ["-v", f"{v}:{v}"]
        for _, guest in self.ports:
            args += ["-p", f"{guest}:{guest}"]
        return args

    def urls(self) -> list[str]:
        return [f"http://127.0.0.1:{host}/" for host, _ in self.ports]


def parse_forward(text: str) -> tuple[int, int]:
    """``"8888"`` → (8888, 8888); ``"8888:80"`` → (8888, 80): host port, guest/container port."""
    host, _, guest = text.partition(":")
    try:
        h = int(host)
        g = int(guest) if guest else h
    except ValueError:
        raise InvalidInput(
            f"--forward {text!r} is not PORT or HOSTPORT:GUESTPORT", hint="e.g. --forward 8888"
        ) from None
    return check_port_number(h, "host port"), check_port_number(g, "guest port")


def prepare_run(
    vm: VM,
    image: str,
    *,
    shares: Sequence[str | os.PathLike[str]] = (),
    forwards: Sequence[tuple[int, int]] = (),
    progress: Progress = no_progress,
) -> RunSetup:
    """Start the VM if needed, check the image and ports, then share and forward live.

    ``DockerError`` if the image is not in the VM or a guest port is already published by a
    container; the checks come before anything is shared or forwarded.
    """

    if not vm.is_running():
        vm.start(progress=progress)
    with session(vm, f"checking {image} in VM {vm.name!r}") as client:
        require_image(
            client,
            vm,
            image,
            hint="load it with `vmkit image load FILE.tar`; `vmkit docker -- images` lists them",
        )
        for _, guest in forwards:
            for c in client.api.containers(filters={"publish": str(guest)}):
                name = (c.get("Names") or [c["Id"][:12]])[0].lstrip("/")
                raise DockerError(
                    f"port {guest} in VM {vm.name!r} is already published by container {name}",
                    hint=f"stop it (`vmkit docker -- stop {name}`) or pick another port",
                )
    volumes = [vm.share(path, progress=progress).target for path in shares]
    for host, guest in forwards:
        vm.forward(host, guest)
    return RunSetup(image, volumes, list(forwards))


def run(
    vm: VM,
    image: str,
    command: Sequence[str] | None = None,
    *,
    shares: Sequence[str | os.PathLike[str]] = (),
    forwards: Sequence[tuple[int, int]] = (),
    name: str | None = None,
) -> Any:
    """Run ``image`` detached with folders shared and ports forwarded; the docker-py container."""
    setup = prepare_run(vm, image, shares=shares, forwards=forwards)
    client = vm.docker()
    try:
        return client.containers.run(
            image,
            list(command) if command else None,
            detach=True,
            name=name,
            volumes={v: {"bind": v, "mode": "rw"} for v in setup.volumes},
            ports={f"{g}/tcp": g for _, g in setup.ports},
        )
    except Exception as e:
        raise translate(e, f"running {image} in VM {vm.name!r}") from e
