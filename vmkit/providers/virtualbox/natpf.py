"""Port forwards through VirtualBox's NAT engine (``natpf`` rules on a NAT network card).

Running VM: ``controlvm VM natpf1 RULE`` takes effect at once (and is saved). Stopped VM:
``modifyvm VM --natpf1 RULE`` saves it and it applies at the next start. VirtualBox does not
report a host port that something else already listens on (it logs the failed bind and the
rule silently does nothing), so the port is checked here first. The SSH rule is never
reported or touched.
"""

from __future__ import annotations

import attrs

from vmkit.errors import ForwardExists, InvalidInput, PortInUse
from vmkit.progress import Progress, no_progress
from vmkit.providers.virtualbox.nat import SSH_RULE, host_port_free
from vmkit.providers.virtualbox.parsers import NatRule
from vmkit.providers.virtualbox.vboxmanage import VBoxManage
from vmkit.state import ForwardSpec


def rule_name(spec: ForwardSpec) -> str:
    """The VirtualBox rule name vmkit gives a forward: ``vmkit-tcp-8080``."""
    return f"vmkit-{spec.proto}-{spec.host_port}"


def _spec_of(rule: NatRule) -> ForwardSpec:
    # An empty host IP is VirtualBox's "every address"; say so instead of hiding it.
    return ForwardSpec(
        host_port=rule.host_port,
        guest_port=rule.guest_port,
        proto=rule.proto,
        host_ip=rule.host_ip or "0.0.0.0",
        mechanism=NatPF.name,
    )


class NatPF:
    """Forwards of one VirtualBox VM, on NAT card ``nic`` (1, as vmkit and docker-machine set up)."""

    name = "natpf"

    def __init__(
        self, vbm: VBoxManage, vm: str, *, nic: int = 1, progress: Progress = no_progress
    ) -> None:
        self.vbm = vbm
        self.vm = vm
        self.nic = nic
        self.progress = progress

    def _rules(self) -> tuple[bool, list[NatRule]]:
        info = self.vbm.info(self.vm)
        return info.running, info.rules_of(self.nic)

    def add(self, spec: ForwardSpec) -> ForwardSpec:
        """Add the rule; live when the VM runs, else saved for its next start."""
        if spec.proto not in ("tcp", "udp"):
            raise InvalidInput(
                f"protocol {spec.proto!r} cannot be forwarded", hint="use tcp or udp"
            )
        if not (1 <= spec.host_port <= 65535 and 1 <= spec.guest_port <= 65535):
            raise InvalidInput(
                f"port {spec.host_port}:{spec.guest_port} is out of range", hint="use 1-65535"
            )
        host_ip = spec.host_ip or "127.0.0.1"
        running, rules = self._rules()
        for r in rules:
            if r.proto == spec.proto and r.host_port == spec.host_port:
                if r.guest_port == spec.guest_port and (r.host_ip or "0.0.0.0") == host_ip:
                    raise ForwardExists(
                        f"host port {spec.host_port} is already forwarded to guest port {r.guest_port} "
                        f"of VM {self.vm!r}",
                        hint="nothing to do; see `vmkit forwards`",
                    )
                raise PortInUse(
                    f"host port {spec.host_port} is already forwarded to guest port {r.guest_port} "
                    f"of VM {self.vm!r} (rule {r.name!r})"
                )
        if not host_port_free(host_ip, spec.host_port, spec.proto):
            raise PortInUse(f"host port {spec.host_port} ({host_ip}) is in use by another program")
        fields = [
            rule_name(spec),
            spec.proto,
            host_ip,
            str(spec.host_port),
            "",
            str(spec.guest_port),
        ]
        self.vbm.natpf(self.vm, running=running, nic=self.nic, rule=fields)
        if not running:
            self.progress(
                f"VM {self.vm!r} is stopped: forward of host port {spec.host_port} saved, applied at next start"
            )
        return attrs.evolve(spec, host_ip=host_ip, mechanism=self.name)

    def remove(self, spec: ForwardSpec) -> None:
        """Delete the rule holding ``spec``'s host port (vmkit's or one made by another tool)."""
        running, rules = self._rules()
        for r in rules:
            if r.name != SSH_RULE and r.proto == spec.proto and r.host_port == spec.host_port:
                self.vbm.natpf(self.vm, running=running, nic=self.nic, rule=None, delete=r.name)

    def active(self) -> list[ForwardSpec]:
        """The NAT rules of the card, except the SSH rule, as forward specs."""
        _, rules = self._rules()
        return [_spec_of(r) for r in rules if r.name != SSH_RULE]
