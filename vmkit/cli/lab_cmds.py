"""Course labs and Vagrant boxes: ``vmkit lab render|up|status|down``, ``vmkit box package|catalog``.

Thin over ``vmkit.labs``, ``vmkit.boxes.packaging`` and ``vmkit.boxes.catalog``; ``register`` adds the
``lab`` group, ``register_box_commands`` adds two commands to the ``box`` group.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import click
from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from vmkit import labs
from vmkit.boxes import catalog, packaging
from vmkit.cli.render import console, progress_printer
from vmkit.errors import InvalidInput
from vmkit.labs.run import LabEvent, LabFailed, LabReport


def register(group: click.Group) -> None:
    """Add the ``lab`` command group to ``group``."""
    group.add_command(lab)


def register_box_commands(box_group: click.Group) -> None:
    """Add ``package`` and ``catalog`` to the ``box`` command group."""
    box_group.add_command(package_cmd)
    box_group.add_command(catalog_cmd)


# -- lab ------------------------------------------------------------------------------------


@click.group()
def lab() -> None:
    """Course labs: one Vagrant machine per student, from a template and a roster."""


def _port_range(text: str) -> tuple[int, int]:
    try:
        low, high = (int(p) for p in text.split("-", 1))
    except ValueError:
        raise InvalidInput(
            f"port range {text!r} is not LOW-HIGH", hint="e.g. 20000-29999"
        ) from None
    return low, high


def _guest_ports(values: tuple[str, ...]) -> dict[str, int] | None:
    if not values:
        return None
    out: dict[str, int] = {}
    for v in values:
        name, _, port = v.partition("=")
        if not name or not port.isdigit():
            raise InvalidInput(
                f"--port {v!r} is not NAME=GUESTPORT", hint="e.g. --port jupyter=8888"
            )
        out[name] = int(port)
    return out


@lab.command("render")
@click.argument("template")
@click.option(
    "--roster",
    "roster_csv",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="CSV with a `name` column (optional: machine, email).",
)
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="New folder for the lab.",
)
@click.option(
    "--port-range",
    default="20000-29999",
    show_default=True,
    help="Host ports (on 127.0.0.1) to hand out.",
)
@click.option("--name", "lab_name", help="Lab name (default: from the folder name).")
@click.option("--box", help="Box for every machine (default: the template's).")
@click.option("--box-url", default="", help="Where vagrant gets the box if it is not added yet.")
@click.option("--provider", type=click.Choice(["virtualbox", "libvirt"]), help="Vagrant provider.")
@click.option("--cpus", type=int)
@click.option("--memory", type=int, help="MiB of RAM per machine.")
@click.option(
    "--port",
    "ports",
    multiple=True,
    metavar="NAME=GUESTPORT",
    help="Forward this guest port (repeatable; replaces the template's).",
)
@click.option(
    "--libvirt-driver",
    type=click.Choice(["auto", "kvm", "qemu"]),
    default="auto",
    show_default=True,
    help="qemu = emulation, for hosts without VT-x/AMD-V.",
)
def render_cmd(
    template: str,
    roster_csv: Path,
    out_dir: Path,
    port_range: str,
    lab_name: str | None,
    box: str | None,
    box_url: str,
    provider: str | None,
    cpus: int | None,
    memory: int | None,
    ports: tuple[str, ...],
    libvirt_driver: str,
) -> None:
    """Write one Vagrant project per student of --roster into --out.

    TEMPLATE is oommf, docker-host, course-lab, or the path of your own .j2 file.
    """
    started = time.monotonic()
    manifest = labs.render(
        template,
        roster_csv,
        out_dir,
        port_range=_port_range(port_range),
        lab_name=lab_name,
        box=box,
        box_url=box_url,
        provider=provider,
        cpus=cpus,
        memory=memory,
        guest_ports=_guest_ports(ports),
        libvirt_driver=labs.libvirt_driver(libvirt_driver),
    )
    table = Table("machine", "student", "host ports (127.0.0.1)", title=f"lab {manifest.lab}")
    for s in manifest.students:
        table.add_row(s.machine, s.name, ", ".join(f"{k} {v}" for k, v in s.ports.items()))
    console.print(table)
    console.print(
        f"[green]✓[/] {len(manifest.students)} machines in {out_dir} "
        f"({time.monotonic() - started:.1f} s); box {manifest.box}, provider {manifest.provider}",
        soft_wrap=True,
    )
    console.print(f"  start them: vmkit lab up {out_dir} --parallel 2", soft_wrap=True)


class _LabDisplay:
    """One live table for all machines; events arrive from worker threads."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.lock = threading.Lock()
        self.rows: dict[str, tuple[str, str, str]] = {}
        self.started = time.monotonic()

    def __call__(self, event: LabEvent) -> None:
        with self.lock:
            message = event.message.splitlines()[0][:100] if event.message else ""
            self.rows[event.machine] = (event.student, event.phase, message)

    def render(self) -> Table:
        colours = {"queued": "dim", "running": "yellow", "done": "green", "failed": "red"}
        table = Table(
            "machine",
            "student",
            "phase",
            "last message",
            title=f"{self.title}  {time.monotonic() - self.started:5.0f}s",
        )
        with self.lock:
            for machine, (student, phase, message) in self.rows.items():
                table.add_row(machine, student, Text(phase, style=colours.get(phase, "")), message)
        return table


