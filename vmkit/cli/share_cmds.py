"""Live shares and forwards: share, unshare, shares, forward, unforward, forwards, attach."""

from __future__ import annotations

import click
from rich.table import Table

import vmkit.vm as api
from vmkit import sharepolicy
from vmkit.cli.render import console, err_console, progress_printer
from vmkit.errors import ForwardNotFound, InvalidInput

_VM = click.option(
    "--vm", "vm_name", metavar="NAME", help="The VM (default: the only running one)."
)


def register(group: click.Group) -> None:
    """Add this module's commands to ``group``."""
    for cmd in (share, unshare, shares, forward, unforward, forwards, repair, attach):
        group.add_command(cmd)


@click.command()
@click.argument("path")
@_VM
@click.option(
    "--to",
    "target",
    metavar="GUEST_PATH",
    help="Where it appears in the guest (default: the same path).",
)
@click.option("--readonly", is_flag=True, help="The guest may read but not write.")
@click.option(
    "--force",
    is_flag=True,
    help="Allow sharing / or your home folder, or a guest system folder as --to (never /).",
)
@click.option(
    "--mechanism",
    type=click.Choice(["virtiofs", "sshfs", "vboxsf"]),
    help="Override the automatic choice.",
)
def share(
    path: str,
    vm_name: str | None,
    target: str | None,
    readonly: bool,
    force: bool,
    mechanism: str | None,
) -> None:
    """Share host folder PATH into the running VM, at the same path."""
    vm = api.resolve(vm_name)
    spec = vm.share(
        path,
        target=target,
        readonly=readonly,
        force=force,
        mechanism=mechanism,
        progress=progress_printer(),
    )
    console.print(
        f"[green]✓[/] {spec.source} → {vm.name}:{spec.target} ({spec.mechanism}){_when(vm)}",
        soft_wrap=True,
    )


@click.command()
@click.argument("path")
@_VM
def unshare(path: str, vm_name: str | None) -> None:
    """Stop sharing PATH (host folder or guest path)."""
    vm = api.resolve(vm_name)
    spec = vm.unshare(path)
    console.print(f"[green]✓[/] {spec.source} is no longer shared with {vm.name}", soft_wrap=True)


@click.command()
@_VM
def shares(vm_name: str | None) -> None:
    """The VM's shared folders: desired, and whether each is really mounted."""
    vm = api.resolve(vm_name)
    active = {(s.source, s.target) for s in vm.active_shares()}
    table = Table("HOST PATH", "GUEST PATH", "MECHANISM", "MODE", "MADE BY", "ACTIVE")
    for s in vm.shares():
        table.add_row(
            s.source,
            s.target,
            s.mechanism,
            "ro" if s.readonly else "rw",
            s.describe_origin(),
            "yes" if (s.source, s.target) in active else "[red]no[/]",
        )
    console.print(table)
    for mech in sorted({s.mechanism for s in vm.shares()} & set(sharepolicy.CAVEATS)):
        console.print(f"note: {mech}: {sharepolicy.CAVEATS[mech]}", markup=False, soft_wrap=True)
    _orphans(vm, shares=True)


def _orphans(vm: api.VM, *, shares: bool) -> None:
    """What killed commands left (of shares, or of forwards), one line each."""
    for o in vm.orphans():
        if (o.leftover.share is not None) == shares:
            err_console.print(o.advice(vm.name), markup=False, soft_wrap=True)


def _when(vm: api.VM) -> str:
    return "" if vm.is_running() else "; the VM is stopped: it takes effect when the VM starts"


def _parse_ports(spec: str) -> tuple[int, int]:
    host, _, guest = spec.partition(":")
    try:
        return int(host), int(guest or host)
    except ValueError:
        raise InvalidInput(f"{spec!r} is not PORT or HOST_PORT:GUEST_PORT") from None


_ON_OFF = click.Choice(["on", "off"])


