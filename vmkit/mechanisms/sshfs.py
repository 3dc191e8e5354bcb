"""Reverse sshfs: works on any SSH host; the VM's agent keeps the session alive.

The host runs ``sftp-server``; the guest runs ``sshfs -o passive`` over one SSH channel, so
the guest never needs to reach the host over the network. Slower than virtio-fs under TCG
(2-3 MiB/s: the guest does the crypto), but available everywhere.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs

from vmkit.agent.client import request
from vmkit.errors import NotSupported
from vmkit.guest.ssh import SSHSession
from vmkit.state import ShareSpec, VMRecord


@attrs.define
class ReverseSSHFS:
    record: VMRecord
    ssh: Callable[[], SSHSession]
    name: str = "sshfs"

    def check(self) -> None:
        from vmkit.agent.pump import find_sftp_server

        find_sftp_server()
        if not self.ssh().run(["sh", "-c", "command -v sshfs"], check=False).ok:
            raise NotSupported("the guest has no sshfs", hint="install sshfs in the guest")

    def add(self, spec: ShareSpec) -> ShareSpec:
        return ShareSpec(**request(self.record.files, "add-share", spec=attrs.asdict(spec)))

    def remove(self, spec: ShareSpec) -> None:
        request(self.record.files, "remove-share", spec=attrs.asdict(spec))

    def active(self) -> list[ShareSpec]:
        found = request(self.record.files, "list-shares", start=False) or []
        return [ShareSpec(**s) for s in found]