def _finish(report: LabReport) -> None:
    table = Table("machine", "student", "result", "state", "seconds")
    for o in report.outcomes:
        table.add_row(
            o.machine,
            o.student,
            Text("ok", style="green") if o.ok else Text("failed", style="red"),
            o.detail or (o.state.value if o.state else ""),
            f"{o.seconds:.0f}",
        )
    console.print(table)
    if report.failed:
        console.print(f"[red]{len(report.failed)} of {len(report.outcomes)} failed:[/]")
        for o in report.failed:
            console.print(f"  {o.machine}: {o.error}", markup=False, soft_wrap=True)
        raise LabFailed(report)


def _run_with_display(
    title: str, action: Callable[..., LabReport], lab_dir: Path, **kwargs: object
) -> LabReport:
    display = _LabDisplay(title)
    with Live(
        get_renderable=lambda: Group(display.render()),
        console=console,
        refresh_per_second=4,
        transient=True,
    ):
        return action(lab_dir, progress=display, **kwargs)


_lab_dir = click.argument("lab_dir", type=click.Path(file_okay=False, exists=True, path_type=Path))
_parallel = click.option(
    "--parallel",
    type=click.IntRange(min=1),
    default=2,
    show_default=True,
    help="How many vagrant commands run at once.",
)
_only = click.option("--only", multiple=True, metavar="MACHINE", help="Just these machines.")


@lab.command("up")
@_lab_dir
@_parallel
@_only
def up_cmd(lab_dir: Path, parallel: int, only: tuple[str, ...]) -> None:
    """`vagrant up` every student's machine, --parallel at a time."""
    _finish(_run_with_display("lab up", labs.up, lab_dir, parallel=parallel, only=only or None))


@lab.command("status")
@_lab_dir
@click.option("--parallel", type=click.IntRange(min=1), default=4, show_default=True)
@_only
def status_cmd(lab_dir: Path, parallel: int, only: tuple[str, ...]) -> None:
    """The state of every student's machine."""
    _finish(labs.status(lab_dir, parallel=parallel, only=only or None))


@lab.command("down")
@_lab_dir
@_parallel
@_only
@click.option("--destroy", is_flag=True, help="Destroy the machines (and free the lab's ports).")
def down_cmd(lab_dir: Path, parallel: int, only: tuple[str, ...], destroy: bool) -> None:
    """`vagrant halt` every machine, or with --destroy `vagrant destroy` it."""
    title = "lab destroy" if destroy else "lab halt"
    _finish(
        _run_with_display(
            title, labs.down, lab_dir, parallel=parallel, only=only or None, destroy=destroy
        )
    )


# -- box ------------------------------------------------------------------------------------


@click.command("package")
@click.argument("name", default="vmkit-mini")
@click.option("--arch", type=click.Choice(["amd64", "i386"]), default="amd64", show_default=True)
@click.option(
    "--provider", type=click.Choice(list(packaging.PROVIDERS)), default="libvirt", show_default=True
)
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The .box file to write (metadata goes beside it as .json).",
)
@click.option(
    "--libvirt-driver",
    type=click.Choice(["qemu", "kvm"]),
    help="Write this driver into the box (default: leave it to the project).",
)
def package_cmd(
    name: str, arch: str, provider: str, output: Path, libvirt_driver: str | None
) -> None:
    """Package the built box NAME as a Vagrant box for --provider."""
    made = packaging.package(
        name,
        arch=arch,
        provider=provider,
        output=output,
        libvirt_driver=libvirt_driver,
        progress=progress_printer(),
    )
    console.print(
        f"[green]✓[/] {made.path} ({made.size / 1e6:.0f} MB, {made.seconds:.1f} s): "
        f"{made.box_name} {made.version} for {made.provider}",
        soft_wrap=True,
    )
    console.print(f"  sha256 {made.sha256}")
    console.print(f"  add it:  vagrant box add {made.metadata_path}", soft_wrap=True)
    if not made.boots:
        console.print(
            "[yellow]![/] this VirtualBox box does not boot yet: vmkit-mini has no bootloader "
            "(see docs/vagrant.md)"
        )


@click.command("catalog")
@click.option("--json", "as_json", is_flag=True, help="Print the entries as JSON.")
def catalog_cmd(as_json: bool) -> None:
    """The boxes vmkit knows: where each comes from and what is in it."""
    entries = catalog.load()
    if as_json:
        import attrs

        click.echo(json.dumps([attrs.asdict(e) for e in entries], indent=2))
        return
    table = Table()
    for heading in ("name", "arch", "source"):
        table.add_column(heading, no_wrap=True)
    table.add_column("providers")
    table.add_column("description")
    for e in entries:
        table.add_row(e.name, e.arch, e.source, ", ".join(e.providers), e.description)
    console.print(table)
