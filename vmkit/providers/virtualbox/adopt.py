"""Attaching vmkit to a VirtualBox VM it did not make, in any state, and finishing it later.

``attach_record`` never fails because of SSH: NAT forwards need only VBoxManage, so the record is
made whatever the VM is doing. What could not be done (no SSH rule, VM not running, no login
known, sshd not answering) is kept as one line in ``extra["ssh_pending"]``, and ``refresh``
(``vmkit attach --refresh NAME``) completes it: it reads the SSH rule again, reads the guest's
host key, lets the caller confirm it, and pins it.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import attrs

from vmkit import state
from vmkit.errors import HostKeyMismatch, InvalidInput, NotSupported, SSHError
from vmkit.host.netutil import read_banner
from vmkit.progress import Progress, no_progress
from vmkit.providers.base import VMState
from vmkit.providers.virtualbox.provider import AdoptedVM, VirtualBoxProvider, pending_hint
from vmkit.state import SSHEndpoint, VMRecord

#: Asked with the fingerprint of the key about to be pinned; False keeps it unpinned.
Confirm = Callable[[str], bool]


@attrs.frozen
class SSHPlan:
    """How vmkit would log into an adopted VM, and why it cannot yet (``missing``)."""

    host: str
    port: int | None
    user: str
    key_file: str
    missing: str  # empty when SSH can be tried now


def _plan(adopted: AdoptedVM, name: str, user: str, key_file: str) -> SSHPlan:
    host = adopted.ssh_host or "127.0.0.1"
    port = adopted.ssh_port
    if port is None:
        why = (
            f"VM '{adopted.vbox_name}' has no NAT rule to guest port 22, so vmkit cannot reach its "
            f"SSH server: add one (`vmkit forward 2222:22 --vm {name}`), then run {pending_hint(name)}"
        )
    elif not user or not key_file:
        why = (
            f"vmkit does not know how to log into VM '{adopted.vbox_name}' (it is not a "
            f"docker-machine VM): run {pending_hint(name, '--user USER --key PRIVATE_KEY')}"
        )
    elif adopted.state is not VMState.RUNNING:
        why = (
            f"VM '{adopted.vbox_name}' is {adopted.vbox_state or 'not running'}, so its SSH host key "
            f"cannot be read yet: start it, then run {pending_hint(name)}"
        )
    else:
        why = ""
    return SSHPlan(host, port, user, key_file, why)


def _login(
    adopted: AdoptedVM, user: str | None, key: str | os.PathLike[str] | None
) -> tuple[str, str]:
    key_file = os.path.abspath(os.path.expanduser(os.fspath(key))) if key else ""
    if key_file and not os.path.isfile(key_file):
        raise InvalidInput(
            f"key file {key_file} does not exist", hint="pass --key PATH to a private key"
        )
    return (user or adopted.ssh_user, key_file or (adopted.key_file or ""))


def _offered_key(host: str, port: int, timeout: float) -> str:
    """The guest's host key, if an SSH server answers at ``host:port`` within ``timeout``."""
    from vmkit.providers.sshhost import fetch_host_key

    # A banner first: a VM that is still booting has the NAT port open but nothing behind it.
    if not (read_banner(host, port, timeout=timeout) or "").startswith("SSH-"):
        raise SSHError(f"no SSH server answers at {host}:{port} (still booting? sshd off?)")
    return fetch_host_key(host, port, timeout=timeout)


