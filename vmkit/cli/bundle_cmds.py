"""Workshop bundles: bundle create, verify, load (over vmkit.bundles)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click
from rich.progress import Progress

import vmkit.vm as api
from vmkit import bundles
from vmkit.boxes import ARCHES
from vmkit.bundles import lab as bundle_lab
from vmkit.bundles.make import COMPRESSIONS, is_image_file
from vmkit.cli.render import console, err_console, progress_printer, transfer_columns


def register(group: click.Group) -> None:
    """Add this module's commands to ``group``."""
    group.add_command(bundle)


@click.group()
def bundle() -> None:
    """Everything a class needs in one folder (a USB stick), checked and loaded offline."""


@contextmanager
def _bar(label: str) -> Iterator[bundles.BytesProgress]:
    """One progress line for the whole bundle: bytes, MiB/s, ETA, and the item at hand."""
    with Progress(*transfer_columns(), console=err_console, transient=False) as bar:
        task = bar.add_task(label, total=None)

        def show(done: int, total: int, what: str) -> None:
            bar.update(task, completed=done, total=max(total, done) or None, description=what)

        yield show


@bundle.command("create")
@click.argument("folder", type=click.Path(file_okay=False, path_type=str))
@click.option("--box", metavar="NAME", help="A built box to put in (e.g. vmkit-mini).")
@click.option("--arch", type=click.Choice(ARCHES), default="amd64", show_default=True)
@click.option(
    "--image",
    "image_specs",
    multiple=True,
    metavar="NAME:TAG|FILE",
    help="An image in the VM's Docker (saved from it) or a `docker save` file; repeatable.",
)
@click.option(
    "--vagrant-box", "vagrant_boxes", multiple=True, metavar="FILE", help="A .box file; repeatable."
)
@click.option(
    "--vm",
    "vm_name",
    metavar="NAME",
    help="The VM images are saved from (default: the only running one).",
)
@click.option(
    "--compression", type=click.Choice(sorted(COMPRESSIONS)), default="zstd", show_default=True
)
@click.option(
    "--lab",
    "lab_template",
    metavar="TEMPLATE",
    help="A course lab (oommf, docker-host, course-lab, or your .j2 file); needs --roster.",
)
@click.option(
    "--roster",
    "roster_csv",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The class roster (CSV with a `name` column) of --lab.",
)
@click.option("--lab-name", metavar="NAME", help="The lab's name (default: from FOLDER).")
@click.option("--lab-box", metavar="NAME", help="The lab's Vagrant box (default: the template's).")
def create(
    folder: str,
    box: str | None,
    arch: str,
    image_specs: tuple[str, ...],
    vagrant_boxes: tuple[str, ...],
    vm_name: str | None,
    compression: str,
    lab_template: str | None,
    roster_csv: Path | None,
    lab_name: str | None,
    lab_box: str | None,
) -> None:
    """Make bundle FOLDER (new or empty) from a box, images, Vagrant boxes and a course lab."""
    if (lab_template is None) != (roster_csv is None):
        raise click.UsageError("--lab and --roster go together")
    lab = None
    if lab_template is not None and roster_csv is not None:
        lab = bundle_lab.make(
            lab_template,
            roster_csv,
            name=lab_name or bundle_lab.default_name(Path(folder)),
            box=lab_box,
        )
    vm = None
    if any(not is_image_file(s) for s in image_specs):
        vm = api.resolve(vm_name)
    with _bar("making the bundle") as show:
        made = bundles.create(
            folder,
            box=box,
            arch=arch,
            images_=image_specs,
            vagrant_boxes=vagrant_boxes,
            vm=vm,
            lab=lab,
            compression=compression,
            progress=show,
        )
    for item in made.items:
        console.print(f"[green]✓[/] {item.label} → {item.file}", soft_wrap=True)
    console.print(
        f"  {made.size / (1 << 20):.0f} MiB in {made.dir} (bundle.json, README.txt)", soft_wrap=True
    )


@bundle.command("verify")
@click.argument("folder", type=click.Path(file_okay=False, path_type=str))
def verify(folder: str) -> None:
    """Check every file of bundle FOLDER against bundle.json (size, then sha256)."""
    with _bar("checking") as show:
        checked = bundles.verify(folder, progress=show)
    console.print(
        f"[green]✓[/] {len(checked.items)} files, {checked.size / (1 << 20):.0f} MiB, "
        "match bundle.json",
        soft_wrap=True,
    )


@bundle.command("load")
@click.argument("folder", type=click.Path(file_okay=False, path_type=str))
@click.option(
    "--vm",
    "vm_name",
    metavar="NAME",
    help="The VM for the images, created from the bundle's box if it does not exist "
    "(default: the only running one).",
)
@click.option(
    "--lab-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the bundle's course lab is rendered (default: ./LAB_NAME).",
)
@click.option(
    "--student",
    "students",
    multiple=True,
    metavar="MACHINE",
    help="Render only this student's machine of the lab (repeatable; default: all).",
)
def load(folder: str, vm_name: str | None, lab_dir: Path | None, students: tuple[str, ...]) -> None:
    """Load bundle FOLDER: box into the cache, images into the VM, Vagrant boxes into Vagrant,
    the course lab into a folder.

    Checks every file as it reads it; skips what is already there, so after an interruption
    run it again.
    """
    with _bar("loading") as show:
        report = bundles.load(
            folder,
            vm=vm_name,
            lab_dir=lab_dir,
            students=students or None,
            progress=show,
            say=progress_printer(),
        )
    for label in report.skipped:
        console.print(f"[dim]-[/] {label}: already there", soft_wrap=True)
    for label in report.loaded:
        console.print(f"[green]✓[/] {label}", soft_wrap=True)
    where = f" into VM {report.vm}" if report.vm else ""
    console.print(
        f"  {report.bytes / (1 << 20):.0f} MiB{where} in {report.seconds:.1f} s "
        f"({report.mib_per_s:.1f} MiB/s)",
        soft_wrap=True,
    )
    if report.lab_dir is not None:
        console.print(
            f"  lab in {report.lab_dir}: `cd` into a machine's folder and `vagrant up`, "
            f"or `vmkit lab up {report.lab_dir}`",
            soft_wrap=True,
        )
