"""SSH-tunnel forwards (paramiko direct-tcpip), kept by the VM's agent: any SSH host."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import attrs

from vmkit.agent.client import request
from vmkit.guest.ssh import SSHSession
from vmkit.mechanisms.base import Leftover
from vmkit.state import ForwardSpec, VMRecord


@attrs.define
class SSHTunnel:
    record: VMRecord
    ssh: Callable[[], SSHSession]
    name: str = "ssh-tunnel"

    def add(self, spec: ForwardSpec) -> ForwardSpec:
        return ForwardSpec(**request(self.record.files, "add-forward", spec=attrs.asdict(spec)))

    def remove(self, spec: ForwardSpec) -> None:
        request(self.record.files, "remove-forward", start=False, spec=attrs.asdict(spec))

    def active(self) -> list[ForwardSpec]:
        found = request(self.record.files, "list-forwards", start=False) or []
        return [ForwardSpec(**f) for f in found]

    def leftovers(self, wanted: Sequence[ForwardSpec]) -> list[Leftover]:
        """Tunnels the agent holds that none of ``wanted`` is."""
        keep = {f.key for f in wanted if f.mechanism == self.name}
        return [
            Leftover(
                self.name, f"SSH tunnel on {f.host_ip}:{f.host_port} in vmkit's agent", forward=f
            )
            for f in self.active()
            if f.key not in keep
        ]
