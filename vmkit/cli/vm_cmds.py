"""VM lifecycle commands: up, create, start, stop, destroy, status, list, ssh."""

from __future__ import annotations

import os
import sys
from typing import Any

import click
from rich.table import Table

import vmkit.vm as api
from vmkit.cli.render import console, err_console, progress_printer, state_text
from vmkit.errors import VmkitError
from vmkit.host.arch import ARCHES
from vmkit.host.runner import which


def register(group: click.Group) -> None:
    """Add this module's commands to ``group``."""
    for cmd in (up, create, start, stop, destroy, status, list_cmd, ssh):
        group.add_command(cmd)


def _create_options(f: click.decorators.FC) -> click.decorators.FC:
    f = click.option(
        "--box", default="vmkit-mini", show_default=True, help="Box to make the VM from."
    )(f)
    f = click.option(
        "--arch",
        type=click.Choice(ARCHES),
        default=None,
        help="Guest architecture [default: the host CPU's (amd64 or arm64); i386 where only "
        "VirtualBox's raw mode works]. Another than the host's runs under software emulation.",
    )(f)
    f = click.option("--cpus", type=int, default=2, show_default=True)(f)
    f = click.option("--memory", type=int, default=1024, show_default=True, help="MiB of RAM.")(f)
    f = click.option("--disk", type=int, default=8, show_default=True, help="GiB of disk.")(f)
    f = click.option("--provider", default=None, help="qemu or virtualbox [default: qemu].")(f)
    f = click.option(
        "--accel",
        default=None,
        metavar="auto|kvm|hvf|whpx|tcg",
        help="QEMU's accelerator [default: $VMKIT_ACCEL, else auto: hardware if it proves to "
        "boot the box's kernel, else software emulation].",
    )(f)
    f = click.option(
        "--quick-start/--no-quick-start",
        default=True,
        show_default=True,
        help="Under software emulation, start the VM from a boot of its box saved once (with "
        "its own identity) instead of booting it; the first VM of a box and size saves one.",
    )(f)
    return f


@click.command()
@click.argument("name", default=api.DEFAULT_NAME)
@_create_options
def up(name: str, **create_options: Any) -> None:
    """Create NAME if needed, start it, and wait until SSH and Docker answer."""
    show = progress_printer()
    vm = api.created(name, progress=show, **create_options)
    problems = vm.start(progress=show)
    ep = vm.record.ssh
    assert ep is not None
    console.print(f"[green]✓[/] VM [bold]{name}[/] is running; SSH on 127.0.0.1:{ep.port}")
    console.print(f"  shell:   vmkit ssh {name}")
    console.print(f"  share:   vmkit share PATH --vm {name}")
    console.print(f"  forward: vmkit forward PORT --vm {name}")
    _report_problems(problems)


def _report_problems(problems: list[str]) -> None:
    """Shares/forwards that did not come back: said, and the exit code says it too."""
    for line in problems:
        err_console.print(f"[yellow]![/] did not come back: {line}", soft_wrap=True)
    if problems:
        raise SystemExit(1)


@click.command()
@click.argument("name")
@_create_options
def create(name: str, **create_options: Any) -> None:
    """Create VM NAME from a box (building the box first if needed); does not start it."""
    api.create(name, progress=progress_printer(), **create_options)
    console.print(f"[green]✓[/] created VM [bold]{name}[/]; start it with `vmkit start {name}`")


@click.command()
@click.argument("name", default=api.DEFAULT_NAME)
def start(name: str) -> None:
    """Start VM NAME and wait until SSH and Docker answer."""
    vm = api.get(name)
    problems = vm.start(progress=progress_printer())
    console.print(f"[green]✓[/] VM [bold]{name}[/] is running")
    _report_problems(problems)


@click.command()
@click.argument("name", default=api.DEFAULT_NAME)
@click.option(
    "--timeout", type=float, default=60, show_default=True, help="Seconds before forcing it off."
)
@click.option("--force", is_flag=True, help="Power off at once.")
def stop(name: str, timeout: float, force: bool) -> None:
    """Stop VM NAME: gracefully, then forced after --timeout seconds."""
    api.get(name).stop(timeout=timeout, force=force)
    console.print(f"[green]✓[/] VM [bold]{name}[/] is stopped")


