"""Shared folders through VirtualBox (``sharedfolder``) mounted in the guest as ``vboxsf``.

Running VM: a *transient* share (``sharedfolder add --transient``, gone at power-off), then in
the guest ``modprobe vboxsf`` (mainline Linux has the module; no Guest Additions needed),
``mkdir -p TARGET`` and ``mount -t vboxsf``. Stopped VM: a *permanent* share is saved, and a
later ``add`` on the running VM only mounts it. A failure half-way removes the transient share
again, so nothing is left behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable, Sequence

import attrs

from vmkit.errors import GuestModuleMissing, InvalidInput, ShareExists, SSHError, VMNotFound
from vmkit.guest.ssh import SSHSession
from vmkit.host.faults import point
from vmkit.mechanisms.base import Leftover, guest_mounts, prepare_mountpoint, unmount
from vmkit.progress import Progress, no_progress
from vmkit.providers.virtualbox.parsers import SharedFolder, VMInfo
from vmkit.providers.virtualbox.vboxmanage import VBoxManage
from vmkit.state import ShareSpec


def share_tag(target: str) -> str:
    """The VirtualBox share name for a guest path: ``vmkit_`` + 10 hex digits of its hash.

    Deterministic (the same target always gets the same name, so a later ``remove`` finds it)
    and safe (VirtualBox refuses names with blanks; guest paths can have anything).
    """
    return "vmkit_" + hashlib.sha256(target.encode()).hexdigest()[:10]


def vboxsf_mounts(ssh: SSHSession) -> dict[str, tuple[str, str]]:
    """Guest mount point -> (share name, mount options) of every vboxsf mount."""
    return {m.target: (m.source, m.options) for m in guest_mounts(ssh) if m.fstype == "vboxsf"}


class VBoxSF:
    """Shares of one VirtualBox VM. ``ssh`` is called only when the guest is needed."""

    name = "vboxsf"

    def __init__(
        self,
        vbm: VBoxManage,
        vm: str,
        ssh: Callable[[], SSHSession],
        *,
        uid: int = 1000,
        progress: Progress = no_progress,
    ) -> None:
        self.vbm = vbm
        self.vm = vm
        self.ssh = ssh
        self.uid = uid
        self.progress = progress

    def _info(self) -> VMInfo:
        info = self.vbm.find(self.vm)
        if info is None:
            raise VMNotFound(f"VirtualBox has no VM named {self.vm!r}")
        return info

    def check(self) -> None:
        """``GuestModuleMissing`` if the running guest cannot mount vboxsf (use another mechanism)."""
        if self._info().running:
            self._need_module(self.ssh())

    def _need_module(self, ssh: SSHSession) -> None:
        if ssh.run(["modprobe", "vboxsf"], sudo=True, check=False).ok:
            return
        # Built into the kernel (or Guest Additions loaded it): modprobe may fail, the fs is there.
        filesystems = ssh.run(["cat", "/proc/filesystems"], check=False).stdout.split()
        if "vboxsf" in filesystems:
            return
        raise GuestModuleMissing(
            f"the guest of VM {self.vm!r} has no vboxsf filesystem (kernel module missing)",
            hint="vmkit can share the folder over SSH instead; or install a kernel with vboxsf "
            "or VirtualBox's Guest Additions in the guest",
        )

    def _gid(self, ssh: SSHSession) -> int:
        # Files owned by the docker group let containers started by the user write to the share.
        r = ssh.run(["getent", "group", "docker"], check=False)
        fields = r.stdout.strip().split(":")
        if r.ok and len(fields) >= 3 and fields[2].isdigit():
            return int(fields[2])
        return 1000

    def planned(self, spec: ShareSpec) -> ShareSpec:
        return attrs.evolve(spec, mechanism=self.name, tag=spec.tag or share_tag(spec.target))

    def add(self, spec: ShareSpec) -> ShareSpec:
        """Share ``spec.source`` at ``spec.target``: mounted now if the VM runs, else at next start."""
        source = os.path.abspath(spec.source)
        if not os.path.isdir(source):
            raise InvalidInput(
                f"the folder {source} does not exist on this computer", hint="create it first"
            )
        tag = spec.tag or share_tag(spec.target)
        done = attrs.evolve(spec, mechanism=self.name, tag=tag)
        info = self._info()
        same = [f for f in info.folders if f.name == tag]
        if any(os.path.normcase(f.path) != os.path.normcase(source) for f in same):
            raise ShareExists(
                f"VM {self.vm!r} already shares another folder as {tag!r} ({same[0].path})",
                hint="remove that share first",
            )
        if not info.running:
            if not same:
                self._add_folder(tag, source, spec, transient=False)
            self.progress(
                f"VM {self.vm!r} is stopped: {source} saved as a share, mounted at next start"
            )
            return done
        ssh = self.ssh()
        self._need_module(ssh)
        mounted = vboxsf_mounts(ssh)
        if spec.target in mounted:
            raise ShareExists(
                f"{spec.target} in VM {self.vm!r} already has a shared folder mounted on it",
                hint="see `vmkit shares`; remove it first",
            )
        made = not same
        if made:
            self._add_folder(tag, source, spec, transient=True)
            point("vboxsf:folder")
        try:
            prepare_mountpoint(ssh, spec.target)
            opts = f"uid={self.uid},gid={self._gid(ssh)}" + (",ro" if spec.readonly else "")
            ssh.run(["mount", "-t", "vboxsf", "-o", opts, tag, spec.target], sudo=True)
        except BaseException:
            if made:
                # Best effort: the original error is the one to report.
                self._drop(tag, transient=True, check=False)
            raise
        return done

    def _add_folder(self, tag: str, source: str, spec: ShareSpec, *, transient: bool) -> None:
        """A shared folder in VirtualBox: transient on a running VM, saved on a stopped one."""
        self.vbm(
            "sharedfolder",
            "add",
            self.vm,
            "--name",
            tag,
            "--hostpath",
            source,
            *(["--transient"] if transient else []),
            *self._ro(spec),
        )

    @staticmethod
    def _ro(spec: ShareSpec) -> list[str]:
        return ["--readonly"] if spec.readonly else []

    def _drop(self, tag: str, *, transient: bool, check: bool = True) -> None:
        args = ["sharedfolder", "remove", self.vm, "--name", tag]
        self.vbm(*args, *(["--transient"] if transient else []), check=check)

    def remove(self, spec: ShareSpec) -> None:
        """Unmount in the guest, then drop VirtualBox's share. No error if it is already gone."""
        tag = spec.tag or share_tag(spec.target)
        info = self.vbm.find(self.vm)
        if info is None:
            return
        folders: list[SharedFolder] = [f for f in info.folders if f.name == tag]
        if info.running:
            if spec.target:
                unmount(self.ssh(), spec.target)
            point("vboxsf:unmounted")
            for f in folders:
                if f.transient:
                    self._drop(tag, transient=True)
                else:
                    # A running VM's saved settings are locked; the share is unused until a later
                    # `remove` on the stopped VM (vmkit mounts nothing by itself at boot).
                    self.progress(
                        f"unmounted {spec.target}; VirtualBox keeps the saved share {tag!r} "
                        "until this is repeated with the VM stopped"
                    )
        else:
            for f in folders:
                if not f.transient:
                    self._drop(tag, transient=False)

    def active(self) -> list[ShareSpec]:
        """vboxsf mounts in the running guest whose share VirtualBox has, as share specs.

        Shares made by other tools (docker-machine's ``c/Users``, Vagrant's ``vagrant``) are
        included; vmkit's own have tags starting with ``vmkit_``. A stopped VM has none.
        """
        info = self.vbm.find(self.vm)
        if info is None or not info.running:
            return []
        # A transient share hides a permanent one of the same name, as in VirtualBox.
        paths = {f.name: f.path for f in sorted(info.folders, key=lambda f: f.transient)}
        out = []
        for target, (tag, opts) in vboxsf_mounts(self.ssh()).items():
            if tag in paths:
                ro = "ro" in opts.split(",")
                out.append(ShareSpec(paths[tag], target, readonly=ro, mechanism=self.name, tag=tag))
        return out

    def leftovers(self, wanted: Sequence[ShareSpec]) -> list[Leftover]:
        """VirtualBox folders named by vmkit (``vmkit_…``) and their guest mounts that none of
        ``wanted`` accounts for; folders of other tools are theirs."""
        keep = {s.tag or share_tag(s.target) for s in wanted if s.mechanism == self.name}
        info = self.vbm.find(self.vm)
        if info is None:
            return []
        mounts: dict[str, str] = {}
        if info.running:
            # A VM vmkit has no SSH access to yet: its folders are still found.
            with contextlib.suppress(SSHError):
                mounts = {tag: t for t, (tag, _) in vboxsf_mounts(self.ssh()).items()}
        out = []
        for f in info.folders:
            if f.name.startswith("vmkit_") and f.name not in keep:
                spec = ShareSpec(f.path, mounts.get(f.name, ""), mechanism=self.name, tag=f.name)
                kind = "transient folder" if f.transient else "saved folder"
                out.append(Leftover(self.name, f"VirtualBox {kind} {f.name} ({f.path})", spec))
                if f.name in mounts:
                    out.append(Leftover(self.name, f"guest mount {mounts[f.name]}", spec))
        return out
