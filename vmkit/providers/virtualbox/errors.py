"""VBoxManage's known error texts, mapped to vmkit exceptions with words a user can act on.

The texts come from real recordings (tests/fixtures/vbox/errors.md quotes each with its
source). Every line VBoxManage prints starts with ``VBoxManage: error:`` (``VBoxManage.exe:``
on Windows); the patterns match the text after that, so both work.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from vmkit.errors import (
    ForwardExists,
    ForwardNotFound,
    HardwareVirtualizationUnavailable,
    InvalidInput,
    NotFound,
    PortInUse,
    ProviderError,
    ShareExists,
    ShareNotFound,
    StateError,
    ToolError,
    VMExists,
    VmkitError,
    VMLocked,
    VMNotFound,
    VMNotRunning,
)
from vmkit.host.runner import ErrorRule, Result

_QEMU = "or let vmkit use QEMU instead (`--provider qemu`: slower, but needs no VT-x/AMD-V)"

#: VirtualBox status code -> (what is wrong, what to do), for power-up failures.
HWVIRT: dict[str, tuple[str, str]] = {
    "VERR_VMX_MSR_ALL_VMX_DISABLED": (
        "Intel VT-x is switched off in this computer's BIOS/UEFI settings",
        "restart, open the BIOS/UEFI setup and enable 'Intel Virtualization Technology' (VT-x), ",
    ),
    "VERR_VMX_MSR_VMX_DISABLED": (
        "Intel VT-x is switched off in this computer's BIOS/UEFI settings",
        "restart, open the BIOS/UEFI setup and enable 'Intel Virtualization Technology' (VT-x), ",
    ),
    "VERR_SVM_DISABLED": (
        "AMD-V is switched off in this computer's BIOS/UEFI settings (or by the host OS)",
        "restart, open the BIOS/UEFI setup and enable 'SVM Mode' / AMD-V, ",
    ),
    "VERR_VMX_NO_VMX": (
        "this computer's CPU offers no Intel VT-x (or vmkit runs inside a VM without nested virtualization)",
        "enable nested virtualization if this is itself a VM, ",
    ),
    "VERR_SVM_NO_SVM": (
        "this computer's CPU offers no AMD-V (or vmkit runs inside a VM without nested virtualization)",
        "enable nested virtualization if this is itself a VM, ",
    ),
    "VERR_VMX_IN_VMX_ROOT_MODE": (
        "another hypervisor (e.g. KVM) is using VT-x",
        "stop its VMs or unload it (`sudo modprobe -r kvm_intel`), ",
    ),
    "VERR_SVM_IN_USE": (
        "another hypervisor (e.g. KVM) is using AMD-V",
        "stop its VMs or unload it (`sudo modprobe -r kvm_amd`), ",
    ),
    "VERR_NEM_NOT_AVAILABLE": (
        "Windows' Hyper-V holds the CPU's virtualization and this VirtualBox cannot run on top of it",
        "turn Hyper-V off (Windows features 'Hyper-V', 'Virtual Machine Platform', WSL 2, Memory "
        "Integrity; or `bcdedit /set hypervisorlaunchtype off` and reboot), or upgrade VirtualBox "
        "to 6.1 or newer, ",
    ),
    "VERR_NEM_VM_CREATE_FAILED": (
        "VirtualBox could not create a VM through Windows' Hyper-V",
        "turn Hyper-V off (`bcdedit /set hypervisorlaunchtype off`, reboot) or upgrade VirtualBox, ",
    ),
    "VERR_SUPDRV_NO_RAW_MODE_HYPER_V_ROOT": (
        "Windows' Hyper-V holds the CPU's virtualization",
        "turn Hyper-V off (`bcdedit /set hypervisorlaunchtype off`, reboot) or upgrade VirtualBox, ",
    ),
}


def vm_of(result: Result) -> str:
    """The VM a VBoxManage call was about, read from its argument list."""
    args = [a for a in result.argv[1:] if a not in ("-q", "--nologo")]
    if not args:
        return ""
    if args[0] in ("sharedfolder", "guestproperty") and len(args) > 2:
        return args[2]
    return args[1] if len(args) > 1 else ""


def _natpf_rule(result: Result) -> tuple[str, str]:
    """(host IP, host port) of the NAT rule in a failed modifyvm/controlvm call."""
    for arg in result.argv:
        parts = arg.rsplit(",", 5)
        if len(parts) == 6:
            return parts[2], parts[3]
    return "", "?"


def _hwvirt(result: Result, m: re.Match[str]) -> VmkitError:
    code = m.group("code")
    what, todo = HWVIRT.get(code, ("hardware virtualization is not usable", ""))
    vm = vm_of(result)
    return HardwareVirtualizationUnavailable(
        f"VirtualBox cannot start VM {vm!r}: {what} ({code})", hint=todo + _QEMU
    )


def error_rules(known_vms: Callable[[], list[str]]) -> list[ErrorRule]:
    """The table for VBoxManage. ``known_vms`` lists VirtualBox's VMs for "not found" messages."""

    def not_found(result: Result, m: re.Match[str]) -> VmkitError:
        names = known_vms()
        readable = [n for n in names if not n.startswith("<inaccessible>")]
        listing = ", ".join(repr(n) for n in readable) if readable else "none"
        hint = f"VMs VirtualBox knows: {listing}"
        broken = [n.split(" ", 1)[-1] for n in names if n.startswith("<inaccessible>")]
        if broken:
            hint += (
                f"; VirtualBox cannot read the settings of {', '.join(broken)} (maybe the one "
                "you mean): open VirtualBox to repair or remove it"
            )
        return VMNotFound(f"VirtualBox has no VM named {m.group(1)!r}", hint=hint)

    def nat_host_port(result: Result, m: re.Match[str]) -> VmkitError:
        host_ip, port = _natpf_rule(result)
        return PortInUse(
            f"host port {port} ({host_ip or 'all addresses'}) is already forwarded by another rule "
            f"of VM {vm_of(result)!r}"
        )

    return [
        ErrorRule.of(r"Could not find a registered machine named '(.*)'", not_found),
        ErrorRule.of(r"Could not find a registered machine with UUID \{?([^}\s]*)\}?", not_found),
        ErrorRule.of(
            r"(?:\(|vrc=)(?P<code>VERR_(?:VMX|SVM|NEM)_[A-Z_]+|VERR_SUPDRV_NO_RAW_MODE_HYPER_V_ROOT)\b",
            _hwvirt,
        ),
        ErrorRule.of(
            r"The machine '(.*)' is already locked by a session",
            lambda r, m: VMLocked(
                f"VirtualBox VM {m.group(1)!r} is already running or being started",
                hint="see its state with `vmkit status`; stop it first if you meant to restart it",
            ),
        ),
        ErrorRule.of(
            r"The machine '(.*)' is already locked for a session",
            lambda r, m: VMLocked(
                f"VirtualBox VM {m.group(1)!r} is in use (running, or open in another program), "
                "so its settings cannot be changed now",
                hint="stop the VM, or close the VirtualBox window or command using it, then try again",
            ),
        ),
        ErrorRule.of(
            r"Cannot unregister the machine '(.*)' while it is locked",
            lambda r, m: VMLocked(
                f"VirtualBox VM {m.group(1)!r} cannot be removed while it runs or is open elsewhere",
                hint="stop it and close the VirtualBox window, then try again",
            ),
        ),
        ErrorRule.of(
            r"A NAT rule of this name already exists",
            lambda r, m: ForwardExists(
                f"VM {vm_of(r)!r} already has a port-forwarding rule for host port {_natpf_rule(r)[1]}",
                hint="see `vmkit forwards`; remove the old forward first",
            ),
        ),
        ErrorRule.of(
            r"A NAT rule for this host port and this host IP already exists", nat_host_port
        ),
        ErrorRule.of(
            r"RemoveRedirect\(",
            lambda r, m: ForwardNotFound(f"VM {vm_of(r)!r} has no such port-forwarding rule"),
        ),
        ErrorRule.of(
            r"Shared folder named '(.*)' already exists",
            lambda r, m: ShareExists(
                f"VM {vm_of(r)!r} already has a shared folder named {m.group(1)!r}",
                hint="see `vmkit shares`; remove the old share first",
            ),
        ),
        ErrorRule.of(
            r"RTPathQueryInfo failed on shared folder path '(.*)': VERR_FILE_NOT_FOUND",
            lambda r, m: InvalidInput(
                f"the folder {m.group(1)} does not exist on this computer",
                hint="create it first, or check the spelling",
            ),
        ),
        ErrorRule.of(
            r"Shared folder path '(.*)' is not absolute",
            lambda r, m: InvalidInput(
                f"the folder {m.group(1)!r} is not a full path",
                hint="give the whole path, e.g. /home/me/data",
            ),
        ),
        ErrorRule.of(
            r"Shared folder path '(.*)' is not a directory",
            lambda r, m: InvalidInput(
                f"{m.group(1)} is a file, not a folder", hint="share a folder"
            ),
        ),
        ErrorRule.of(
            r"Could not find a shared folder named '(.*?)'\.?$",
            lambda r, m: ShareNotFound(
                f"VM {vm_of(r)!r} has no shared folder named {m.group(1)!r}"
            ),
        ),
        ErrorRule.of(
            r"Machine '(.*)' is not currently running",
            lambda r, m: VMNotRunning(f"VirtualBox VM {m.group(1)!r} is not running"),
        ),
        ErrorRule.of(
            r"Machine settings file '(.*)' already exists",
            lambda r, m: VMExists(
                f"VirtualBox already has a VM folder at {m.group(1)}",
                hint="remove that VM in VirtualBox (or its folder), or pick another name",
            ),
        ),
        ErrorRule.of(
            r"Could not rename the directory '(.*)' to '(.*)' to save the settings",
            lambda r, m: VMExists(
                f"VirtualBox cannot rename the VM: the folder {m.group(2)} exists already",
                hint="pick another name, or remove that folder",
            ),
        ),
        ErrorRule.of(
            r"Could not find file for the medium '(.*)'",
            lambda r, m: NotFound(
                f"the disk image {m.group(1)} does not exist",
                hint="`vmkit destroy` the VM and create it again",
            ),
        ),
        ErrorRule.of(
            r"The machine is not mutable \(state is Saved\)",
            lambda r, m: StateError(
                f"VirtualBox VM {vm_of(r)!r} is in a saved state, so its settings cannot change",
                hint="start it and stop it, or discard the saved state in VirtualBox",
            ),
        ),
        ErrorRule.of(
            r"Invalid machine state: (\w+)|Cannot resume the machine as it is not paused|Already paused",
            lambda r, m: StateError(
                f"VirtualBox VM {vm_of(r)!r} is not in a state that allows this"
            ),
        ),
        ErrorRule.of(
            r"Invalid RAM size: (\d+) MB \(must be in range \[(\d+), (\d+)\] MB\)",
            lambda r, m: InvalidInput(
                f"{m.group(1)} MiB of memory is out of range",
                hint=f"use {m.group(2)} to {m.group(3)} MiB",
            ),
        ),
        ErrorRule.of(
            r"Invalid virtual CPU count: (\d+) \(must be in range \[(\d+), (\d+)\]\)",
            lambda r, m: InvalidInput(
                f"{m.group(1)} CPUs is out of range", hint=f"use {m.group(2)} to {m.group(3)} CPUs"
            ),
        ),
        ErrorRule.of(
            r"(?:Error (?:reading|opening) (?:the )?OVA|Failed to open OVF file|Could not read the OVF file)[^\n]*",
            lambda r, m: ProviderError(
                f"VirtualBox could not read the appliance: {m.group(0).strip()}",
                hint="download the file again; it is missing or damaged",
            ),
        ),
        ErrorRule.of(
            r"Runtime error opening '(.*)' for reading",
            lambda r, m: NotFound(f"VirtualBox settings file {m.group(1)} cannot be read"),
        ),
        ErrorRule.of(
            r"(?:Storage controller named '(.*)' already exists|"
            r"Could not find a (?:storage )?controller named '(.*)')",
            lambda r, m: ProviderError(
                f"VirtualBox VM {vm_of(r)!r} has unexpected disk controllers: {m.group(0)}",
                hint="`vmkit destroy` the VM and create it again",
            ),
        ),
        ErrorRule.of(
            r"(?:Unknown option: (\S+)|Invalid command '(.*)'|Invalid parameter '(.*)')",
            lambda r, m: ToolError(
                f"this VirtualBox does not understand `{m.group(1) or m.group(2) or m.group(3)}`",
                hint="upgrade VirtualBox; vmkit supports 5.0 to 7.1",
            ),
        ),
    ]
