"""Every error vmkit raises, in one tree.

Each error carries a message that says what failed and a ``hint`` that says what to do about
it. Third-party exceptions (paramiko, qemu.qmp, docker, subprocess) are translated where they
are caught into the most specific class below and chained with ``from``.

::

    VmkitError
    ├── InvalidInput                    bad name, port, path, size ... from the user
    │   ├── InvalidName
    │   ├── NameAmbiguous               a name that fits several machines (name of one, UUID of another)
    │   ├── FileDamaged                 a file missing, cut short or changed: expected vs found
    │   └── FormatTooNew                a manifest written by a newer vmkit
    ├── NotFound
    │   ├── VMNotFound
    │   ├── BoxNotFound
    │   ├── ShareNotFound
    │   └── ForwardNotFound
    ├── AlreadyExists
    │   ├── VMExists
    │   ├── ShareExists
    │   └── ForwardExists
    ├── StateError                      the VM is not in a state that allows the call
    │   ├── VMNotRunning
    │   ├── VMUnreachable               it was up, and its SSH stopped answering
    │   ├── VMAmbiguous                 no VM named and several run
    │   ├── ShareBusy                   a guest mount in use (by a container) cannot be removed
    │   └── VMLocked                    another vmkit (or VirtualBox session) holds the VM
    ├── PortInUse
    ├── NotSupported                    the provider lacks the capability
    │   └── ArchMismatch                a bundle or image for an architecture this host/VM cannot run
    ├── NotEnoughSpace                  a disk (host or VM) has less room than the work needs
    ├── ToolError                       an external program
    │   ├── ToolMissing
    │   ├── CommandFailed               carries the whole Result
    │   └── CommandTimeout
    ├── ProviderError
    │   ├── HardwareVirtualizationUnavailable
    │   │   └── AcceleratorFailed       the accelerator could not run the VM's kernel
    │   ├── VMInaccessible              the hypervisor lists the VM but cannot read its settings
    │   ├── QMPError
    │   └── BootTimeout                 its message is read from the console log
    │       └── ConsoleSilent           the kernel never printed a line
    ├── BoxError                        building or reading a box
    │   ├── BoxCorrupt
    │   └── BoxBuildFailed
    ├── GuestError
    │   ├── SSHError
    │   │   ├── HostKeyMismatch
    │   │   └── HostKeyUnknown          not in known_hosts, no fingerprint to check
    │   ├── GuestCommandFailed
    │   └── GuestModuleMissing
    └── DockerError
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vmkit.host.runner import Result


class VmkitError(Exception):
    """Root of every vmkit error. ``str(err)`` is one line; ``err.hint`` says what to do."""

    default_hint = ""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = self.default_hint if hint is None else hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} ({self.hint})"
        return self.message


class InvalidInput(VmkitError):
    """A value given by the user is not acceptable."""


class InvalidName(InvalidInput):
    """A VM, box or student name has characters vmkit cannot use."""


class NameAmbiguous(InvalidInput):
    """A name given by the user fits more than one machine."""

    default_hint = "name the machine by its UUID instead"


class FileDamaged(InvalidInput):
    """A file is missing, shorter or longer than recorded, or its sha256 differs."""

    default_hint = "copy it again from its source"


class FormatTooNew(InvalidInput):
    """A manifest says it was written in a newer format than this vmkit reads."""

    default_hint = "upgrade vmkit (`pip install -U vmkit`) and try again"


class NotFound(VmkitError):
    """Something named does not exist."""


class VMNotFound(NotFound):
    default_hint = "see `vmkit list` for the VMs that exist"


class BoxNotFound(NotFound):
    default_hint = "build it with `vmkit box build`"


class ShareNotFound(NotFound):
    default_hint = "see `vmkit shares` for what is shared"


class ForwardNotFound(NotFound):
    default_hint = "see `vmkit forwards` for what is forwarded"


class AlreadyExists(VmkitError):
    """Something with that name or key exists already."""


class VMExists(AlreadyExists):
    default_hint = "pick another name, or `vmkit destroy` the old VM first"


class ShareExists(AlreadyExists):
    pass


class ForwardExists(AlreadyExists):
    pass


class StateError(VmkitError):
    """The VM is not in a state that allows this call."""


class VMNotRunning(StateError):
    default_hint = "start it with `vmkit start NAME`"


class VMUnreachable(StateError):
    """The VM answered SSH since it booted and does not now: it is not booting, so no wait."""


class VMAmbiguous(StateError):
    default_hint = "name one with --vm NAME"


class ShareBusy(StateError):
    """A guest mount vmkit must remove is in use; the message names the processes holding it."""


class VMLocked(StateError):
    default_hint = "wait for the other command to finish, then try again"


class PortInUse(VmkitError):
    default_hint = "pick another host port, or stop what is listening on it"


class NotSupported(VmkitError):
    """The provider or guest lacks a capability the call needs."""


class ArchMismatch(NotSupported):
    """A bundle or an image is for an architecture this host or VM cannot run."""


class NotEnoughSpace(VmkitError):
    """A disk has less free room than the work needs; said before anything is written."""

    default_hint = "free that much space (e.g. `vmkit docker -- system prune`) or use a bigger disk"


class ToolError(VmkitError):
    """An external program could not be run or failed."""


class ToolMissing(ToolError):
    def __init__(self, program: str, *, package: str | None = None, hint: str | None = None):
        if hint is None and package:
            hint = f"install it, e.g. `apt-get install {package}`"
        super().__init__(f"{program} is not installed or not on PATH", hint=hint)
        self.program = program
        self.package = package


class CommandFailed(ToolError):
    """A program exited non-zero and no known error text matched. Carries the ``Result``."""

    def __init__(self, result: Result, *, message: str | None = None, hint: str | None = None):
        super().__init__(message or _describe_failure(result), hint=hint)
        self.result = result


class CommandTimeout(ToolError):
    def __init__(self, argv: list[str], timeout: float, *, hint: str | None = None) -> None:
        super().__init__(f"`{_short(argv)}` did not finish within {timeout:g} s", hint=hint)
        self.argv = argv
        self.timeout = timeout


class ProviderError(VmkitError):
    """A hypervisor or VM manager refused or failed."""


class HardwareVirtualizationUnavailable(ProviderError):
    """VT-x / AMD-V is off, missing, or taken by another hypervisor."""


class AcceleratorFailed(HardwareVirtualizationUnavailable):
    """QEMU started with the accelerator, but the VM's kernel did not run (proven by booting)."""


