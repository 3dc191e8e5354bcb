"""One VBoxManage program: found once, version checked once, every call through vmkit.host.runner."""

from __future__ import annotations

from collections.abc import Sequence

from vmkit.errors import VMNotFound
from vmkit.host.runner import Result, run
from vmkit.providers.virtualbox.discover import check_series, find_vboxmanage, read_version
from vmkit.providers.virtualbox.errors import error_rules
from vmkit.providers.virtualbox.parsers import (
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
        """The VirtualBox version; ``ProviderError`` if it is older than 5.2 or unreadable."""
        if self._version is None:
            v = read_version(self.path)
            check_series(v.series, str(v))
            self._version = v
        return self._version

    def _known_names(self) -> list[str]:
        r = self("list", "vms", timeout=30, check=False)
        return [name for name, _ in parse_list_vms(r.stdout)] if r.ok else []

    def list_vms(self, *, running: bool = False) -> list[tuple[str, str]]:
        """``(name, uuid)`` of every registered (or only running) VM."""
        return parse_list_vms(self("list", "runningvms" if running else "vms", timeout=30).stdout)

    def info(self, vm: str) -> VMInfo:
        """``showvminfo --machinereadable`` of ``vm`` (name or UUID); ``VMNotFound`` if unknown."""
        return parse_showvminfo(self("showvminfo", vm, "--machinereadable", timeout=30).stdout)

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
