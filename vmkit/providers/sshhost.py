"""Any machine reachable by SSH, adopted with ``vmkit attach ssh://user@host[:port]``.

vmkit cannot boot or power off such a machine; it can share folders (reverse sshfs) and
forward ports (SSH tunnels) to it, live, through the VM's agent.
"""

from __future__ import annotations

import base64
import hashlib
import socket
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar
from urllib.parse import unquote, urlsplit

import attrs
import paramiko

from vmkit.errors import HostKeyMismatch, HostKeyUnknown, InvalidInput, NotSupported, SSHError
from vmkit.host.netutil import read_banner
from vmkit.progress import Progress
from vmkit.providers.base import Capabilities, Status, VMState
from vmkit.state import SSHEndpoint

if TYPE_CHECKING:
    from vmkit.guest.ssh import SSHSession
    from vmkit.mechanisms.base import ForwardMechanism, ShareMechanism
    from vmkit.state import VMRecord


@attrs.frozen
class SSHTarget:
    user: str
    host: str
    port: int


def parse_url(url: str) -> SSHTarget:
    """``ssh://user@host[:port]`` → its parts; ``InvalidInput`` saying what is missing."""
    parts = urlsplit(url)
    if parts.scheme != "ssh" or not parts.hostname:
        raise InvalidInput(f"{url!r} is not an ssh://user@host[:port] address")
    if not parts.username:
        raise InvalidInput(f"{url!r} names no user", hint="write ssh://USER@HOST")
    try:
        port = parts.port or 22
    except ValueError:
        raise InvalidInput(f"{url!r} has an invalid port") from None
    return SSHTarget(unquote(parts.username), parts.hostname, port)


def fingerprint(key_line: str) -> str:
    """OpenSSH's ``SHA256:...`` fingerprint of a ``type base64`` key."""
    blob = base64.b64decode(key_line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def fetch_host_key(host: str, port: int, *, timeout: float = 15.0) -> str:
    """The ed25519 (else first) host key the server offers, as ``type base64``."""
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as e:
        raise SSHError(f"cannot reach {host}:{port}: {e}") from e
    transport = paramiko.Transport(sock)
    try:
        opts = transport.get_security_options()
        opts.key_types = ["ssh-ed25519", *[k for k in opts.key_types if k != "ssh-ed25519"]]
        transport.start_client(timeout=timeout)
        key = transport.get_remote_server_key()
        return f"{key.get_name()} {key.get_base64()}"
    except (paramiko.SSHException, EOFError, OSError) as e:
        raise SSHError(f"no SSH server answered at {host}:{port}: {e}") from e
    finally:
        transport.close()


def known_host_key(host: str, port: int, known_hosts: Path) -> str | None:
    """The key for ``host:port`` in an OpenSSH known_hosts file, if it lists one."""
    if not known_hosts.is_file():
        return None
    keys = paramiko.HostKeys()
    try:
        keys.load(str(known_hosts))
    except (OSError, paramiko.SSHException):
        return None
    entry = keys.lookup(host if port == 22 else f"[{host}]:{port}")
    if not entry:
        return None
    name = "ssh-ed25519" if "ssh-ed25519" in entry else next(iter(entry.keys()))
    key = entry[name]
    return f"{key.get_name()} {key.get_base64()}"


def endpoint_for(
    url: str,
    key_file: Path,
    *,
    expected_fingerprint: str | None = None,
    known_hosts: Path | None = None,
    trust_new_host_key: bool = False,
) -> SSHEndpoint:
    """The pinned endpoint of an SSH machine.

    The host key comes from ``known_hosts`` (default ``~/.ssh/known_hosts``) when it lists the
    host; else it is read from the server and must match ``expected_fingerprint``, or be
    trusted as offered because ``trust_new_host_key`` says so; with neither, ``HostKeyUnknown``
    names the offered key's fingerprint for the user to check.
    """
    t = parse_url(url)
    if not key_file.is_file():
        raise InvalidInput(
            f"key file {key_file} does not exist", hint="pass --key PATH to a private key"
        )
    known = known_hosts or Path.home() / ".ssh" / "known_hosts"
    pinned = known_host_key(t.host, t.port, known)
    offered = fetch_host_key(t.host, t.port)
    # The server may offer another key type than the one known; only the known type is pinned.
    if (
        pinned is not None
        and pinned.split()[:2] != offered.split()[:2]
        and pinned.split()[0] == offered.split()[0]
    ):
        raise HostKeyMismatch(
            f"{t.host}:{t.port} offers a host key other than the one in known_hosts"
        )
    key = pinned or offered
    if pinned is None and not expected_fingerprint and not trust_new_host_key:
        raise HostKeyUnknown(
            f"{t.host}:{t.port} is not in {known}; it offers host key {fingerprint(offered)}",
            hint="compare it with `ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` on that "
            "machine, then pass --fingerprint SHA256:... (or --trust-new-host-key)",
        )
    if expected_fingerprint and fingerprint(key) != expected_fingerprint:
        raise HostKeyMismatch(
            f"{t.host}:{t.port} has host key {fingerprint(key)}, not {expected_fingerprint}",
            hint="check the address, or the fingerprint you were given",
        )
    return SSHEndpoint(
        host=t.host, port=t.port, user=t.user, key_file=str(key_file.resolve()), host_key=key
    )


class SSHHostProvider:
    """A machine vmkit reaches over SSH but does not own."""

    name: ClassVar[str] = "ssh"
    capabilities: ClassVar[Capabilities] = Capabilities(
        create=False,
        destroy=False,
        power=False,
        share_mechanisms=("sshfs",),
        forward_mechanisms=("ssh-tunnel",),
    )

    def create(self, record: VMRecord, progress: Progress) -> None:
        raise NotSupported(
            "vmkit cannot create machines of provider ssh", hint="use `vmkit attach ssh://...`"
        )

    def start(self, record: VMRecord, progress: Progress) -> None:
        if self.status(record).state is not VMState.RUNNING:
            raise NotSupported(
                f"{record.name!r} is an SSH host vmkit does not control, and it does not answer",
                hint="start the machine yourself",
            )

    def stop(self, record: VMRecord, *, timeout: float, force: bool = False) -> None:
        raise NotSupported(
            f"vmkit does not power off SSH host {record.name!r}",
            hint="`vmkit destroy` only forgets it",
        )

    def destroy(self, record: VMRecord) -> None:
        """Forgetting is all: the machine is not vmkit's."""

    def status(self, record: VMRecord, *, ask_guest: bool = True) -> Status:
        # No hypervisor to ask instead: the machine's SSH is its only state, so ask_guest is moot.
        ep = record.ssh
        if ep is None:
            return Status(VMState.BROKEN, "no SSH endpoint recorded")
        if read_banner(ep.host, ep.port, timeout=5):
            return Status(VMState.RUNNING)
        return Status(VMState.UNKNOWN, f"no SSH answer at {ep.host}:{ep.port}")

    def share_mechanisms(
        self, record: VMRecord, ssh: Callable[[], SSHSession]
    ) -> list[ShareMechanism]:
        from vmkit.mechanisms.sshfs import ReverseSSHFS

        return [ReverseSSHFS(record, ssh)]

    def forward_mechanisms(
        self, record: VMRecord, ssh: Callable[[], SSHSession]
    ) -> list[ForwardMechanism]:
        from vmkit.mechanisms.tunnel import SSHTunnel

        return [SSHTunnel(record, ssh)]
