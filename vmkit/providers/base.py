"""The provider protocol: a few primitives plus capability flags (after Lima's driver).

A provider creates, starts, stops, destroys and reports on machines. What it can do besides
is declared in ``Capabilities``; share and forward *mechanisms* live in ``vmkit.mechanisms``
and a provider only says which of them it offers, best first.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import attrs

from vmkit.progress import Progress

if TYPE_CHECKING:
    from vmkit.guest.ssh import SSHSession
    from vmkit.mechanisms.base import ForwardMechanism, ShareMechanism
    from vmkit.state import VMRecord


class VMState(enum.StrEnum):
    """What a VM is doing, read from the real hypervisor each time."""

    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    PAUSED = "paused"
    SAVED = "saved"
    #: Parts exist but do not add up (a crash mid-create, a dead process with a live pid file).
    BROKEN = "broken"
    UNKNOWN = "unknown"


@attrs.frozen
class Status:
    """A VM's state plus what made it so (for BROKEN, the errors found)."""

    state: VMState
    detail: str = ""
    errors: tuple[str, ...] = ()
    pid: int | None = None

    @property
    def running(self) -> bool:
        return self.state is VMState.RUNNING


#: The ``extra`` key of a VM record whose current run was resumed from a saved boot (QEMU's quick
#: start), not booted: its console shows no boot.
RESUMED_KEY = "resumed_from"


@attrs.frozen
class Capabilities:
    """What a provider can do. Mechanism names are best first."""

    create: bool = True  # can make new VMs (an adopted machine's provider may not)
    destroy: bool = True
    power: bool = True  # can boot and shut down its machines
    share_mechanisms: tuple[str, ...] = ()
    forward_mechanisms: tuple[str, ...] = ()
    #: Forwards and shares may be added to a stopped VM (they take effect when it starts).
    offline_changes: bool = False
    #: Boots with a QEMU accelerator chosen per boot (``record.extra["accel"]``).
    accelerators: bool = False
    #: Writes the guest's serial console to ``files.serial_log`` (read by the boot watchdog).
    console_log: bool = False


class Provider(Protocol):
    """A machine backend. Implementations: QEMU, VirtualBox, Vagrant, plain SSH host."""

    name: str
    capabilities: Capabilities

    def create(self, record: VMRecord, progress: Progress) -> None:
        """Make the machine's disk and definition from ``record`` (its folder exists)."""

    def start(self, record: VMRecord, progress: Progress) -> None:
        """Boot the machine; returns once the hypervisor runs it (not when SSH is up)."""

    def stop(self, record: VMRecord, *, timeout: float, force: bool = False) -> None:
        """Graceful shutdown, forced after ``timeout`` seconds (at once with ``force``)."""

    def destroy(self, record: VMRecord) -> None:
        """Stop if needed and remove everything the provider made, outside vmkit's folder too."""

    def status(self, record: VMRecord, *, ask_guest: bool = True) -> Status:
        """The real state, from the hypervisor, never from a cache.

        ``ask_guest=False``: what the hypervisor alone tells, without connecting to the guest
        (whose SSH is what tells RUNNING from STARTING where the hypervisor cannot): for boot
        probes, which connect themselves, and whose every extra connection made before the
        guest's network is up reaches its sshd later anyway (QEMU's user networking retries it).
        """

    def share_mechanisms(
        self, record: VMRecord, ssh: Callable[[], SSHSession]
    ) -> list[ShareMechanism]:
        """The share mechanisms this VM offers now, best first."""

    def forward_mechanisms(
        self, record: VMRecord, ssh: Callable[[], SSHSession]
    ) -> list[ForwardMechanism]:
        """The forward mechanisms this VM offers now, best first."""
