"""The VirtualBox provider: VMs made and driven with VBoxManage, and adoption of existing ones.

vmkit's own VMs are named ``vmkit-<name>`` in VirtualBox and live inside vmkit's VM folder
(``createvm --basefolder``), so ``unregistervm --delete`` removes all they had. Adopted VMs
(e.g. docker-machine's ``default``) keep their name, recorded as ``extra["vbox_name"]``, and
vmkit never deletes them.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import attrs

from vmkit.errors import NotFound, NotSupported, ProviderError, SSHError, VMExists
from vmkit.host.runner import run, which
from vmkit.progress import Progress, no_progress
from vmkit.providers.base import Capabilities, Status, VMState
from vmkit.providers.virtualbox.nat import SSH_RULE, free_port, host_port_free, ssh_rule
from vmkit.providers.virtualbox.parsers import NatRule, SharedFolder, VMInfo
from vmkit.providers.virtualbox.vboxmanage import VBoxManage

if TYPE_CHECKING:
    from vmkit.guest.ssh import SSHSession
    from vmkit.mechanisms.base import ForwardMechanism, ShareMechanism
    from vmkit.state import VMRecord

PREFIX = "vmkit-"
CONTROLLER = "SATA"
OSTYPES = {"amd64": "Debian_64", "i386": "Debian"}

#: VirtualBox's VMState word -> vmkit's state.
STATES: dict[str, VMState] = {
    "running": VMState.RUNNING,
    "poweroff": VMState.STOPPED,
    "saved": VMState.SAVED,
    "paused": VMState.PAUSED,
    "aborted": VMState.BROKEN,
    "gurumeditation": VMState.BROKEN,
    "starting": VMState.STARTING,
    "restoring": VMState.STARTING,
    "stopping": VMState.STOPPING,
    "saving": VMState.STOPPING,
    "aborted-saved": VMState.BROKEN,  # 7.x: aborted while a saved state was kept
    "teleported": VMState.STOPPED,
    "livesnapshotting": VMState.RUNNING,
    "onlinesnapshotting": VMState.RUNNING,
    "deletingsnapshotlive": VMState.RUNNING,
    "deletingsnapshotlivepaused": VMState.PAUSED,
    "teleportingpausedvm": VMState.PAUSED,
}


def pending_hint(name: str, options: str = "") -> str:
    """How to finish an attachment whose SSH part could not be done yet."""
    return f"`vmkit attach --refresh {name}{' ' + options if options else ''}`"


def vbox_name(record: VMRecord) -> str:
    """The VirtualBox name of a record's VM: ``extra["vbox_name"]`` or ``vmkit-<name>``."""
    return str(record.extra.get("vbox_name") or PREFIX + record.name)


def docker_machine_dir(vm: str, environ: dict[str, str] | None = None) -> Path:
    """Where docker-machine keeps a machine's files (its SSH key is ``id_rsa`` there)."""
    env = dict(os.environ) if environ is None else environ
    root = env.get("MACHINE_STORAGE_PATH") or str(Path.home() / ".docker" / "machine")
    return Path(root) / "machines" / vm


@attrs.frozen
class AdoptedVM:
    """What vmkit learned about an existing VirtualBox VM it was asked to attach to."""

    vbox_name: str
    uuid: str
    state: VMState
    vbox_state: str  # VirtualBox's own word: poweroff, saved, running, aborted, ...
    ostype: str
    memory: int | None
    cpus: int | None
    ssh_host: str | None  # None when the VM has no NAT rule to port 22
    ssh_port: int | None
    ssh_user: str  # a guess: "docker" for docker-machine VMs (key found), else ""
    key_file: str | None
    shares: tuple[SharedFolder, ...]
    forwards: tuple[NatRule, ...]  # every NAT rule of every card but the SSH one
    ssh_rule: NatRule | None = None

    def extra(self) -> dict[str, Any]:
        """The values to keep in ``VMRecord.extra``."""
        return {"vbox_name": self.vbox_name, "uuid": self.uuid, "adopted": True}

    def to_record(
        self, name: str, *, host_key: str, user: str | None = None, key_file: str | None = None
    ) -> VMRecord:
        """A ``VMRecord`` named ``name`` (``vmkit attach virtualbox:VM``).

        ``host_key`` ("ssh-ed25519 AAAA...") is the guest's, obtained by the caller: VirtualBox
        cannot tell it. Without an SSH rule, a user or a key file the record has no ``ssh``.
        """
        from vmkit.state import SSHEndpoint, VMRecord

        user = user or self.ssh_user
        key_file = key_file or self.key_file
        ssh = None
        if self.ssh_host and self.ssh_port and user and key_file and host_key:
            ssh = SSHEndpoint(self.ssh_host, self.ssh_port, user, key_file, host_key)
        return VMRecord(
            name=name,
            provider="virtualbox",
            cpus=self.cpus or 1,
            memory=self.memory or 1024,
            ssh=ssh,
            extra=self.extra(),
        )