@click.command()
@click.argument("ports", metavar="HOST_PORT[:GUEST_PORT]", required=False)
@_VM
@click.option(
    "--auto",
    type=_ON_OFF,
    help="Forward every server listening in the guest automatically (on), or stop (off).",
)
@click.option(
    "--auto-public",
    type=_ON_OFF,
    help="Containers' ports published on 0.0.0.0 listen on all host interfaces (on), "
    "or on 127.0.0.1 only (off, the default).",
)
@click.option("--udp", is_flag=True, help="Forward UDP instead of TCP.")
@click.option("--public", is_flag=True, help="Listen on all interfaces, not just 127.0.0.1.")
@click.option(
    "--mechanism",
    type=click.Choice(["hostfwd", "ssh-tunnel", "natpf"]),
    help="Override the automatic choice.",
)
def forward(
    ports: str | None,
    vm_name: str | None,
    auto: str | None,
    auto_public: str | None,
    udp: bool,
    public: bool,
    mechanism: str | None,
) -> None:
    """Forward a host port to a port in the running VM, or set automatic forwarding:
    vmkit forward 8888 | vmkit forward --auto on"""
    if ports is None and auto is None and auto_public is None:
        raise click.UsageError("give HOST_PORT[:GUEST_PORT], --auto on|off or --auto-public on|off")
    vm = api.resolve(vm_name)
    if auto is not None or auto_public is not None:
        if ports is not None:
            raise click.UsageError("--auto and --auto-public take no port")
        settings = vm.set_auto_forward(
            listeners=None if auto is None else auto == "on",
            public=None if auto_public is None else auto_public == "on",
        )
        console.print(
            f"[green]✓[/] guest listeners forwarded automatically: "
            f"{'on' if settings['listeners'] else 'off'}; containers' ports on all interfaces: "
            f"{'on' if settings['public'] else 'off'}{_when(vm)}"
        )
        return
    assert ports is not None
    host_port, guest_port = _parse_ports(ports)
    if public:
        err_console.print(
            f"warning: port {host_port} will be reachable from other machines on your network",
            markup=False,
        )
    spec = vm.forward(
        host_port, guest_port, proto="udp" if udp else "tcp", public=public, mechanism=mechanism
    )
    console.print(
        f"[green]✓[/] {spec.host_ip}:{spec.host_port} → {vm.name}:{spec.guest_port}/{spec.proto} "
        f"({spec.mechanism}){_when(vm)}"
    )


@click.command()
@click.argument("host_port", type=int)
@_VM
@click.option("--udp", is_flag=True)
@click.option(
    "--force", is_flag=True, help="Also remove the NAT rule a VirtualBox VM's SSH goes through."
)
def unforward(host_port: int, vm_name: str | None, udp: bool, force: bool) -> None:
    """Stop forwarding HOST_PORT (on VirtualBox: any NAT rule of the VM on that port)."""
    vm = api.resolve(vm_name)
    proto = "udp" if udp else "tcp"
    try:
        spec = vm.unforward(host_port, proto=proto)
    except ForwardNotFound:
        if vm.record.provider != "virtualbox":
            raise
        # A rule vmkit has no record of: made in VirtualBox or by another tool.
        from vmkit.providers.virtualbox.natpf import NatPF
        from vmkit.state import ForwardSpec, locked

        with locked(vm.name):
            natpf = vm.provider.forward_mechanisms(vm.reload(), vm.ssh)[0]
            assert isinstance(natpf, NatPF)
            removed = natpf.remove_rules(ForwardSpec(host_port, host_port, proto), force=force)
        if not removed:
            raise
        names = ", ".join(repr(r.name) for r in removed)
        console.print(f"[green]✓[/] port {host_port}/{proto} is no longer forwarded (rule {names})")
        return
    console.print(f"[green]✓[/] port {spec.host_port}/{spec.proto} is no longer forwarded")


@click.command()
@_VM
def forwards(vm_name: str | None) -> None:
    """The VM's port forwards: desired, and whether each is really in place.

    For VirtualBox VMs every NAT rule of every network card is listed: ROLE says which one
    carries SSH (remove it only with `unforward --force`), which ones vmkit made, and which
    another tool made.
    """
    vm = api.resolve(vm_name)
    if vm.record.provider == "virtualbox":
        _virtualbox_forwards(vm)
        return
    active = {f.key for f in vm.active_forwards()}
    table = Table("HOST", "GUEST PORT", "PROTO", "MECHANISM", "MADE BY", "ACTIVE")
    for f in vm.forwards():
        table.add_row(
            f"{f.host_ip}:{f.host_port}",
            str(f.guest_port),
            f.proto,
            f.mechanism,
            f.describe_origin(),
            "yes" if f.key in active else "[red]no[/]",
        )
    console.print(table)
    settings = vm.auto_forward_settings()
    console.print(
        f"guest listeners forwarded automatically: {'on' if settings['listeners'] else 'off'}; "
        f"containers' ports on all interfaces: {'on' if settings['public'] else 'off'}",
        markup=False,
    )
    _orphans(vm, shares=False)


def _virtualbox_forwards(vm: api.VM) -> None:
    from vmkit.providers.virtualbox.natpf import NatPF

    natpf = vm.provider.forward_mechanisms(vm.record, vm.ssh)[0]
    assert isinstance(natpf, NatPF)
    views = natpf.rules()
    running = vm.is_running()
    table = Table("HOST", "GUEST PORT", "PROTO", "NIC", "RULE", "ROLE", "ACTIVE")
    for v in views:
        r = v.rule
        table.add_row(
            f"{r.host_ip or '0.0.0.0'}:{r.host_port}",
            f"{r.guest_ip + ':' if r.guest_ip else ''}{r.guest_port}",
            r.proto,
            str(r.nic),
            r.name,
            v.role,
            "yes" if running else "at start",
        )
    shown = {(v.rule.proto, v.rule.host_port) for v in views}
    for f in vm.forwards():
        if f.key not in shown:  # wanted, but VirtualBox has no such rule now
            table.add_row(
                f"{f.host_ip}:{f.host_port}",
                str(f.guest_port),
                f.proto,
                "-",
                "-",
                "vmkit",
                "[red]no[/]",
            )
    console.print(table)
    if any(v.ssh for v in views):
        console.print(
            "ROLE ssh: the rule vmkit reaches the guest's SSH through; "
            "only `vmkit unforward PORT --force` removes it",
            markup=False,
        )
    if not views:
        console.print(f"VM {vm.name!r} has no NAT port-forwarding rules", markup=False)
    _orphans(vm, shares=False)


