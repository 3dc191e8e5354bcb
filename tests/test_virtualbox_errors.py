"""The error table against every real error text in fixtures/vbox/errors.md."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

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
from vmkit.host.runner import Result, classify
from vmkit.providers.virtualbox.errors import error_rules

FIXTURES = Path(__file__).parent / "fixtures" / "vbox"


def fixture_text(name: str) -> str:
    return (FIXTURES / name).read_text(encoding="utf-8")


BLOCKS = re.findall(r"```\n(.*?)```", fixture_text("errors.md"), re.S)

# (a fragment of the block's first line, expected class, argv the text came from)
EXPECTED: list[tuple[str, type[VmkitError], list[str]]] = [
    ("named 'windows7'", VMNotFound, ["showvminfo", "windows7", "--machinereadable"]),
    ("named ''", VMNotFound, ["storagectl", "", "--name", "SATA"]),
    ("named 'sandbox'", VMNotFound, ["modifyvm", "sandbox", "--memory", "1024"]),
    (
        "VERR_VMX_MSR_ALL_VMX_DISABLED)",
        HardwareVirtualizationUnavailable,
        ["startvm", "box", "--type", "headless"],
    ),
    (
        "Power up failed (vrc=VERR_VMX_MSR_ALL",
        HardwareVirtualizationUnavailable,
        ["startvm", "box"],
    ),
    ("VERR_VMX_NO_VMX", HardwareVirtualizationUnavailable, ["startvm", "box"]),
    ("VERR_SVM_DISABLED", HardwareVirtualizationUnavailable, ["startvm", "box"]),
    ("already locked for a session", VMLocked, ["modifyvm", "dev", "--natpf1", "x,tcp,,1,,2"]),
    ("already locked by a session", VMLocked, ["startvm", "DC01"]),
    ("A NAT rule of this name", ForwardExists, ["modifyvm", "v", "--natpf1", "ssh,tcp,,2222,,22"]),
    (
        "Invalid argument value",
        ForwardNotFound,
        ["modifyvm", "default", "--natpf1", "delete", "ssh"],
    ),
    (
        "Shared folder named 'c/Users'",
        ShareExists,
        ["sharedfolder", "add", "default", "--name", "c/Users"],
    ),
    (
        "is not absolute",
        InvalidInput,
        ["sharedfolder", "add", "v", "--name", "x", "--hostpath", "~/x"],
    ),
    ("is not currently running", VMNotRunning, ["controlvm", "Ubuntu", "poweroff"]),
    ("Machine settings file", VMExists, ["createvm", "--name", "node-1", "--register"]),
    (
        "Could not find file for the medium",
        NotFound,
        ["storageattach", "v", "--medium", "/nix/x.vmdk"],
    ),
    ("Error reading OVA", ProviderError, ["import", "/var/www/html/sandbox.ova"]),
    ("Could not rename the directory", VMExists, ["modifyvm", "v", "--name", "w"]),
]

# Texts errors.md quotes inline (source-only or one-line recordings), with the class they map to.
INLINE: list[tuple[str, type[VmkitError], list[str]]] = [
    (
        "VBoxManage: error: A NAT rule for this host port and this host IP already exists\n",
        PortInUse,
        ["controlvm", "web", "natpf1", "vmkit-tcp-8080,tcp,127.0.0.1,8080,,80"],
    ),
    (
        "VBoxManage: error: AMD-V is not available (VERR_SVM_NO_SVM)\n",
        HardwareVirtualizationUnavailable,
        ["startvm", "v"],
    ),
    (
        "VBoxManage: error: Could not find a registered machine with UUID {0b9ee7d3-6c2a-4d2b-9d22-111111111111}\n",
        VMNotFound,
        ["showvminfo", "0b9ee7d3-6c2a-4d2b-9d22-111111111111"],
    ),
    (
        "VBoxManage: error: RTPathQueryInfo failed on shared folder path '/home/me/gone': VERR_FILE_NOT_FOUND\n",
        InvalidInput,
        ["sharedfolder", "add", "v", "--name", "t", "--hostpath", "/home/me/gone"],
    ),
    (
        "VBoxManage: error: Shared folder named 'vmkit_x' already exists\nVBoxManage: error: Details: code VBOX_E_FILE_ERROR (0x80bb0004), component ConsoleWrap, interface IConsole\n",
        ShareExists,
        ["sharedfolder", "add", "v", "--name", "vmkit_x", "--transient"],
    ),
    (
        "VBoxManage: error: Could not find a shared folder named 'vmkit_x'.\n",
        ShareNotFound,
        ["sharedfolder", "remove", "v", "--name", "vmkit_x", "--transient"],
    ),
    (
        "VBoxManage: error: Machine 'web' is not currently running.\n",
        VMNotRunning,
        ["controlvm", "web", "poweroff"],
    ),
    (
        "VBoxManage: error: Cannot unregister the machine 'web' while it is locked\n",
        VMLocked,
        ["unregistervm", "web", "--delete"],
    ),
    (
        "VBoxManage: error: Invalid RAM size: 1 MB (must be in range [4, 2097152] MB)\n",
        InvalidInput,
        ["modifyvm", "v", "--memory", "1"],
    ),
    (
        "VBoxManage: error: Invalid virtual CPU count: 99 (must be in range [1, 64])\n",
        InvalidInput,
        ["modifyvm", "v", "--cpus", "99"],
    ),
    (
        "VBoxManage: error: The machine is not mutable (state is Saved)\n",
        StateError,
        ["modifyvm", "v", "--memory", "512"],
    ),
    (
        "VBoxManage: error: Storage controller named 'SATA' already exists\n",
        ProviderError,
        ["storagectl", "v", "--name", "SATA"],
    ),
    (
        "VBoxManage: error: Could not find a controller named 'SATA'\n",
        ProviderError,
        ["storageattach", "v"],
    ),
    (
        "VBoxManage: error: Cannot resume the machine as it is not paused (machine state: Running)\n",
        StateError,
        ["controlvm", "v", "resume"],
    ),
    (
        "VBoxManage: error: Invalid machine state: Paused\n",
        StateError,
        ["controlvm", "v", "acpipowerbutton"],
    ),
    (
        "VBoxManage: error: Runtime error opening '/x/y.vbox' for reading VERR_FILE_NOT_FOUND (File not found.).\n",
        NotFound,
        ["registervm", "/x/y.vbox"],
    ),
    (
        "VBoxManage: error: Unknown option: --synthcpu\n",
        ToolError,
        ["modifyvm", "v", "--synthcpu", "on"],
    ),
    ("VBoxManage: error: Invalid command 'createmedium'\n", ToolError, ["createmedium"]),
    (
        "VBoxManage.exe: error: Not in a hypervisor partition (HVP=0) (VERR_NEM_NOT_AVAILABLE).\n",
        HardwareVirtualizationUnavailable,
        ["startvm", "default"],
    ),
    (
        "VBoxManage: error: VT-x is being used by another hypervisor (VERR_VMX_IN_VMX_ROOT_MODE)\n",
        HardwareVirtualizationUnavailable,
        ["startvm", "v"],
    ),
]

KNOWN = ["default", 'Übung "1"']


def _classify(text: str, argv: list[str]) -> VmkitError | None:
    result = Result(["VBoxManage", *argv], 1, "", text, 0.0)
    return classify(result, error_rules(lambda: KNOWN))


def test_every_block_of_errors_md_is_covered() -> None:
    assert len(BLOCKS) == len(EXPECTED)
    for block, (fragment, _cls, _argv) in zip(BLOCKS, EXPECTED, strict=True):
        assert fragment in block.splitlines()[0]


@pytest.mark.parametrize(("fragment", "cls", "argv"), EXPECTED, ids=[e[0] for e in EXPECTED])
def test_recorded_block(fragment: str, cls: type[VmkitError], argv: list[str]) -> None:
    block = next(b for b in BLOCKS if fragment in b.splitlines()[0])
    err = _classify(block, argv)
    assert type(err) is cls
    assert err.message and "VBoxManage: error" not in err.message


@pytest.mark.parametrize(("text", "cls", "argv"), INLINE, ids=[t[0][20:70] for t in INLINE])
def test_inline_text(text: str, cls: type[VmkitError], argv: list[str]) -> None:
    assert type(_classify(text, argv)) is cls


def test_not_found_lists_known_vms() -> None:
    err = _classify(BLOCKS[0], ["showvminfo", "windows7"])
    assert isinstance(err, VMNotFound)
    assert err.message == "VirtualBox has no VM named 'windows7'"
    assert "'default'" in err.hint and "Übung" in err.hint
    empty = classify(
        Result(["VBoxManage", "showvminfo", "x"], 1, "", BLOCKS[0], 0.0), error_rules(lambda: [])
    )
    assert empty is not None and "none" in empty.hint


def test_hardware_virtualization_message_is_plain_words() -> None:
    err = _classify(BLOCKS[3], ["startvm", "vmkit-lab", "--type", "headless"])
    assert isinstance(err, HardwareVirtualizationUnavailable)
    assert "vmkit-lab" in err.message and "BIOS/UEFI" in err.message
    assert "enable" in err.hint and "QEMU" in err.hint
    hyperv = _classify(INLINE[18][0], ["startvm", "default"])
    assert hyperv is not None and "Hyper-V" in hyperv.message and "Hyper-V off" in hyperv.hint


def test_port_in_use_names_the_port() -> None:
    err = _classify(INLINE[0][0], INLINE[0][2])
    assert isinstance(err, PortInUse) and "8080" in err.message


def test_unknown_text_is_not_classified() -> None:
    assert _classify("VBoxManage: error: something new entirely\n", ["list", "vms"]) is None