class VMInaccessible(ProviderError):
    """The hypervisor has the VM registered but cannot read its settings (moved or deleted files)."""

    default_hint = (
        "open VirtualBox to see why (a moved or deleted VM folder, an unplugged disk); "
        "fix it there or remove the VM, then try again"
    )


class QMPError(ProviderError):
    """QEMU's monitor refused a command; keeps what was sent and what came back."""

    def __init__(
        self, message: str, *, sent: Any = None, received: Any = None, hint: str | None = None
    ):
        super().__init__(message, hint=hint)
        self.sent = sent
        self.received = received


class BootTimeout(ProviderError):
    """The guest did not get ready in time; the message says how far it got, from its console."""


class ConsoleSilent(BootTimeout):
    """The guest's serial console stayed empty: its kernel never ran."""


class QuickStartFailed(ProviderError):
    """A VM could not be resumed from its box's saved boot; vmkit boots it instead."""


class BoxError(VmkitError):
    """Building or reading a box (kernel, initrd, disk image) failed."""


class BoxCorrupt(BoxError):
    default_hint = "rebuild it with `vmkit box build NAME --arch ARCH --force`"


class BoxBuildFailed(BoxError):
    """A box build step failed; the half-built box was removed."""


class GuestError(VmkitError):
    """Something inside the guest failed."""


class SSHError(GuestError):
    pass


class HostKeyMismatch(SSHError):
    default_hint = (
        "the guest presented a host key other than the one pinned for this VM; "
        "if you rebuilt the guest on purpose, `vmkit attach` it again"
    )


class HostKeyUnknown(SSHError):
    """An SSH machine's host key is in no known_hosts and no fingerprint was given to check it."""


class GuestCommandFailed(GuestError):
    def __init__(
        self, argv: list[str], exit_code: int, stdout: str, stderr: str, *, hint: str | None = None
    ):
        tail = (stderr.strip() or stdout.strip()).splitlines()[-3:]
        detail = ": " + " / ".join(tail) if tail else ""
        super().__init__(
            f"`{_short(argv)}` failed in the guest (exit {exit_code}){detail}", hint=hint
        )
        self.argv = argv
        self.exit_code = exit_code
        self.stdout = stdout
        self.stderr = stderr


class GuestModuleMissing(GuestError):
    pass


class DockerError(VmkitError):
    """The Docker engine in the VM refused or failed."""


def _short(argv: list[str], limit: int = 120) -> str:
    import shlex

    text = shlex.join(argv)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe_failure(result: Result) -> str:
    tail = (result.stderr.strip() or result.stdout.strip()).splitlines()[-3:]
    detail = ": " + " / ".join(tail) if tail else ""
    return f"`{_short(result.argv)}` exited {result.exit_code}{detail}"
