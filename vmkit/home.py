"""Where vmkit keeps things. Every file name of a VM's folder is defined here and nowhere else."""

from __future__ import annotations

import os
import re
from pathlib import Path

import attrs
import platformdirs

from vmkit.errors import InvalidName
from vmkit.host.transport import Address, address_for

_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,38}$")


def data_dir() -> Path:
    """vmkit's data folder: ``$VMKIT_HOME`` if set, else the platform's user data dir."""
    env = os.environ.get("VMKIT_HOME")
    return Path(env) if env else Path(platformdirs.user_data_dir("vmkit"))


def cache_dir() -> Path:
    """Built boxes live here: ``$VMKIT_CACHE`` if set, else the platform's user cache dir."""
    env = os.environ.get("VMKIT_CACHE")
    return Path(env) if env else Path(platformdirs.user_cache_dir("vmkit"))


def vms_dir() -> Path:
    return data_dir() / "vms"


def check_name(name: str, what: str = "VM name") -> str:
    """Return ``name`` if it is a valid VM name, else raise ``InvalidName`` saying why."""
    if not _NAME.match(name):
        raise InvalidName(
            f"{what} {name!r} is not valid",
            hint="use 1-39 lowercase letters, digits and '-', starting with a letter or digit",
        )
    return name


@attrs.frozen
class InstanceFiles:
    """The files of one VM's folder, each named here and nowhere else.

    Helper processes keep their pid files in the folder with a ``.pid`` suffix, so stopping
    or destroying the VM finds and ends every one of them.
    """

    dir: Path

    @classmethod
    def of(cls, name: str) -> InstanceFiles:
        return cls(vms_dir() / check_name(name))

    @property
    def name(self) -> str:
        return self.dir.name

    @property
    def state(self) -> Path:
        return self.dir / "vm.json"

    @property
    def lock(self) -> Path:
        # Beside the folder, not in it, so destroy can remove the folder while holding the lock.
        return self.dir.parent / f".{self.dir.name}.lock"

    @property
    def disk(self) -> Path:
        return self.dir / "disk.qcow2"

    @property
    def seed(self) -> Path:
        return self.dir / "seed.img"

    @property
    def client_key(self) -> Path:
        return self.dir / "id_ed25519"

    @property
    def host_key(self) -> Path:
        return self.dir / "ssh_host_ed25519_key"

    @property
    def known_hosts(self) -> Path:
        return self.dir / "known_hosts"

    @property
    def qmp(self) -> Path:
        return self.dir / "qmp.sock"

    @property
    def qmp_lock(self) -> Path:
        """Held while a vmkit process talks to QEMU's monitor, which serves one client at a time."""
        return self.dir / "qmp.lock"

    @property
    def pid(self) -> Path:
        return self.dir / "qemu.pid"

    @property
    def serial_log(self) -> Path:
        return self.dir / "serial.log"

    @property
    def qemu_log(self) -> Path:
        """QEMU's own output where vmkit starts it detached (it cannot daemonize: Windows)."""
        return self.dir / "qemu.log"

    @property
    def agent_pid(self) -> Path:
        return self.dir / "agent.pid"

    @property
    def agent_log(self) -> Path:
        return self.dir / "agent.log"

    @property
    def agent_sock(self) -> Path:
        return self.dir / "agent.sock"

    @property
    def vbox_disk(self) -> Path:
        """The box disk converted for VirtualBox (it cannot boot from qcow2)."""
        return self.dir / "disk.vdi"

    @property
    def vbox_seed(self) -> Path:
        return self.dir / "seed.vdi"

    @property
    def docker_sock(self) -> Path:
        """The Docker endpoint (``DOCKER_HOST``), served by the agent; a pipe on Windows."""
        return self.dir / "docker.sock"

    def agent_endpoint(self) -> Address:
        """Where the agent listens: ``agent.sock``, or pipe ``vmkit-NAME-agent`` on Windows."""
        return address_for(self.agent_sock, f"vmkit-{self.name}-agent")

    def docker_endpoint(self) -> Address:
        """Where the agent serves Docker: ``docker.sock``, or pipe ``vmkit-NAME-docker``."""
        return address_for(self.docker_sock, f"vmkit-{self.name}-docker")

    def virtiofs_sock(self, tag: str) -> Path:
        return self.dir / f"virtiofs-{tag}.sock"

    def virtiofs_pid(self, tag: str) -> Path:
        return self.dir / f"virtiofs-{tag}.pid"

    def virtiofs_log(self, tag: str) -> Path:
        return self.dir / f"virtiofs-{tag}.log"

    def virtiofs_root(self, tag: str) -> Path:
        """An empty folder on which the share is bind-mounted, only inside virtiofsd's own
        mount namespace (vmkit/host/fsguard.py); its name carries the tag."""
        return self.dir / f"virtiofs-{tag}.root"
