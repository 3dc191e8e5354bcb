"""Host-side commands: ``doctor`` and the ``box`` group (build, list, remove)."""

from __future__ import annotations

import shutil

import click
from rich.table import Table

from vmkit import boxes
from vmkit.cli.render import console, progress_printer
from vmkit.errors import VmkitError
from vmkit.host.arch import ARCHES, default_arch

# What doctor checks for, and the Debian package that provides it.
_TOOLS = [
    ("qemu-system-x86_64", "qemu-system-x86", "runs amd64 and i386 VMs"),
    ("qemu-system-aarch64", "qemu-system-arm", "runs arm64 VMs"),
    ("qemu-img", "qemu-utils", "makes VM disks"),
    ("/usr/lib/qemu/virtiofsd", "qemu-system-common", "fast live shares (virtio-fs)"),
    ("/usr/lib/openssh/sftp-server", "openssh-sftp-server", "live shares over SSH (sshfs)"),
    ("ssh", "openssh-client", "`vmkit ssh`"),
    ("mmdebstrap", "mmdebstrap", "building the vmkit-mini box"),
    ("mkfs.ext4", "e2fsprogs", "building boxes and seed disks"),
    ("docker", "docker.io (client only)", "`vmkit docker` with the host's CLI (optional)"),
    ("VBoxManage", "VirtualBox", "the virtualbox provider (optional)"),
    ("vagrant", "vagrant", "the vagrant provider and labs (optional)"),
]


def register(group: click.Group) -> None:
    """Add ``doctor`` and ``box`` to ``group``."""
    group.add_command(doctor)
    group.add_command(box)
    from vmkit.cli.lab_cmds import register_box_commands

    register_box_commands(box)


@click.command()
@click.option(
    "--recheck",
    is_flag=True,
    help="Boot the box's kernel again instead of using the cached verdict.",
)
def doctor(recheck: bool) -> None:
    """Check this host: hardware virtualization, the accelerator and fallback vmkit will use, tools."""
    from vmkit.host import accel
    from vmkit.host.fallback import choose
    from vmkit.host.virt import detect, explain

    kernel = None
    try:
        # The host CPU's box: the only one an accelerator can run.
        kernel = boxes.find(arch=default_arch()).kernel
    except VmkitError:
        console.print(
            "(the vmkit-mini box is not built yet, so no accelerator was proven by booting it; "
            "`vmkit box build` first, or `vmkit up`, which proves it)",
            markup=False,
        )
    if recheck:
        accel.forget()
    hav = detect(kernel=kernel, recheck=recheck)
    console.print(explain(hav), markup=False, soft_wrap=True)
    request = accel.requested()
    try:
        plan = choose("qemu", hav, None, request)
        picks = (
            f"{plan.provider} ({accel.display(plan.accel)}), {plan.box} {plan.arch}. {plan.reason}"
        )
    except VmkitError as e:
        picks = f"nothing: --accel {request} (from ${accel.ENV}) fails: {e}"
    console.print(f"\nvmkit up will use: {picks}", markup=False, soft_wrap=True)
    vbox = _vbox_plan(hav)
    if vbox:
        console.print(vbox, markup=False, soft_wrap=True)
    table = Table("TOOL", "FOUND", "FOR", "PACKAGE")
    for tool, package, purpose in _TOOLS:
        found = shutil.which(tool)
        table.add_row(tool, "[green]yes[/]" if found else "[red]no[/]", purpose, package)
    console.print(table)


def _vbox_plan(hav: object) -> str | None:
    from vmkit.errors import VmkitError
    from vmkit.host.fallback import choose
    from vmkit.providers.virtualbox import discover

    try:
        version = discover.version()
        plan = choose("virtualbox", hav, version)  # type: ignore[arg-type]
    except VmkitError:
        return None
    v = ".".join(map(str, version))
    return f"vmkit up --provider virtualbox (VirtualBox {v}) will use: {plan.provider} {plan.arch}. {plan.reason}"


@click.group()
def box() -> None:
    """Build, list and remove boxes (VM images) in vmkit's cache."""


@box.command("build")
@click.argument("name", default="vmkit-mini")
@click.option(
    "--arch", type=click.Choice(ARCHES), default=default_arch, help="[default: the host CPU's]"
)
@click.option("--force", is_flag=True, help="Rebuild even if the cache has it.")
def box_build(name: str, arch: str, force: bool) -> None:
    """Build box NAME from its recipe (Debian packages only; needs root and mmdebstrap)."""
    b = boxes.build(name, arch, progress=progress_printer(), force=force)
    size = b.disk.stat().st_size / 2**20
    console.print(f"[green]✓[/] box {b.name} ({b.arch}) is in {b.dir} ({size:.0f} MiB disk)")


@box.command("list")
def box_list() -> None:
    """The boxes in the cache."""
    table = Table("NAME", "ARCH", "DISK", "BUILT", "FOLDER")
    for b in boxes.list_boxes():
        table.add_row(
            b.name,
            b.arch,
            f"{b.disk.stat().st_size / 2**20:.0f} MiB",
            str(b.manifest.get("built_at", "?")),
            str(b.dir),
        )
    console.print(table)


@box.command("remove")
@click.argument("name", default="vmkit-mini")
@click.option(
    "--arch", type=click.Choice(ARCHES), default=default_arch, help="[default: the host CPU's]"
)
def box_remove(name: str, arch: str) -> None:
    """Remove box NAME from the cache (refused while VMs are made from it)."""
    boxes.remove(name, arch)
    console.print(f"[green]✓[/] removed box {name} ({arch})")