def attach_record(
    vm: str,
    name: str,
    *,
    key: str | os.PathLike[str] | None = None,
    user: str | None = None,
    fingerprint: str | None = None,
    provider: VirtualBoxProvider | None = None,
    timeout: float = 5.0,
    progress: Progress = no_progress,
) -> VMRecord:
    """The record of VirtualBox VM ``vm`` (name or UUID) adopted as ``name``, in any state.

    The host key is read and pinned (checked against ``fingerprint`` if given) when the VM runs
    and its SSH server answers; otherwise the record has no ``ssh`` and
    ``extra["ssh_pending"]`` says, in one line, what is missing and how to finish.
    """
    from vmkit.providers.sshhost import fingerprint as fp

    adopted = (provider or VirtualBoxProvider()).adopt(vm)
    login_user, key_file = _login(adopted, user, key)
    plan = _plan(adopted, name, login_user, key_file)
    record = adopted.to_record(name, host_key="")
    record.extra.update(ssh_user=plan.user, key_file=plan.key_file)
    if adopted.ssh_port is not None:
        record.extra["ssh_port"] = adopted.ssh_port
    if plan.missing:
        record.extra["ssh_pending"] = plan.missing
        return record
    assert plan.port is not None
    progress(f"reading the SSH host key of VM {adopted.vbox_name!r} at {plan.host}:{plan.port}")
    try:
        host_key = _offered_key(plan.host, plan.port, timeout)
    except SSHError as e:
        record.extra["ssh_pending"] = (
            f"{e.message}; forwards work now, shares once SSH does: run {pending_hint(name)} "
            "when it answers"
        )
        return record
    if fingerprint and fp(host_key) != fingerprint:
        raise HostKeyMismatch(
            f"VirtualBox VM {adopted.vbox_name!r} has host key {fp(host_key)}, not {fingerprint}",
            hint="check the fingerprint you were given; nothing was attached",
        )
    record.ssh = SSHEndpoint(plan.host, plan.port, plan.user, plan.key_file, host_key)
    return record


@attrs.frozen
class Refreshed:
    """What ``refresh`` did."""

    record: VMRecord
    fingerprint: str
    changed: bool  # a different key was pinned before


def refresh(
    name: str,
    *,
    key: str | os.PathLike[str] | None = None,
    user: str | None = None,
    fingerprint: str | None = None,
    confirm: Confirm | None = None,
    provider: VirtualBoxProvider | None = None,
    timeout: float = 10.0,
    progress: Progress = no_progress,
) -> Refreshed:
    """Finish (or renew) the SSH part of the attached VirtualBox VM ``name``.

    Re-reads the VM from VirtualBox (by UUID, so a renamed VM is still found), finds its SSH
    rule again (it may have moved), reads the host key the guest offers and pins it once it matches ``fingerprint`` or
    ``confirm(fingerprint)`` says yes (with neither, it is trusted as offered, like
    ``attach``). Raises with the reason and changes nothing when SSH is still out of reach.
    """
    from vmkit.providers.sshhost import fingerprint as fp

    prov = provider or VirtualBoxProvider()
    with state.locked(name):
        record = state.load(name)
        if record.provider != "virtualbox" or not record.extra.get("adopted"):
            raise NotSupported(
                f"VM {name!r} is not a VirtualBox VM vmkit attached to; --refresh is only for those",
                hint="`vmkit attach virtualbox:VMNAME --name NAME` attaches one",
            )
        ref = str(record.extra.get("uuid") or record.extra.get("vbox_name") or name)
        adopted = prov.adopt(ref)
        old = record.ssh
        login_user, key_file = _login(
            adopted,
            user or (old.user if old else None) or record.extra.get("ssh_user") or None,
            key or (old.key_file if old else None) or record.extra.get("key_file") or None,
        )
        plan = _plan(adopted, name, login_user, key_file)
        if plan.missing:
            raise SSHError(plan.missing.split(": run ")[0], hint=f"then run {pending_hint(name)}")
        assert plan.port is not None
        progress(f"reading the SSH host key of VM {adopted.vbox_name!r} at {plan.host}:{plan.port}")
        try:
            host_key = _offered_key(plan.host, plan.port, timeout)
        except SSHError as e:
            raise SSHError(
                e.message,
                hint=f"wait until the guest's SSH server is up, then run {pending_hint(name)}",
            ) from e
        got = fp(host_key)
        if fingerprint and got != fingerprint:
            raise HostKeyMismatch(
                f"VM {name!r} offers host key {got}, not {fingerprint}",
                hint="check the fingerprint; nothing was pinned",
            )
        changed = old is not None and old.host_key.split()[:2] != host_key.split()[:2]
        if not fingerprint and confirm is not None and not confirm(got):
            raise SSHError(
                f"host key {got} of VM {name!r} was not pinned",
                hint="compare it with `ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` run in "
                "the guest, then run the command again",
            )
        record.ssh = SSHEndpoint(plan.host, plan.port, plan.user, plan.key_file, host_key)
        record.extra.update(
            vbox_name=adopted.vbox_name,
            uuid=adopted.uuid or record.extra.get("uuid", ""),
            ssh_user=plan.user,
            key_file=plan.key_file,
            ssh_port=plan.port,
        )
        record.extra.pop("ssh_pending", None)
        state.save(record)
        return Refreshed(record, got, changed)
