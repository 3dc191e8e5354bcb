"""Parsers and error rules of the Vagrant provider, on output recorded from Vagrant 2.3.4."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmkit.errors import (
    BoxNotFound,
    HardwareVirtualizationUnavailable,
    NotFound,
    VMLocked,
    VMNotFound,
    VMNotRunning,
)
from vmkit.host import runner
from vmkit.host.runner import Result
from vmkit.providers.base import VMState
from vmkit.providers.vagrant import errors, parse

# `vagrant status --machine-readable` of a project whose machine was never brought up.
STATUS_NOT_CREATED = r"""1795503560,alice-obrien,metadata,provider,libvirt
1795503560,alice-obrien,provider-name,libvirt
1795503560,alice-obrien,state,not_created
1795503560,alice-obrien,state-human-short,not created
1795503560,alice-obrien,state-human-long,The Libvirt domain is not created. Run `vagrant up` to create it.
1795503560,,ui,info,Current machine states:\n\nalice-obrien              not created (libvirt)\n\nThe Libvirt domain is not created. Run `vagrant up` to create it.
"""

# Two machines, one running and one halted (libvirt says "shutoff", VirtualBox "poweroff").
STATUS_TWO = r"""1700000000,web,metadata,provider,libvirt
1700000000,web,provider-name,libvirt
1700000000,web,state,running
1700000000,web,state-human-short,running
1700000000,db,provider-name,libvirt
1700000000,db,state,shutoff
1700000000,db,state-human-short,shutoff
1700000000,db,state-human-long,The Libvirt domain is not running. Run `vagrant up` to start it.
"""

NO_ENVIRONMENT = r"""1795503559,,ui,error,A Vagrant environment or target machine is required to run this\ncommand. Run `vagrant init` to create a new Vagrant environment. Or%!(VAGRANT_COMMA)\nget an ID of a target machine from `vagrant global-status` to run\nthis command on. A final option is to change to a directory with a\nVagrantfile and to try again.
1795503559,,error-exit,Vagrant::Errors::NoEnvironmentError,A Vagrant environment or target machine is required to run this\ncommand. Run `vagrant init` to create a new Vagrant environment. Or%!(VAGRANT_COMMA)\nget an ID of a target machine from `vagrant global-status` to run\nthis command on. A final option is to change to a directory with a\nVagrantfile and to try again.
"""

MACHINE_NOT_FOUND = r"""1795503559,,ui,error,The machine with the name 'nosuch' was not found configured for\nthis Vagrant environment.
1795503559,,error-exit,Vagrant::Errors::MachineNotFound,The machine with the name 'nosuch' was not found configured for\nthis Vagrant environment.
"""

# `vagrant ssh-config` (no --machine-readable) on a machine that is not running: stderr only.
SSH_NOT_READY = """The provider for this Vagrant-managed machine is reporting that it
is not yet ready for SSH. Depending on your provider this can carry
different meanings. Make sure your machine is created and running and
try again."""

SSH_CONFIG = """Host lab
  HostName 192.168.121.57
  User vmkit
  Port 22
  UserKnownHostsFile /dev/null
  StrictHostKeyChecking no
  PasswordAuthentication no
  IdentityFile "/home/t/my labs/.vagrant/machines/lab/libvirt/private_key"
  IdentityFile /root/.vagrant.d/insecure_private_key
  IdentitiesOnly yes
  LogLevel FATAL
  PubkeyAcceptedKeyTypes +ssh-rsa
  HostKeyAlgorithms +ssh-rsa