def _log_errors(info: VMInfo) -> tuple[str, ...]:
    """Error lines of the VM's last VBox.log (why it aborted or failed to power up)."""
    folder = info.raw.get("LogFldr")
    if not folder:
        return ()
    try:
        lines = Path(folder, "VBox.log").read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ()
    marks = ("Power up failed", "VERR_", "Guru Meditation", "!!!!!!")
    return tuple(line.strip() for line in lines if any(m in line for m in marks))[-5:]


class VirtualBoxProvider:
    """VMs in Oracle VirtualBox, driven through VBoxManage (see ``backend()`` for pyvbox)."""

    name: ClassVar[str] = "virtualbox"
    capabilities: ClassVar[Capabilities] = Capabilities(
        share_mechanisms=("vboxsf", "sshfs"),
        forward_mechanisms=("natpf", "ssh-tunnel"),
        offline_changes=True,
    )

    def __init__(self, vbm: VBoxManage | None = None, *, poll_interval: float = 1.0) -> None:
        self._vbm = vbm
        self.poll_interval = poll_interval

    @property
    def vbm(self) -> VBoxManage:
        """The VBoxManage in use, found (and version-checked) on first use."""
        if self._vbm is None:
            self._vbm = VBoxManage()
        _ = self._vbm.version
        return self._vbm

    # -- lifecycle ------------------------------------------------------------------------

    def create(
        self,
        record: VMRecord,
        progress: Progress = no_progress,
        *,
        disk: Path | None = None,
        seed: Path | None = None,
    ) -> None:
        """Convert the box disk (and seed image) to VDI and register ``vmkit-<name>``.

        ``disk`` defaults to the box's qcow2 (``vmkit.boxes``), ``seed`` to the record's seed
        image if it exists.
        """
        vbm = self.vbm
        name = vbox_name(record)
        ostype = OSTYPES.get(record.arch)
        if ostype is None:
            raise NotSupported(f"VirtualBox runs only amd64 and i386 guests, not {record.arch!r}")
        if vbm.find(name) is not None:
            raise VMExists(
                f"VirtualBox already has a VM named {name!r}",
                hint="remove it in VirtualBox, or pick another vmkit name",
            )
        if disk is None:
            from vmkit import boxes
            from vmkit.boxes import bootdisk

            # VirtualBox boots from the disk's MBR, not a kernel file: the bootable copy.
            box = boxes.ensure(record.box, record.arch, progress=progress)
            disk = bootdisk.ensure_bootable(box, progress=progress)
        if seed is None and record.files.seed.exists():
            seed = record.files.seed
        files = record.files
        progress("converting the box disk for VirtualBox (qemu-img → VDI)")
        disk_vdi = _to_vdi(disk, files.vbox_disk, min_size=record.disk * 1024**3)
        seed_vdi = _to_vdi(seed, files.vbox_seed) if seed is not None else None
        port = free_port()
        progress(f"registering VirtualBox VM {name!r}, SSH on 127.0.0.1:{port}")
        vbm(
            "createvm",
            "--name",
            name,
            "--ostype",
            ostype,
            "--register",
            "--basefolder",
            str(files.dir),
        )
        try:
            vbm(
                "modifyvm", name,
                "--memory", str(record.memory),
                "--cpus", str(record.cpus),
                "--nic1", "nat",
                "--natpf1", f"{SSH_RULE},tcp,127.0.0.1,{port},,22",
                "--ioapic", "on",
                "--rtcuseutc", "on",
                "--boot1", "disk", "--boot2", "none", "--boot3", "none", "--boot4", "none",
            )  # fmt: skip
            vbm(
                "storagectl",
                name,
                "--name",
                CONTROLLER,
                "--add",
                "sata",
                "--portcount",
                "2",
                "--bootable",
                "on",
            )
            for port_no, image in enumerate([disk_vdi, seed_vdi]):
                if image is not None:
                    vbm(
                        "storageattach", name, "--storagectl", CONTROLLER, "--port", str(port_no),
                        "--device", "0", "--type", "hdd", "--medium", str(image),
                    )  # fmt: skip
            info = vbm.info(name)
        except BaseException:
            # Leave no half-made VM registered in VirtualBox; the original error is the one to show.
            vbm("unregistervm", name, "--delete", check=False)
            raise
        record.extra.update(vbox_name=name, uuid=info.uuid, ssh_port=port)
        if record.ssh is not None:
            record.ssh = attrs.evolve(record.ssh, host="127.0.0.1", port=port)

    def start(self, record: VMRecord, progress: Progress = no_progress) -> None:
        """``startvm --type headless``; returns once VirtualBox runs the VM (not when SSH is up)."""
        vbm = self.vbm
        name = vbox_name(record)
        info = vbm.info(name)
        if info.state == "paused":
            vbm("controlvm", name, "resume")
            return
        if info.running:
            return
        rule = ssh_rule(info)
        if (
            rule is not None
            and not record.extra.get("adopted")
            and info.state in ("poweroff", "aborted")
            and not host_port_free(rule.host_ip or "127.0.0.1", rule.host_port)
        ):
            # Another program took the SSH port while the VM was off: move the rule.
            port = free_port()
            progress(f"host port {rule.host_port} is taken, SSH moves to 127.0.0.1:{port}")
            vbm("modifyvm", name, "--natpf1", "delete", rule.name)
            vbm("modifyvm", name, "--natpf1", f"{rule.name},tcp,127.0.0.1,{port},,22")
            rule = attrs.evolve(rule, host_ip="127.0.0.1", host_port=port)
        progress(f"starting VirtualBox VM {name!r} (headless)")
        vbm("startvm", name, "--type", "headless", timeout=180)
        if rule is not None:
            record.extra["ssh_port"] = rule.host_port
            if record.ssh is not None:
                record.ssh = attrs.evolve(
                    record.ssh, host=rule.host_ip or "127.0.0.1", port=rule.host_port
                )

    def stop(self, record: VMRecord, *, timeout: float, force: bool = False) -> None:
        """ACPI power button, then power off if the guest is still up after ``timeout`` s."""
        vbm = self.vbm
        name = vbox_name(record)
        info = vbm.find(name)
        if info is None or not info.running:
            return
        # A paused guest cannot react to the power button.
        if not force and info.state == "running":
            vbm("controlvm", name, "acpipowerbutton", check=False)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                now = vbm.find(name)
                if now is None or not now.running:
                    return
                time.sleep(self.poll_interval)
        vbm("controlvm", name, "poweroff", timeout=120)

    def destroy(self, record: VMRecord) -> None:
        """Power off and ``unregistervm --delete``; an adopted VM is only forgotten, never deleted."""
        if record.extra.get("adopted"):
            return
        vbm = self.vbm
        name = vbox_name(record)
        info = vbm.find(name)
        if info is None:
            return
        if info.running:
            vbm("controlvm", name, "poweroff", timeout=120)
        vbm("unregistervm", name, "--delete", timeout=120)

    def status(self, record: VMRecord, *, ask_guest: bool = True) -> Status:
        """The state VirtualBox reports now; BROKEN (with the reason) for aborted or missing VMs."""
        name = vbox_name(record)
        info = self.vbm.find(name)
        if info is None:
            why = f"VirtualBox has no VM named {name!r} (removed outside vmkit?)"
            return Status(VMState.BROKEN, detail=why, errors=(why,))
        state = STATES.get(info.state, VMState.UNKNOWN)
        if state is VMState.BROKEN:
            errors = _log_errors(info)
            detail = f"VirtualBox reports the VM as {info.state!r}: it stopped unexpectedly"
            return Status(state, detail=detail, errors=errors or (detail,))
        notes = []
        if state.value != info.state:
            # Name VirtualBox's own word too (poweroff, teleported, ...), or what it printed.
            notes.append(f"VirtualBox state {info.state or 'not reported'!r}")
        if record.extra.get("adopted") and record.ssh is None:
            notes.append(f"no SSH yet: {pending_hint(record.name)}")
        return Status(state, detail="; ".join(notes))

    # -- mechanisms -----------------------------------------------------------------------

    def share_mechanisms(
        self, record: VMRecord, ssh: Callable[[], SSHSession]
    ) -> list[ShareMechanism]:
        """vboxsf (VirtualBox shared folders), then reverse sshfs when the VM has SSH: a guest
        without the vboxsf module (and without Guest Additions) can still share folders."""
        from vmkit.mechanisms.sshfs import ReverseSSHFS
        from vmkit.providers.virtualbox.vboxsf import VBoxSF

        if record.ssh is None and record.extra.get("adopted"):

            def no_ssh() -> SSHSession:
                raise SSHError(
                    f"vmkit has no SSH access to VM {record.name!r} yet, and mounting a share "
                    f"needs it: run {pending_hint(record.name)} once its SSH server answers"
                )

            return [VBoxSF(self.vbm, vbox_name(record), no_ssh)]
        mechanisms: list[ShareMechanism] = [VBoxSF(self.vbm, vbox_name(record), ssh)]
        if record.ssh is not None:
            mechanisms.append(ReverseSSHFS(record, ssh))
        return mechanisms

    def forward_mechanisms(
        self, record: VMRecord, ssh: Callable[[], SSHSession]
    ) -> list[ForwardMechanism]:
        """natpf (VirtualBox NAT rules, added on the card that carries SSH), then an SSH
        tunnel when the VM has SSH, used when asked for by name
        (``vmkit forward --mechanism ssh-tunnel``)."""
        from vmkit.mechanisms.tunnel import SSHTunnel
        from vmkit.providers.virtualbox.natpf import NatPF

        ssh_port = record.ssh.port if record.ssh is not None else None
        known = frozenset(f.key for f in record.forwards)
        mechanisms: list[ForwardMechanism] = [
            NatPF(
                self.vbm,
                vbox_name(record),
                ssh_port=ssh_port or record.extra.get("ssh_port"),
                known=known,
            )
        ]
        if record.ssh is not None:
            mechanisms.append(SSHTunnel(record, ssh))
        return mechanisms

    # -- adoption -------------------------------------------------------------------------

    def adopt(self, vm_name: str) -> AdoptedVM:
        """Read an existing VirtualBox VM (``vmkit attach virtualbox:default``); changes nothing.

        Any state will do. ``VMNotFound`` (listing VirtualBox's VMs) if there is none of that
        name or UUID, ``NameAmbiguous`` if it fits two, ``VMInaccessible`` if VirtualBox cannot
        read the VM's settings.
        """
        info = self.vbm.resolve(vm_name)
        rule = ssh_rule(info)
        key = docker_machine_dir(info.name) / "id_rsa"
        has_key = key.is_file()
        return AdoptedVM(
            vbox_name=info.name or vm_name,
            uuid=info.uuid,
            state=STATES.get(info.state, VMState.UNKNOWN),
            vbox_state=info.state,
            ostype=info.ostype,
            memory=info.memory,
            cpus=info.cpus,
            ssh_host=(rule.host_ip or "127.0.0.1") if rule else None,
            ssh_port=rule.host_port if rule else None,
            ssh_user="docker" if has_key else "",
            key_file=str(key) if has_key else None,
            shares=info.folders,
            forwards=tuple(r for r in info.rules if r is not rule),
            ssh_rule=rule,
        )


