"""Reverse sshfs: works on any SSH host; the VM's agent keeps the session alive.

The guest runs ``sshfs -o passive`` over one SSH channel, answered by an SFTP server in the
agent that is confined to the share (vmkit/agent/sftpjail.py), so the guest never needs to reach the host over the network. Slower than virtio-fs under TCG
(2-3 MiB/s: the guest does the crypto), but available everywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import attrs

from vmkit.agent.client import request
from vmkit.errors import NotSupported
from vmkit.guest.ssh import SSHSession
from vmkit.mechanisms.base import Leftover, guest_mounts
from vmkit.state import ShareSpec, VMRecord


@attrs.define
class ReverseSSHFS:
    record: VMRecord
    ssh: Callable[[], SSHSession]
    name: str = "sshfs"

    def check(self) -> None:
        if not self.ssh().run(["sh", "-c", "command -v sshfs"], check=False).ok:
            raise NotSupported("the guest has no sshfs", hint="install sshfs in the guest")

    def planned(self, spec: ShareSpec) -> ShareSpec:
        return attrs.evolve(spec, mechanism=self.name, tag=spec.tag or "sshfs")

    def add(self, spec: ShareSpec) -> ShareSpec:
        return ShareSpec(**request(self.record.files, "add-share", spec=attrs.asdict(spec)))

    def remove(self, spec: ShareSpec) -> None:
        request(self.record.files, "remove-share", spec=attrs.asdict(spec))

    def active(self) -> list[ShareSpec]:
        found = request(self.record.files, "list-shares", start=False) or []
        return [ShareSpec(**s) for s in found]

    def leftovers(self, wanted: Sequence[ShareSpec]) -> list[Leftover]:
        """Sessions the agent holds and sshfs mounts in the guest that none of ``wanted`` is."""
        keep = {s.target for s in wanted if s.mechanism == self.name}
        held = {s.target: s for s in self.active()}
        out = [
            Leftover(self.name, f"sshfs session for {t} in vmkit's agent", share=s)
            for t, s in sorted(held.items())
            if t not in keep
        ]
        for m in guest_mounts(self.ssh()):
            if m.fstype == "fuse.sshfs" and m.target not in keep and m.target not in held:
                spec = ShareSpec(m.source.lstrip(":"), m.target, mechanism=self.name, tag="sshfs")
                out.append(Leftover(self.name, f"guest mount {m.target} (sshfs)", share=spec))
        return out
