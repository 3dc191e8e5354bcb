"""Port forwards through VirtualBox's NAT engine (``natpf`` rules on NAT network cards).

Running VM: ``controlvm VM natpfN RULE`` takes effect at once (and is saved). Stopped VM:
``modifyvm VM --natpfN RULE`` saves it and it applies at the next start. VirtualBox does not
report a host port that something else already listens on (it logs the failed bind and the
rule silently does nothing), so the port is checked here first.

Rules are read from every NAT card; new ones go on the card that carries SSH, else the first
NAT card. The rule that carries SSH is never reported as a forward, and removing it needs
``force``: without it vmkit (and the user) lose the way into the guest.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from vmkit.errors import ForwardExists, InvalidInput, NotSupported, PortInUse
from vmkit.host.faults import point
from vmkit.mechanisms.base import Leftover
from vmkit.progress import Progress, no_progress
from vmkit.providers.virtualbox.nat import host_port_free, ssh_rule
from vmkit.providers.virtualbox.parsers import NatRule, VMInfo
from vmkit.providers.virtualbox.vboxmanage import VBoxManage
from vmkit.state import ForwardSpec

#: Names of the rules vmkit makes start with this.
RULE_PREFIX = "vmkit-"


def rule_name(spec: ForwardSpec) -> str:
    """The VirtualBox rule name vmkit gives a forward: ``vmkit-tcp-8080``."""
    return f"{RULE_PREFIX}{spec.proto}-{spec.host_port}"


def _spec_of(rule: NatRule) -> ForwardSpec:
    # An empty host IP is VirtualBox's "every address"; say so instead of hiding it.
    return ForwardSpec(
        host_port=rule.host_port,
        guest_port=rule.guest_port,
        proto=rule.proto,
        host_ip=rule.host_ip or "0.0.0.0",
        mechanism=NatPF.name,
    )


@attrs.frozen
class RuleView:
    """One NAT rule of a VM as ``vmkit forwards`` shows it."""

    rule: NatRule
    ssh: bool  # the rule vmkit uses to reach the guest's sshd
    by_vmkit: bool  # made by vmkit (its name, or a forward vmkit has on record)

    @property
    def role(self) -> str:
        if self.ssh:
            return "ssh"
        return "vmkit" if self.by_vmkit else "other"


class NatPF:
    """Forwards of one VirtualBox VM, on its NAT cards.

    ``nic`` fixes the card new rules go on; by default the card of the SSH rule, else the first
    NAT card. ``ssh_port`` is the host port vmkit reaches SSH on, if it knows one.
    """

    name = "natpf"

    def __init__(
        self,
        vbm: VBoxManage,
        vm: str,
        *,
        nic: int | None = None,
        ssh_port: int | None = None,
        known: frozenset[tuple[str, int]] = frozenset(),
        progress: Progress = no_progress,
    ) -> None:
        self.vbm = vbm
        self.vm = vm
        self.nic = nic
        self.ssh_port = ssh_port
        self.known = known  # (proto, host port) of the forwards vmkit has on record
        self.progress = progress

    def _info(self) -> VMInfo:
        return self.vbm.info(self.vm)

    def _nic_for_new(self, info: VMInfo) -> int:
        if self.nic is not None:
            return self.nic
        ssh = ssh_rule(info, self.ssh_port)
        if ssh is not None:
            return ssh.nic
        if info.nat_nics:
            return info.nat_nics[0]
        raise NotSupported(
            f"VirtualBox VM {self.vm!r} has no network card attached to NAT, and only NAT "
            "cards forward ports",
            hint="set one of its cards to NAT in VirtualBox (with the VM stopped), "
            "or forward through SSH (--mechanism ssh-tunnel)",
        )

    def rules(self) -> list[RuleView]:
        """Every NAT rule of every card, the SSH rule and vmkit's own marked."""
        info = self._info()
        ssh = ssh_rule(info, self.ssh_port)
        return [
            RuleView(
                rule=r,
                ssh=r is ssh,
                by_vmkit=r.name.startswith(RULE_PREFIX) or (r.proto, r.host_port) in self.known,
            )
            for r in info.rules
        ]

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
        info = self._info()
        nic = self._nic_for_new(info)
        for r in info.rules:
            if r.proto == spec.proto and r.host_port == spec.host_port:
                if r.guest_port == spec.guest_port and (r.host_ip or "0.0.0.0") == host_ip:
                    raise ForwardExists(
                        f"host port {spec.host_port} is already forwarded to guest port {r.guest_port} "
                        f"of VM {self.vm!r}",
                        hint="nothing to do; see `vmkit forwards`",
                    )
                raise PortInUse(
                    f"host port {spec.host_port} is already forwarded to guest port {r.guest_port} "
                    f"of VM {self.vm!r} (rule {r.name!r} on NIC {r.nic})"
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
        self.vbm.natpf(self.vm, running=info.running, nic=nic, rule=fields)
        point("natpf:rule")
        if not info.running:
            self.progress(
                f"VM {self.vm!r} is stopped: forward of host port {spec.host_port} saved, applied at next start"
            )
        return attrs.evolve(spec, host_ip=host_ip, mechanism=self.name)

    def remove(self, spec: ForwardSpec) -> None:
        """Delete the rules holding ``spec``'s host port, never the SSH rule."""
        self.remove_rules(spec)

    def remove_rules(self, spec: ForwardSpec, *, force: bool = False) -> list[NatRule]:
        """Delete the rules holding ``spec``'s host port (vmkit's or another tool's).

        The SSH rule is left alone unless ``force``; ``InvalidInput`` says so when it is the
        only rule asked for. Returns the rules removed.
        """
        info = self._info()
        ssh = ssh_rule(info, self.ssh_port)
        hits = [r for r in info.rules if r.proto == spec.proto and r.host_port == spec.host_port]
        if not force and ssh is not None and ssh in hits:
            hits.remove(ssh)
            if not hits:
                raise InvalidInput(
                    f"host port {spec.host_port} is the NAT rule {ssh.name!r} that carries SSH to VM "
                    f"{self.vm!r}; without it vmkit cannot reach the guest",
                    hint="pass --force to remove it anyway",
                )
        for r in hits:
            self.vbm.natpf(self.vm, running=info.running, nic=r.nic, rule=None, delete=r.name)
        return hits

    def active(self) -> list[ForwardSpec]:
        """The NAT rules of every card, except the SSH rule, as forward specs."""
        info = self._info()
        ssh = ssh_rule(info, self.ssh_port)
        return [_spec_of(r) for r in info.rules if r is not ssh]

    def leftovers(self, wanted: Sequence[ForwardSpec]) -> list[Leftover]:
        """Rules named by vmkit (``vmkit-PROTO-PORT``) that none of ``wanted`` accounts for;
        rules of other tools are theirs, and the SSH rule is never one."""
        keep = {f.key for f in wanted}
        info = self._info()
        ssh = ssh_rule(info, self.ssh_port)
        return [
            Leftover(self.name, f"NAT rule {r.name!r} on NIC {r.nic}", forward=_spec_of(r))
            for r in info.rules
            if r.name.startswith(RULE_PREFIX)
            and r is not ssh
            and (r.proto, r.host_port) not in keep
        ]