@click.command()
@click.argument("name")
@click.option("-f", "--force", is_flag=True, help="Do not ask.")
def destroy(name: str, force: bool) -> None:
    """Stop VM NAME and delete it with everything vmkit made for it."""
    vm = api.get(name)
    if not force and sys.stdin.isatty():
        click.confirm(f"Destroy VM {name} and its disk?", abort=True)
    vm.destroy()
    if vm.provider.capabilities.destroy and not vm.record.extra.get("adopted"):
        console.print(f"[green]✓[/] VM [bold]{name}[/] destroyed")
    else:
        console.print(
            f"[green]✓[/] vmkit forgot [bold]{name}[/]; the machine itself was left as it is"
        )


@click.command()
@click.argument("name", required=False)
@click.option(
    "--boot-timeline",
    is_flag=True,
    help="Also show where the boot's time went, phase by phase (QEMU VMs).",
)
def status(name: str | None, boot_timeline: bool) -> None:
    """State of VM NAME (or all VMs), read from the hypervisor, with its shares and forwards."""
    if boot_timeline:
        vm = api.get(name or api.DEFAULT_NAME)
        console.print(
            f"[bold]{vm.name}[/]: where the boot's time went (seconds since QEMU started)"
        )
        for line in vm.boot_timeline().render():
            console.print(f"  {line}", markup=False)
        return
    vms = [api.get(name)] if name else api.list_vms()
    if not vms:
        console.print("no VMs yet; create one with `python -m vmkit up`")
        return
    for vm in vms:
        st = vm.status()
        console.print(f"[bold]{vm.name}[/] ({vm.record.provider or '?'}): {state_text(st)}")
        for err in st.errors:
            console.print(f"  problem: {err}", markup=False)
        ep = vm.record.ssh
        if ep and ep.port and st.running:
            console.print(f"  ssh: {ep.user}@{ep.host}:{ep.port}")
        for s in vm.record.shares:
            console.print(
                f"  share: {s.source} -> {s.target} ({s.mechanism or 'pending'})", markup=False
            )
        for f in vm.record.forwards:
            console.print(
                f"  forward: {f.host_ip}:{f.host_port} -> {f.guest_port}/{f.proto} ({f.mechanism or 'pending'})",
                markup=False,
            )
        for helper, pid in vm.helpers().items():
            console.print(f"  helper: {helper} (pid {pid}){_held(vm, helper)}", markup=False)
        _leftovers(vm)


def _leftovers(vm: api.VM) -> None:
    """What interrupted commands left, and their unfinished changes."""
    try:
        orphans = vm.orphans()
    except VmkitError as e:
        console.print(f"  problem: could not look for leftovers: {e}", markup=False)
        orphans = []
    for o in orphans:
        console.print(f"  {o.advice(vm.name)}", markup=False, soft_wrap=True)
    shown = {o.intent for o in orphans}
    for i in vm.record.pending:
        if i not in shown:
            console.print(
                f"  unfinished: {i.describe()} (pid {i.pid}); the next change or "
                f"`vmkit repair {vm.name}` settles it",
                markup=False,
            )


def _held(vm: api.VM, helper: str) -> str:
    """What the agent holds, in its own words (it is the truth, not the record)."""
    if helper != "agent":
        return ""
    from vmkit.agent.client import request

    shares = request(vm.record.files, "list-shares", start=False) or []
    forwards = request(vm.record.files, "list-forwards", start=False) or []
    held = [f"share {s['target']}" for s in shares] + [
        f"forward {f['host_port']}" for f in forwards
    ]
    return ": " + ", ".join(held) if held else ": idle"


@click.command("list")
def list_cmd() -> None:
    """All VMs with their real state."""
    table = Table("NAME", "PROVIDER", "STATE", "CPUS", "MEMORY", "SSH")
    for vm in api.list_vms():
        st = vm.status()
        r = vm.record
        port = f"{r.ssh.host}:{r.ssh.port}" if r.ssh and st.running else "-"
        # Sizes of machines vmkit adopted are not vmkit's to know.
        owned = r.provider in ("qemu", "virtualbox") and not r.extra.get("adopted")
        cpus, memory = (str(r.cpus), f"{r.memory} MiB") if owned else ("-", "-")
        table.add_row(r.name, r.provider or "?", state_text(st), cpus, memory, port)
    console.print(table)


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("name", default=api.DEFAULT_NAME)
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def ssh(name: str, command: tuple[str, ...]) -> None:
    """Open a shell in VM NAME, or run COMMAND there: vmkit ssh NAME -- CMD ARGS..."""
    vm = api.get(name)
    vm.require_running()
    argv = vm.ssh_command(list(command))
    argv[0] = which("ssh")
    sys.stdout.flush()
    os.execvp(argv[0], argv)
