"""NAT facts shared by the provider and the natpf mechanism."""

from __future__ import annotations

import errno
import socket

#: The rule that carries SSH to the guest (vmkit's, docker-machine's and Vagrant's name for it).
SSH_RULE = "ssh"


def host_port_free(host_ip: str, port: int, proto: str = "tcp") -> bool:
    """True if nothing on this computer holds ``host_ip:port`` right now.

    VirtualBox does not report a host port it cannot bind (it logs it and the rule silently
    does nothing), so vmkit checks before it adds a rule.
    """
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as s:
        try:
            s.bind((host_ip or "0.0.0.0", port))
        except OSError as e:
            if e.errno in (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL):
                return False
            raise
    return True


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
