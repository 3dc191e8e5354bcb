"""The Vagrant provider: a machine of a Vagrant project, driven by the ``vagrant`` command.

A record of this provider names the project and the machine in ``extra``::

    {"project_dir": "/home/t/labs/alice", "machine": "alice", "vagrant_provider": "libvirt"}

SSH: host, port, user and key come from ``vagrant ssh-config``. The guest's host key is read
once, when the machine is attached (``adopt``), from ``/etc/ssh/ssh_host_ed25519_key.pub``
through ``vagrant ssh`` itself, and pinned in the record. That is trust-on-attach: it is as
trustworthy as Vagrant's own connection at that moment (which does not check host keys);
afterwards a different key is refused (``HostKeyMismatch``).

Vagrant adds synced folders and forwarded ports only at boot, so live shares and forwards of
a running Vagrant machine go over SSH (reverse sshfs, SSH tunnels) like any SSH host.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import attrs

from vmkit.errors import CommandTimeout, InvalidInput, NotFound, SSHError, VMNotRunning
from vmkit.progress import Progress, no_progress
from vmkit.providers.base import Capabilities, Status, VMState
from vmkit.providers.vagrant import cli, parse
from vmkit.state import SSHEndpoint, VMRecord

if TYPE_CHECKING:
    from vmkit.guest.ssh import SSHSession
    from vmkit.mechanisms.base import ForwardMechanism, ShareMechanism

#: Where vmkit-mini and most boxes keep the guest's ed25519 host key.
HOST_KEY_PATH = "/etc/ssh/ssh_host_ed25519_key.pub"


@attrs.frozen
class VagrantMachine:
    """What ``adopt`` found: a Vagrant machine and how to reach it."""

    project_dir: Path
    machine: str
    vagrant_provider: str
    state: VMState
    box: str
    ssh: SSHEndpoint | None

    def to_record(self, name: str) -> VMRecord:
        """A ``VMRecord`` named ``name`` for this machine (``vmkit attach``)."""
        return VMRecord(
            name=name,
            provider="vagrant",
            box=self.box,
            ssh=self.ssh,
            extra={
                "project_dir": str(self.project_dir),
                "machine": self.machine,
                "vagrant_provider": self.vagrant_provider,
            },
        )


class VagrantProvider:
    """Drives Vagrant machines. See the module docstring for the record's ``extra`` keys."""

    name = "vagrant"
    capabilities = Capabilities(
        create=True,
        destroy=True,
        share_mechanisms=("sshfs",),
        forward_mechanisms=("ssh-tunnel",),
    )

    def __init__(
        self,
        *,
        command_prefix: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        up_timeout: float = cli.UP_TIMEOUT,
        halt_timeout: float = cli.HALT_TIMEOUT,
        destroy_timeout: float = cli.DESTROY_TIMEOUT,
    ) -> None:
        self.command_prefix = list(command_prefix)
        self.env = dict(env or {})
        self.up_timeout = up_timeout
        self.halt_timeout = halt_timeout
        self.destroy_timeout = destroy_timeout

    # -- helpers --------------------------------------------------------------------------

    def vagrant_for(self, project_dir: Path, vagrant_provider: str = "") -> cli.VagrantCLI:
        """A ``VagrantCLI`` for ``project_dir`` with this provider's prefix and environment.

        ``vagrant_provider`` becomes ``VAGRANT_DEFAULT_PROVIDER``: without it ``vagrant status``
        of a machine not created yet answers for whichever provider is usable on this host.
        """
        env = dict(self.env)
        if vagrant_provider:
            env["VAGRANT_DEFAULT_PROVIDER"] = vagrant_provider
        return cli.VagrantCLI(project_dir, command_prefix=self.command_prefix, env=env)

    def _target(self, record: VMRecord) -> tuple[cli.VagrantCLI, str]:
        project = record.extra.get("project_dir")
        machine = record.extra.get("machine")
        if not project or not machine:
            raise InvalidInput(
                f"VM {record.name!r} has no Vagrant project in its record",
                hint="attach it again with `vmkit attach vagrant:DIR --name NAME`",
            )
        wanted = str(record.extra.get("vagrant_provider") or "")
        return self.vagrant_for(Path(project), wanted), str(machine)

    def machines(self, project_dir: Path) -> list[parse.MachineStatus]:
        """Every machine the project defines, with its state."""
        return parse.status(
            self.vagrant_for(project_dir).run("status", "--machine-readable").stdout
        )

    # -- Provider protocol ----------------------------------------------------------------

    def create(self, record: VMRecord, progress: Progress) -> None:
        """Check that the project defines the machine; ``vagrant up`` creates it at start."""
        vagrant, machine = self._target(record)
        progress(f"checking Vagrant project {vagrant.project_dir}")
        vagrant.run("status", "--machine-readable", machine)

    def start(self, record: VMRecord, progress: Progress) -> None:
        """``vagrant up`` the machine (with ``--provider`` if the record names one)."""
        vagrant, machine = self._target(record)
        args = ["up", machine]
        if record.extra.get("vagrant_provider"):
            args += ["--provider", str(record.extra["vagrant_provider"])]
        vagrant.stream(*args, timeout=self.up_timeout, progress=progress)

    def stop(self, record: VMRecord, *, timeout: float, force: bool = False) -> None:
        """``vagrant halt``; forced (``-f``) at once with ``force``, or if it overruns ``timeout``."""
        vagrant, machine = self._target(record)
        if not force:
            try:
                vagrant.stream("halt", machine, timeout=timeout)
                return
            except CommandTimeout:
                pass
        vagrant.stream("halt", "--force", machine, timeout=self.halt_timeout)

    def destroy(self, record: VMRecord) -> None:
        """``vagrant destroy -f``: the machine and its disks go; the project folder stays."""
        vagrant, machine = self._target(record)
        vagrant.stream("destroy", "--force", machine, timeout=self.destroy_timeout)

    def status(self, record: VMRecord, *, ask_guest: bool = True) -> Status:
        """The machine's state as Vagrant's provider reports it now."""
        vagrant, machine = self._target(record)
        found = parse.status(vagrant.run("status", "--machine-readable", machine).stdout)
        for m in found:
            if m.name == machine:
                detail = f"{m.human or m.vagrant_state} ({m.provider})"
                errors = (
                    (f"vagrant reports {m.vagrant_state!r}",) if m.state is VMState.BROKEN else ()
                )
                return Status(m.state, detail=detail, errors=errors)
        return Status(VMState.UNKNOWN, detail=f"vagrant status did not list {machine!r}")

    def share_mechanisms(
        self, record: VMRecord, ssh: Callable[[], SSHSession]
    ) -> list[ShareMechanism]:
        """Reverse sshfs over the machine's SSH (Vagrant's own shares exist only from boot)."""
        from vmkit.mechanisms.sshfs import ReverseSSHFS

        return [ReverseSSHFS(record, ssh)]

    def forward_mechanisms(
        self, record: VMRecord, ssh: Callable[[], SSHSession]
    ) -> list[ForwardMechanism]:
        """SSH tunnels (Vagrant's forwarded ports exist only from boot)."""
        from vmkit.mechanisms.tunnel import SSHTunnel

        return [SSHTunnel(record, ssh)]

    # -- SSH and adoption -----------------------------------------------------------------

    def ssh_config(self, project_dir: Path, machine: str) -> parse.SSHConfig:
        """``vagrant ssh-config`` of a running machine."""
        out = self.vagrant_for(project_dir).run("ssh-config", machine).stdout
        found = parse.ssh_config(out)
        if not found:
            raise SSHError(f"`vagrant ssh-config {machine}` in {project_dir} printed no host")
        return found[0]

    def read_host_key(self, project_dir: Path, machine: str) -> str:
        """The guest's ed25519 host key, read through ``vagrant ssh`` (trust-on-attach)."""
        result = self.vagrant_for(project_dir).run(
            "ssh", machine, "-c", f"cat {HOST_KEY_PATH}", timeout=cli.SSH_TIMEOUT
        )
        line = parse.host_key_line(result.stdout)
        if line is None:
            raise SSHError(
                f"machine {machine!r} in {project_dir} has no ed25519 host key at {HOST_KEY_PATH}",
                hint="vmkit pins that key; enable ed25519 host keys in the guest's sshd",
            )
        return line

    def endpoint(self, project_dir: Path, machine: str, host_key: str) -> SSHEndpoint:
        """The SSH endpoint of a running machine, with ``host_key`` pinned."""
        conf = self.ssh_config(project_dir, machine)
        if not conf.identity_files:
            raise SSHError(f"`vagrant ssh-config {machine}` names no IdentityFile")
        # Vagrant lists the machine's own key first once it replaced the insecure one.
        return SSHEndpoint(
            host=conf.hostname,
            port=conf.port,
            user=conf.user,
            key_file=conf.identity_files[0],
            host_key=host_key,
        )

    def adopt(
        self,
        project_dir: Path,
        machine: str | None = None,
        *,
        up: bool = False,
        progress: Progress = no_progress,
    ) -> VagrantMachine:
        """Take over a machine of an existing Vagrant project (``vmkit attach vagrant:DIR``).

        With several machines in the project, ``machine`` must name one. The machine must be
        running (``up=True`` brings it up) so that its SSH endpoint and host key can be read.
        """
        project_dir = Path(project_dir).resolve()
        if not (project_dir / "Vagrantfile").is_file():
            raise NotFound(
                f"{project_dir} has no Vagrantfile",
                hint="give the folder of a Vagrant project: `vmkit attach vagrant:./mylab`",
            )
        found = self.machines(project_dir)
        names = [m.name for m in found]
        if machine is None:
            if len(found) != 1:
                raise InvalidInput(
                    f"the Vagrant project {project_dir} defines {len(found)} machines: "
                    + ", ".join(names),
                    hint="name one: `vmkit attach vagrant:DIR:MACHINE`",
                )
            machine = found[0].name
        match = [m for m in found if m.name == machine]
        if not match:
            raise NotFound(
                f"the Vagrant project {project_dir} has no machine {machine!r}",
                hint="its machines: " + (", ".join(names) or "none"),
            )
        current = match[0]
        if current.state is not VMState.RUNNING:
            if not up:
                raise VMNotRunning(
                    f"Vagrant machine {machine!r} in {project_dir} is {current.vagrant_state}",
                    hint="vmkit reads its SSH host key at attach: `vagrant up` it first, or attach with --up",
                )
            progress(f"vagrant up {machine}")
            self.vagrant_for(project_dir).stream(
                "up", machine, timeout=self.up_timeout, progress=progress
            )
            current = next(m for m in self.machines(project_dir) if m.name == machine)
        progress(f"reading {machine}'s SSH host key through vagrant ssh")
        endpoint = self.endpoint(project_dir, machine, self.read_host_key(project_dir, machine))
        return VagrantMachine(
            project_dir=project_dir,
            machine=machine,
            vagrant_provider=current.provider,
            state=current.state,
            box=_box_name(project_dir, machine, current.provider),
            ssh=endpoint,
        )