def _image_info(path: Path) -> tuple[str, int]:
    """(format, virtual size in bytes) of a disk image, from ``qemu-img info``."""
    if not path.is_file():
        raise NotFound(
            f"disk image {path} does not exist", hint="build the box with `vmkit box build`"
        )
    r = run([which("qemu-img"), "info", "--output=json", str(path)], timeout=60)
    try:
        data = json.loads(r.stdout)
        return str(data["format"]), int(data["virtual-size"])
    except (ValueError, KeyError) as e:
        raise ProviderError(f"qemu-img cannot read {path}", hint="rebuild the box") from e


def _to_vdi(src: Path, dst: Path, *, min_size: int = 0) -> Path:
    """Copy ``src`` into a new VDI at ``dst`` of at least ``min_size`` bytes (sparse)."""
    fmt, size = _image_info(src)
    qemu_img = which("qemu-img")
    if dst.exists():
        dst.unlink()
    # VDI cannot be resized by qemu-img: make the big empty VDI first and copy into it.
    run([qemu_img, "create", "-q", "-f", "vdi", str(dst), str(max(size, min_size))], timeout=60)
    run(
        [qemu_img, "convert", "-n", "--target-is-zero", "-f", fmt, "-O", "vdi", str(src), str(dst)],
        timeout=1800,
    )
    return dst
