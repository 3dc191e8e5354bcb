"""NAT facts shared by the provider and the natpf mechanism."""

from __future__ import annotations

from vmkit.host.netutil import free_port, port_is_free
from vmkit.providers.virtualbox.parsers import NatRule, VMInfo

#: The rule that carries SSH to the guest (vmkit's, docker-machine's and Vagrant's name for it).
SSH_RULE = "ssh"

__all__ = ["SSH_RULE", "free_port", "host_port_free", "ssh_rule"]


def host_port_free(host_ip: str, port: int, proto: str = "tcp") -> bool:
    """True if nothing on this computer holds ``host_ip:port`` right now.

    VirtualBox does not report a host port it cannot bind (it logs it and the rule silently
    does nothing), so vmkit checks before it adds a rule.
    """
    return port_is_free(port, host_ip or "0.0.0.0", proto)


def ssh_rule(info: VMInfo, ssh_port: int | None = None) -> NatRule | None:
    """The NAT rule that reaches the guest's sshd.

    The rule to host port ``ssh_port`` (the one vmkit's record uses) if there is one; else the
    rule named "ssh" (vmkit, docker-machine, Vagrant); else the first TCP rule to guest port 22,
    on any NAT card.
    """
    rules = info.rules
    if ssh_port:
        pinned = [r for r in rules if r.proto == "tcp" and r.host_port == ssh_port]
        if pinned:
            return pinned[0]
    to22 = [r for r in rules if r.proto == "tcp" and r.guest_port == 22]
    named = [r for r in to22 if r.name == SSH_RULE]
    candidates = named or to22
    return candidates[0] if candidates else None