def _box_name(project_dir: Path, machine: str, provider: str) -> str:
    """The box a created machine came from, from Vagrant's ``box_meta`` file ("" if unknown)."""
    meta = project_dir / ".vagrant" / "machines" / machine / provider / "box_meta"
    try:
        data = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    return str(data.get("name", "")) if isinstance(data, dict) else ""


def parse_url(url: str) -> tuple[Path, str | None]:
    """``vagrant:DIR`` or ``vagrant:DIR:MACHINE`` → (project folder, machine or None)."""
    if not url.startswith("vagrant:") or url == "vagrant:":
        raise InvalidInput(f"{url!r} is not a vagrant: address", hint="use vagrant:DIR[:MACHINE]")
    rest = url[len("vagrant:") :]
    head, sep, tail = rest.rpartition(":")
    # A folder whose name has a colon wins over the DIR:MACHINE reading.
    if sep and head and tail and not Path(rest).expanduser().is_dir():
        return Path(head).expanduser(), tail
    return Path(rest).expanduser(), None


def attach_record(
    url: str,
    name: str,
    *,
    up: bool = False,
    provider: VagrantProvider | None = None,
    progress: Progress = no_progress,
) -> VMRecord:
    """The record for ``vmkit attach vagrant:DIR[:MACHINE] --name NAME`` (host key pinned now)."""
    project, machine = parse_url(url)
    return (
        (provider or VagrantProvider())
        .adopt(project, machine, up=up, progress=progress)
        .to_record(name)
    )
