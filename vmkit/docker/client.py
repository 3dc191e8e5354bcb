"""Docker in the VM, reached over the VM's one kept SSH connection.

Two ways in, both riding ``vm.ssh().transport()`` (the VM's own key, the pinned host key,
nothing read from or written to ``~/.ssh``):

* :func:`docker_client` gives a docker-py ``DockerClient`` whose HTTP connections are SSH
  channels: a ``direct-streamlocal@openssh.com`` channel to ``/run/docker.sock`` when the
  guest's sshd allows it (a channel open costs one round trip), else ``docker system
  dial-stdio`` run in the guest (what the docker CLI does over ``ssh://``; it starts a guest
  process per connection). HTTP keep-alive reuses channels, so most calls open nothing.
* :func:`ensure_socket` asks the VM's agent for its Docker endpoint (``docker.sock`` in the
  VM's folder, a named pipe on Windows): a Docker API proxy that carries each connection the
  same way and shares bind mounts and forwards published ports on the fly. The host's docker
  CLI, ``vmkit env`` and docker contexts point ``DOCKER_HOST`` at it: the docker CLI's own
  ``ssh://`` transport starts an ``ssh`` process per connection and cannot be told which key
  and known_hosts to use without touching ``~/.ssh``.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import attrs
import paramiko
import requests.adapters
import urllib3
import urllib3.connection
import urllib3.connectionpool

from vmkit.agent.client import request
from vmkit.errors import DockerError, InvalidInput, SSHError, VmkitError
from vmkit.guest.ssh import SSHSession
from vmkit.host.netutil import check_port_number
from vmkit.host.transport import Address
from vmkit.progress import Progress, no_progress

if TYPE_CHECKING:
    import docker

    from vmkit.vm import VM

__all__ = [
    "GUEST_SOCKET",
    "ChannelOpener",
    "Dialer",
    "RunSetup",
    "api_client",
    "docker_client",
    "docker_host_url",
    "endpoint_client",
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


class Dialer:
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
_dialers: dict[tuple[str, str], Dialer] = {}


def _dialer_for(vm: VM) -> Dialer:
    ssh = vm.ssh()
    key = (str(vm.record.files.dir), repr(ssh.endpoint))
    with _lock:
        d = _dialers.get(key)
        if d is None or d.ssh is not ssh:
            d = _dialers[key] = Dialer(ssh)
        return d


def docker_client(vm: VM, *, timeout: float = 120) -> docker.DockerClient:
    """A docker-py ``DockerClient`` for the VM's dockerd, over the VM's kept SSH connection.

    Every HTTP connection of the client is an SSH channel on ``vm.ssh()``; no ``ssh`` process,
    no ``~/.ssh`` file, and the guest's host key must match the one pinned for the VM.
    """
    import docker

    vm.require_running()
    client = docker.DockerClient.__new__(docker.DockerClient)
    client.api = api_client(_dialer_for(vm), timeout=timeout)
    return client


def api_client(opener: ChannelOpener, *, timeout: float | None = 120) -> docker.APIClient:
    """A docker-py ``APIClient`` whose every HTTP connection is a channel from ``opener``."""
    import docker

    api = docker.APIClient(base_url="tcp://127.0.0.1:1", version=API_VERSION, timeout=timeout)
    adapter = ChannelAdapter(opener, timeout=timeout)
    api.mount(_BASE_URL, adapter)
    api._custom_adapter = adapter
    api.base_url = _BASE_URL
    return api


@contextlib.contextmanager
def session(vm: VM, what: str) -> Iterator[docker.DockerClient]:
    """A client for a few calls: closed after, docker-py's errors translated (``what`` failed)."""
    client = docker_client(vm)
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


# -- the Docker endpoint for the docker CLI ----------------------------------------------


def ensure_socket(vm: VM) -> Address:
    """Start (if not running) the VM's Docker endpoint in its agent; return its address.

    The endpoint is a Docker API proxy (vmkit/docker/proxy.py) on the agent's one SSH
    connection: bind mounts are shared and published ports forwarded as containers come and
    go (vmkit/docker/auto.py).
    """
    vm.require_running()
    files = vm.record.files
    found = request(files, "docker-endpoint")
    return Address(str(found["path"]), pipe=bool(found["pipe"]))


def endpoint_client(vm: VM, *, timeout: float = 120) -> docker.DockerClient:
    """A docker-py client for the VM's Docker endpoint (started if needed)."""
    import docker

    address = ensure_socket(vm)
    return docker.DockerClient(base_url=address.docker_host, version=API_VERSION, timeout=timeout)


def docker_host_url(vm: VM) -> str:
    """The ``DOCKER_HOST`` value for the VM (``unix://...`` or ``npipe:////./pipe/...``)."""
    return vm.record.files.docker_endpoint().docker_host


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
    client = docker_client(vm)
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
