"""Vagrant's known failures mapped to vmkit's exceptions, each carrying Vagrant's own words.

With ``--machine-readable`` Vagrant ends a failure with an ``error-exit`` line naming the Ruby
error class; the rules below match that class (and a few libvirt texts that arrive inside
other errors). A failure no rule knows still becomes a ``VagrantFailed`` with Vagrant's
message; every one of them keeps the whole ``Result`` (stdout and stderr) as ``.result``.

Each specific class is also the matching vmkit class (``VagrantBoxMissing`` is a
``BoxNotFound``), so callers catch vmkit's tree and still get Vagrant's output.
"""

from __future__ import annotations

import re
from pathlib import Path

from vmkit.errors import (
    BoxNotFound,
    HardwareVirtualizationUnavailable,
    NotFound,
    NotSupported,
    ProviderError,
    VMLocked,
    VMNotFound,
    VMNotRunning,
)
from vmkit.host.runner import ErrorRule, Result
from vmkit.providers.vagrant import parse


class VagrantFailed(ProviderError):
    """``vagrant`` failed; ``result`` holds its whole output, ``error_class`` Vagrant's error."""

    def __init__(
        self, message: str, *, result: Result, error_class: str = "", hint: str | None = None
    ) -> None:
        super().__init__(message, hint=hint)
        self.result = result
        self.error_class = error_class

    @property
    def stderr(self) -> str:
        """What vagrant wrote to stderr."""
        return self.result.stderr


class VagrantProjectMissing(VagrantFailed, NotFound):
    """No Vagrantfile where one was expected."""


class VagrantMachineMissing(VagrantFailed, VMNotFound):
    """The Vagrantfile defines no machine of that name."""


class VagrantBoxMissing(VagrantFailed, BoxNotFound):
    """The box is not added to Vagrant (for this provider)."""


class VagrantLocked(VagrantFailed, VMLocked):
    """Another vagrant process works on the machine."""


class VagrantProviderUnusable(VagrantFailed, NotSupported):
    """The provider (VirtualBox, libvirt) is missing or not usable on this host."""


class VagrantNotRunning(VagrantFailed, VMNotRunning):
    """The machine is not running, so it has no SSH."""


class VagrantNoHAV(VagrantFailed, HardwareVirtualizationUnavailable):
    """The Vagrantfile asks for KVM on a host without usable VT-x/AMD-V."""


def vagrant_message(result: Result) -> str:
    """Vagrant's explanation of a failed ``result``, on one line."""
    found = parse.error_exit(result.stdout)
    if found is not None and found.message:
        return " ".join(found.message.split())
    lines = [t.strip() for t in (result.stderr.strip() or result.stdout.strip()).splitlines()]
    return " / ".join(t for t in lines[-4:] if t) or f"exit {result.exit_code}"


def verb(argv: list[str]) -> str:
    """``vagrant up`` from an argv that may start with a command prefix such as nsenter."""
    for i, arg in enumerate(argv):
        if Path(arg).name == "vagrant" and i + 1 < len(argv):
            return f"vagrant {argv[i + 1]}"
    return "vagrant"


def rules(project_dir: Path) -> list[ErrorRule]:
    """Error rules for vagrant run in ``project_dir``; the last one matches any failure."""

    def rule(regex: str, cls: type[VagrantFailed], hint: str | None = None) -> ErrorRule:
        def make(result: Result, _: re.Match[str]) -> VagrantFailed:
            found = parse.error_exit(result.stdout)
            return cls(
                f"`{verb(result.argv)}` failed in {project_dir}: {vagrant_message(result)}",
                result=result,
                error_class=found.error_class if found else "",
                hint=hint,
            )

        return ErrorRule.of(regex, make)

    e = r"error-exit,(?:Vagrant::Errors|VagrantPlugins::\w+::Errors)::"
    return [
        # KVM refused comes inside libvirt's create-domain error, so it goes first.
        rule(
            r"could not find capabilities for domaintype=kvm|failed to set MSR|KVM is not available",
            VagrantNoHAV,
            'this host has no usable VT-x/AMD-V: set `libvirt.driver = "qemu"` in the Vagrantfile',
        ),
        rule(
            e + r"(?:FogLibvirtConnectionError|CallChainError)|libvirt-sock",
            VagrantFailed,
            "is libvirtd running, and may this user use it (group libvirt)?",
        ),
        rule(
            e + r"NoEnvironmentError",
            VagrantProjectMissing,
            f"is {project_dir} the folder with the Vagrantfile?",
        ),
        rule(
            e + r"MachineNotFound",
            VagrantMachineMissing,
            "see `vagrant status` in that folder for the machines it defines",
        ),
        rule(
            e + r"Box\w*(?:NotFound|NoMatching)\w*|The box '[^']*' could not be found",
            VagrantBoxMissing,
            "add it with `vagrant box add NAME-OR-METADATA.json`; `vmkit box catalog` lists boxes",
        ),
        rule(
            e + r"(?:MachineLocked|EnvironmentLockedError)",
            VagrantLocked,
            "wait for the other vagrant command to finish, then try again",
        ),
        rule(
            e + r"ProviderNotUsable",
            VagrantProviderUnusable,
            "install that provider (VirtualBox, or vagrant-libvirt with libvirtd) or choose another",
        ),
        rule(
            e + r"SSHNotReady|SSHInvalidShell|VMNotCreatedError|is not yet ready for SSH",
            VagrantNotRunning,
            f"start it with `vagrant up` in {project_dir}",
        ),
        rule(r"\A", VagrantFailed),
    ]