"""


def result(argv: list[str], code: int, stdout: str = "", stderr: str = "") -> Result:
    return Result(argv, code, stdout, stderr, 0.1)


def test_machine_readable_unescapes_commas_and_newlines() -> None:
    lines = parse.machine_readable(NO_ENVIRONMENT)
    assert [line.kind for line in lines] == ["ui", "error-exit"]
    exit_line = parse.error_exit(NO_ENVIRONMENT)
    assert exit_line is not None
    assert exit_line.error_class == "Vagrant::Errors::NoEnvironmentError"
    assert "Or,\nget an ID" in exit_line.message
    assert parse.ui_messages(STATUS_NOT_CREATED)[0].startswith(
        "Current machine states: alice-obrien"
    )


def test_status_maps_provider_words_to_vmkit_states() -> None:
    (only,) = parse.status(STATUS_NOT_CREATED)
    assert (only.name, only.provider, only.vagrant_state) == (
        "alice-obrien",
        "libvirt",
        "not_created",
    )
    assert only.state is VMState.STOPPED
    web, db = parse.status(STATUS_TWO)
    assert (web.name, web.state) == ("web", VMState.RUNNING)
    # python-vagrant turns this into "poweroff"; vmkit keeps Vagrant's word and maps the state.
    assert (db.name, db.vagrant_state, db.state) == ("db", "shutoff", VMState.STOPPED)
    assert parse.vmkit_state("saved") is VMState.SAVED
    assert parse.vmkit_state("paused") is VMState.PAUSED
    assert parse.vmkit_state("crashed") is VMState.BROKEN
    assert parse.vmkit_state("something-new") is VMState.UNKNOWN


def test_ssh_config_keeps_quoted_paths_and_all_identity_files() -> None:
    (conf,) = parse.ssh_config(SSH_CONFIG)
    assert (conf.host_alias, conf.hostname, conf.port, conf.user) == (
        "lab",
        "192.168.121.57",
        22,
        "vmkit",
    )
    assert conf.identity_files == (
        "/home/t/my labs/.vagrant/machines/lab/libvirt/private_key",
        "/root/.vagrant.d/insecure_private_key",
    )
    assert parse.ssh_config("") == []


def test_host_key_line_ignores_noise() -> None:
    out = "Warning: Permanently added...\nssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFoo+bar/= root@lab\n"
    assert parse.host_key_line(out) == "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFoo+bar/="
    assert parse.host_key_line("cat: /etc/ssh/x: No such file or directory") is None


@pytest.mark.parametrize(
    ("stdout", "stderr", "cls", "fragment"),
    [
        (
            NO_ENVIRONMENT,
            "",
            errors.VagrantProjectMissing,
            "A Vagrant environment or target machine",
        ),
        (MACHINE_NOT_FOUND, "", errors.VagrantMachineMissing, "'nosuch' was not found"),
        ("", SSH_NOT_READY, errors.VagrantNotRunning, "not yet ready for SSH"),
        (
            "1,,error-exit,Vagrant::Errors::BoxAddNoMatchingProvider,The box you're attempting to add has no available version",
            "",
            errors.VagrantBoxMissing,
            "no available version",
        ),
        (
            "1,,error-exit,Vagrant::Errors::MachineLocked,An action 'up' was attempted on the machine 'a'%!(VAGRANT_COMMA) but another process is already executing",
            "",
            errors.VagrantLocked,
            "'a', but another process",
        ),
        (
            "1,,error-exit,VagrantPlugins::ProviderLibvirt::Errors::FogCreateServerError,Error occurred while creating domain: Call to virDomainCreateWithFlags failed: invalid argument: could not find capabilities for domaintype=kvm",
            "",
            errors.VagrantNoHAV,
            "domaintype=kvm",
        ),
        ("", "some ruby stack trace\nlast line of it", errors.VagrantFailed, "last line of it"),
    ],
)
def test_error_rules_keep_vagrants_words(
    stdout: str, stderr: str, cls: type[errors.VagrantFailed], fragment: str
) -> None:
    res = result(["nsenter", "-t", "1", "/usr/bin/vagrant", "up", "lab"], 1, stdout, stderr)
    err = runner.classify(res, errors.rules(Path("/labs/alice")))
    assert type(err) is cls
    assert isinstance(err, errors.VagrantFailed)
    assert err.result is res
    assert fragment in str(err)
    assert "`vagrant up` failed in /labs/alice" in str(err)


def test_specific_errors_are_also_vmkit_classes() -> None:
    assert issubclass(errors.VagrantBoxMissing, BoxNotFound)
    assert issubclass(errors.VagrantMachineMissing, VMNotFound)
    assert issubclass(errors.VagrantProjectMissing, NotFound)
    assert issubclass(errors.VagrantLocked, VMLocked)
    assert issubclass(errors.VagrantNotRunning, VMNotRunning)
    assert issubclass(errors.VagrantNoHAV, HardwareVirtualizationUnavailable)
    kvm = errors.VagrantNoHAV("x", result=result(["vagrant"], 1), hint="h")
    assert kvm.hint == "h"