@click.command()
@click.argument("name", required=False)
def repair(name: str | None) -> None:
    """Make VM NAME match its record: remove what interrupted commands left (QEMU devices,
    forwarding rules, helper processes, guest mounts, VirtualBox folders and NAT rules), finish
    interrupted removals, and put back wanted shares and forwards that are missing."""
    vm = api.resolve(name)
    done = vm.repair(progress=progress_printer())
    for line in done.fixed:
        console.print(f"[green]✓[/] {line}", soft_wrap=True, highlight=False)
    for e in done.problems:
        err_console.print(f"problem: {e}", markup=False, soft_wrap=True)
    if not done.fixed and not done.problems:
        console.print(f"VM {vm.name!r} matches its record: nothing to repair", markup=False)
    if done.problems:
        raise SystemExit(1)


@click.command()
@click.argument("url", required=False)
@click.option("--name", help="The name vmkit will know it by (with --refresh: the VM to finish).")
@click.option(
    "--key",
    type=click.Path(dir_okay=False),
    help="Private key for ssh:// hosts and VirtualBox VMs.",
)
@click.option("--user", help="SSH user (virtualbox: VMs; default: docker-machine's 'docker').")
@click.option("--fingerprint", help="Expected SHA256:... host key fingerprint.")
@click.option(
    "--trust-new-host-key",
    is_flag=True,
    help="ssh://: pin the host key as offered when known_hosts does not list the host.",
)
@click.option(
    "--refresh",
    is_flag=True,
    help="Finish an attached VirtualBox VM's SSH part: read its host key, confirm, pin it.",
)
@click.option("--yes", "-y", is_flag=True, help="With --refresh: pin the key without asking.")
def attach(
    url: str | None,
    name: str | None,
    key: str | None,
    user: str | None,
    fingerprint: str | None,
    trust_new_host_key: bool,
    refresh: bool,
    yes: bool,
) -> None:
    """Adopt an existing machine: ssh://user@host[:port], virtualbox:VMNAME, vagrant:PROJECT_DIR.

    A VirtualBox VM is attached in any state: NAT forwards work at once; if its SSH server
    cannot be reached yet, one line says why, and `vmkit attach --refresh NAME` (once it
    answers) shows the guest's host key for confirmation and pins it, so shares work.
    """
    if refresh:
        _refresh(name or url, key=key, user=user, fingerprint=fingerprint, yes=yes)
        return
    if not url or not name:
        raise click.UsageError("give the machine and --name NAME (or --refresh NAME)")
    vm = api.attach(
        url,
        name,
        key=key,
        user=user,
        fingerprint=fingerprint,
        trust_new_host_key=trust_new_host_key,
        progress=progress_printer(),
    )
    ep = vm.record.ssh
    console.print(f"[green]✓[/] attached {url} as [bold]{name}[/]", soft_wrap=True)
    if ep is not None:
        from vmkit.providers.sshhost import fingerprint as fp

        console.print(f"  host key pinned: {fp(ep.host_key)}")
    pending = vm.record.extra.get("ssh_pending")
    if pending:
        console.print(f"[yellow]![/] no SSH yet: {pending}", soft_wrap=True, highlight=False)


def _refresh(
    name: str | None, *, key: str | None, user: str | None, fingerprint: str | None, yes: bool
) -> None:
    import sys

    from vmkit.providers.virtualbox.adopt import refresh

    if not name:
        raise click.UsageError("name the attached VM: vmkit attach --refresh NAME")
    interactive = sys.stdin.isatty()
    if not (yes or fingerprint or interactive):
        raise InvalidInput(
            "--refresh shows the guest's host key for you to confirm, but there is no terminal "
            "to ask on",
            hint="pass --fingerprint SHA256:... (from the guest) or --yes",
        )

    def confirm(fp: str) -> bool:
        console.print(f"VM {name!r} offers the SSH host key {fp}", markup=False)
        return yes or click.confirm("Pin this key?", default=False)

    done = refresh(
        name,
        key=key,
        user=user,
        fingerprint=fingerprint,
        confirm=confirm,
        progress=progress_printer(),
    )
    was = " (it replaces the key pinned before)" if done.changed else ""
    console.print(f"[green]✓[/] host key pinned for [bold]{name}[/]: {done.fingerprint}{was}")
