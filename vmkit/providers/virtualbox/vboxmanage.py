"""One VBoxManage program: found once, version checked once, every call through vmkit.host.runner."""

from __future__ import annotations

from collections.abc import Sequence

from vmkit.errors import NameAmbiguous, ProviderError, VMInaccessible, VMNotFound
from vmkit.host.runner import Result, run
from vmkit.providers.virtualbox.discover import check_series, find_vboxmanage, read_version
from vmkit.providers.virtualbox.errors import error_rules
from vmkit.providers.virtualbox.parsers import (
    INACCESSIBLE,
    VBoxVersion,
    VMInfo,
    parse_guestproperty,
    parse_list_vms,
    parse_showvminfo,
)


class VBoxManage:
    """A VBoxManage executable. ``path=None`` finds it (see ``find_vboxmanage``)."""

    def __init__(self, path: str | None = None) -> None:
        self.path = path or find_vboxmanage()
        self._version: VBoxVersion | None = None
        self.rules = error_rules(self._known_names)

    def __call__(self, *args: str, timeout: float = 60.0, check: bool = True) -> Result:
        """Run ``VBoxManage ARGS...``; known error texts raise vmkit exceptions."""
        return run([self.path, *args], timeout=timeout, check=check, rules=self.rules)

    @property
    def version(self) -> VBoxVersion:
        """The VirtualBox version; ``ProviderError`` if it is older than 5.0 or unreadable."""
        if self._version is None:
            v = read_version(self.path)
            check_series(v.series, str(v))
            self._version = v
        return self._version

    def _known_names(self) -> list[str]:
        r = self("list", "vms", timeout=30, check=False)
        if not r.ok:
            return []
        return [
            f"{name} {{{uuid}}}" if name == INACCESSIBLE else name
            for name, uuid in parse_list_vms(r.stdout)
        ]

    def list_vms(self, *, running: bool = False) -> list[tuple[str, str]]:
        """``(name, uuid)`` of every registered (or only running) VM."""
        return parse_list_vms(self("list", "runningvms" if running else "vms", timeout=30).stdout)

    def info(self, vm: str) -> VMInfo:
        """``showvminfo --machinereadable`` of ``vm`` (name or UUID); ``VMNotFound`` if unknown.

        ``VMInaccessible`` if VirtualBox cannot read the VM's settings, ``ProviderError`` if
        VBoxManage printed nothing that describes a VM (e.g. only a warning).
        """
        r = self("showvminfo", vm, "--machinereadable", timeout=30)
        info = parse_showvminfo(r.stdout)
        if info.inaccessible:
            raise VMInaccessible(
                f"VirtualBox VM {info.uuid or vm!r} is inaccessible: VirtualBox cannot read its settings"
            )
        if not (info.name or info.uuid or info.state):
            shown = next((ln.strip() for ln in r.stdout.splitlines() if ln.strip()), "nothing")
            raise ProviderError(
                f"`VBoxManage showvminfo {vm} --machinereadable` described no VM; it printed: {shown[:120]}",
                hint="run that command yourself to see what is wrong with VirtualBox",
            )
        return info

    def resolve(self, vm: str) -> VMInfo:
        """The one VM ``vm`` names, read with ``showvminfo``, checked against ``list vms`` first.

        VirtualBox matches a UUID before a name and takes the first of equal names without a
        word, so a name that fits two VMs (two of that name, or one of that name and another
        with that UUID) is ``NameAmbiguous``, and a UUID of a VM VirtualBox cannot read is
        ``VMInaccessible``. If ``list vms`` fails or does not list ``vm``, ``showvminfo``
        decides (``VMNotFound`` with VirtualBox's VMs listed).
        """
        r = self("list", "vms", timeout=30, check=False)
        entries = parse_list_vms(r.stdout) if r.ok else []
        wanted = vm.strip().strip("{}").lower()
        hits = [(name, uuid) for name, uuid in entries if name == vm or uuid == wanted]
        uuids = sorted({uuid for _, uuid in hits})
        if len(uuids) > 1:
            listing = ", ".join(f"{name!r} {{{uuid}}}" for name, uuid in hits)
            raise NameAmbiguous(
                f"{vm!r} fits {len(uuids)} VirtualBox VMs: {listing}",
                hint=f"name the one you mean by its UUID, e.g. virtualbox:{uuids[0]}",
            )
        if hits and hits[0][0] == INACCESSIBLE:
            raise VMInaccessible(
                f"VirtualBox VM {{{hits[0][1]}}} is inaccessible: VirtualBox cannot read its settings"
            )
        return self.info(vm)

    def inaccessible(self) -> list[str]:
        """UUIDs of the VMs VirtualBox lists as ``<inaccessible>``."""
        r = self("list", "vms", timeout=30, check=False)
        return [u for n, u in parse_list_vms(r.stdout) if n == INACCESSIBLE] if r.ok else []

    def find(self, vm: str) -> VMInfo | None:
        """Like ``info`` but None when VirtualBox has no such VM."""
        try:
            return self.info(vm)
        except VMNotFound:
            return None

    def guestproperty(self, vm: str, prop: str) -> str | None:
        """A guest property's value, None if unset."""
        return parse_guestproperty(self("guestproperty", "get", vm, prop, timeout=30).stdout)

    def natpf(
        self, vm: str, *, running: bool, nic: int, rule: Sequence[str] | None, delete: str = ""
    ) -> None:
        """Add (``rule`` = the six fields) or delete (``delete`` = name) a NAT rule, live or saved."""
        if rule is not None:
            value = ",".join(rule)
            args = (
                ["controlvm", vm, f"natpf{nic}", value]
                if running
                else ["modifyvm", vm, f"--natpf{nic}", value]
            )
        else:
            args = (
                ["controlvm", vm, f"natpf{nic}", "delete", delete]
                if running
                else ["modifyvm", vm, f"--natpf{nic}", "delete", delete]
            )
        self(*args)
