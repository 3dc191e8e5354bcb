"""QEMU user-mode networking forwards, added and removed live through QMP (~1 ms).

QEMU answers ``hostfwd_add``/``hostfwd_remove`` with free text and a success status even when
it failed, so the text is what is checked.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import attrs

from vmkit.errors import PortInUse, QMPError
from vmkit.mechanisms.base import Leftover
from vmkit.providers.qemu.argv import NETDEV_ID
from vmkit.providers.qemu.qmp import QMP
from vmkit.state import ForwardSpec, VMRecord

_USERNET_FWD = re.compile(
    r"^\s*(TCP|UDP)\[HOST_FORWARD\]\s+\S+\s+(\S+)\s+(\d+)\s+(\S+)\s+(\d+)", re.MULTILINE
)


def parse_usernet(text: str) -> list[tuple[str, str, int, int]]:
    """(proto, host_ip, host_port, guest_port) of each forward in ``info usernet`` output."""
    return [
        (m.group(1).lower(), m.group(2), int(m.group(3)), int(m.group(5)))
        for m in _USERNET_FWD.finditer(text)
    ]


@attrs.define
class HostFwd:
    """Forwards through QEMU's own user-mode network stack: no SSH, no guest CPU for crypto."""

    record: VMRecord
    name: str = "hostfwd"

    def _hmp(self, line: str) -> str:
        with QMP.for_vm(self.record) as q:
            return q.hmp(line).strip()

    def add(self, spec: ForwardSpec) -> ForwardSpec:
        rule = f"{spec.proto}:{spec.host_ip}:{spec.host_port}-:{spec.guest_port}"
        out = self._hmp(f"hostfwd_add {NETDEV_ID} {rule}")
        if "Could not set up host forwarding rule" in out:
            raise PortInUse(
                f"QEMU could not listen on {spec.host_ip}:{spec.host_port}/{spec.proto}: {out}"
            )
        if out:
            raise QMPError(f"hostfwd_add {rule} failed: {out}", sent=rule, received=out)
        return attrs.evolve(spec, mechanism=self.name)

    def remove(self, spec: ForwardSpec) -> None:
        out = self._hmp(f"hostfwd_remove {NETDEV_ID} {spec.proto}:{spec.host_ip}:{spec.host_port}")
        if out and "removed" not in out and "not found" not in out:
            raise QMPError(f"hostfwd_remove of port {spec.host_port} failed: {out}", received=out)

    def active(self) -> list[ForwardSpec]:
        ssh_port = self.record.ssh.port if self.record.ssh else -1
        return [
            ForwardSpec(host_port=hp, guest_port=gp, proto=proto, host_ip=ip, mechanism=self.name)
            for proto, ip, hp, gp in parse_usernet(self._hmp("info usernet"))
            if not (proto == "tcp" and hp == ssh_port and gp == 22)
        ]

    def leftovers(self, wanted: Sequence[ForwardSpec]) -> list[Leftover]:
        """QEMU's forwarding rules none of ``wanted`` accounts for (the SSH rule excepted)."""
        keep = {f.key for f in wanted if f.mechanism == self.name}
        return [
            Leftover(self.name, f"hostfwd rule {f.proto}:{f.host_ip}:{f.host_port}", forward=f)
            for f in self.active()
            if f.key not in keep
        ]
