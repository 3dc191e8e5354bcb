"""NAT facts shared by the provider and the natpf mechanism."""

from __future__ import annotations

from vmkit.host.netutil import free_port, port_is_free

#: The rule that carries SSH to the guest (vmkit's, docker-machine's and Vagrant's name for it).
SSH_RULE = "ssh"

__all__ = ["SSH_RULE", "free_port", "host_port_free"]


def host_port_free(host_ip: str, port: int, proto: str = "tcp") -> bool:
    """True if nothing on this computer holds ``host_ip:port`` right now.

    VirtualBox does not report a host port it cannot bind (it logs it and the rule silently
    does nothing), so vmkit checks before it adds a rule.
    """
    return port_is_free(port, host_ip or "0.0.0.0", proto)
