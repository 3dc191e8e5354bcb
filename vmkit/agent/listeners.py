"""Guest-listener auto-forward (``vmkit forward --auto on``), run inside the VM's agent.

Every ``PERIOD`` seconds the agent reads ``/proc/net/tcp`` and ``/proc/net/tcp6`` in the
guest over its kept SSH connection (one short ``cat``, no daemon in the guest, works with
busybox) and diffs the listening sockets against the last look: a new listener is forwarded
from the same port on the host's 127.0.0.1, a closed one loses its forward. Listeners on all
addresses go through the provider's fastest mechanism (QEMU hostfwd, VirtualBox natpf);
listeners on the guest's loopback only through an SSH tunnel, the one mechanism that reaches
them. Ports vmkit forwards already (the user's, a container's) and sshd's are left alone.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Protocol

from vmkit.errors import ForwardNotFound, VmkitError
from vmkit.guest.ssh import SSHSession
from vmkit.host.netutil import port_is_free
from vmkit.state import ForwardSpec

__all__ = ["PERIOD", "ListenerWatcher", "parse_proc_net_tcp"]

PERIOD = 0.5
_LISTEN = "0A"
_LOOPBACK4 = "0100007F"
_LOOPBACK6 = "00000000000000000000000001000000"


class VM(Protocol):
    """What the watcher needs of ``vmkit.VM`` (handed in by the agent's process)."""

    def ssh(self) -> SSHSession: ...

    def forwards(self) -> list[ForwardSpec]: ...

    def active_forwards(self) -> list[ForwardSpec]: ...

    def forward(
        self,
        host_port: int,
        guest_port: int | None = None,
        *,
        mechanism: str | None = None,
        auto: str = "",
        owner: str = "",
    ) -> ForwardSpec: ...

    def unforward(self, host_port: int, *, proto: str = "tcp") -> ForwardSpec: ...


def parse_proc_net_tcp(text: str) -> dict[int, bool]:
    """Listening TCP ports in ``/proc/net/tcp{,6}`` text → whether only loopback listens."""
    found: dict[int, bool] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 4 or fields[3] != _LISTEN or ":" not in fields[1]:
            continue
        addr, _, port_hex = fields[1].partition(":")
        try:
            port = int(port_hex, 16)
        except ValueError:
            continue
        loopback = addr in (_LOOPBACK4, _LOOPBACK6)
        found[port] = found.get(port, True) and loopback
    return found


class ListenerWatcher:
    """Polls the guest's listening sockets and keeps a forward for each."""

    def __init__(self, vm: Callable[[], VM], *, log: Callable[[str], None] = lambda _: None):
        self.vm = vm
        self.log = log
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._first = True

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def stop(self, *, remove: bool = True) -> None:
        """Stop watching; with ``remove``, also remove the forwards it made. The agent's own
        shutdown (the VM stops, holding its lock) leaves them: they die with the VM, and the
        record's entries are dropped at the next start (``VM.start``)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
        if not remove:
            return
        with contextlib.suppress(VmkitError):
            vm = self.vm()
            for f in vm.forwards():
                if f.auto == "listener":
                    with contextlib.suppress(ForwardNotFound):
                        vm.unforward(f.host_port, proto=f.proto)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll()
            except Exception as e:  # the VM restarts, SSH breaks: look again next time
                self.log(f"listener watch: {type(e).__name__}: {e}")
                self._stop.wait(2)
            self._stop.wait(PERIOD)

    def poll(self) -> None:
        """One look at the guest, and the forwards brought up to date."""
        vm = self.vm()
        res = vm.ssh().run(["cat", "/proc/net/tcp", "/proc/net/tcp6"], check=False, timeout=10)
        listening = parse_proc_net_tcp(res.stdout)
        listening.pop(22, None)
        mine = {f.host_port: f for f in vm.forwards() if f.auto == "listener"}
        if self._first:
            # Entries from before a VM restart are in the record but not in the VM.
            active = {f.key for f in vm.active_forwards()}
            for port, f in list(mine.items()):
                if f.key not in active:
                    with contextlib.suppress(ForwardNotFound):
                        vm.unforward(port, proto=f.proto)
                    del mine[port]
            self._first = False
        taken = {f.guest_port for f in vm.forwards() if f.auto != "listener"}
        for port, f in mine.items():
            if port not in listening or port in taken:
                self.log(f"guest port {port} closed: removing its forward")
                with contextlib.suppress(ForwardNotFound):
                    vm.unforward(port, proto=f.proto)
        for port, loopback in sorted(listening.items()):
            if port in mine or port in taken or port < 1024 or not port_is_free(port):
                continue
            self.log(f"guest port {port} listens: forwarding it")
            try:
                vm.forward(
                    port,
                    port,
                    auto="listener",
                    owner=str(port),
                    mechanism="ssh-tunnel" if loopback else None,
                )
            except VmkitError as e:
                self.log(f"cannot forward guest port {port}: {e}")
