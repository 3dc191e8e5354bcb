"""Checking a bundle (``verify``) and putting it to use (``load``), each file read once.

``load`` plans first: what is already there is skipped (the box if the cache holds the same
build, by the sha256s of its files; an image if dockerd has its id; a Vagrant box if Vagrant
lists its name), and the free space of the host and of the VM's Docker is checked against
what the rest needs before a byte is sent. Then each item is streamed through a hash: the box
into the cache (``boxes.store.import_box``), images into dockerd (``docker.images.load`` with
the expected digest), Vagrant boxes through ``vagrant box add --checksum``. An item whose
digest differs is refused before its last byte is used. Interrupted (Ctrl-C, a pulled stick),
nothing half-made remains, and the next ``load`` skips what finished.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, cast

import attrs

from vmkit import home
from vmkit.boxes import store
from vmkit.bundles import lab as labfile
from vmkit.bundles import manifest
from vmkit.bundles.make import BytesProgress, quiet
from vmkit.bundles.manifest import Bundle, Item
from vmkit.docker import images
from vmkit.docker.client import session
from vmkit.errors import (
    BoxCorrupt,
    BoxNotFound,
    FileDamaged,
    GuestCommandFailed,
    InvalidInput,
    NotEnoughSpace,
    VMNotFound,
)
from vmkit.progress import Progress, no_progress
from vmkit.streams import HashingReader, check_digest, sha256_file

if TYPE_CHECKING:
    from vmkit.vm import VM

_MIB = 1 << 20


@attrs.frozen
class LoadReport:
    """What ``load`` did: items loaded and skipped (their labels), bytes read, seconds taken."""

    loaded: list[str]
    skipped: list[str]
    bytes: int
    seconds: float
    vm: str | None
    #: Where the bundle's course lab was rendered (None: the bundle has none).
    lab_dir: Path | None = None

    @property
    def mib_per_s(self) -> float:
        return self.bytes / _MIB / max(self.seconds, 1e-9)


def _missing_or_short(bundle: Bundle, item: Item) -> None:
    path = bundle.path(item)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise FileDamaged(
            f"{item.file} is missing from the bundle ({item.size} bytes expected)"
        ) from None
    if size != item.size:
        raise FileDamaged(
            f"{item.file} is {size} bytes, the manifest says {item.size}"
            + (" (cut short)" if size < item.size else "")
        )


def verify(folder: str | os.PathLike[str], *, progress: BytesProgress = quiet) -> Bundle:
    """Check every file of the bundle against its size and sha256 in ``bundle.json``.

    Sizes first (a missing or cut-short file is named at once), then the digests.
    ``FileDamaged`` names every file that differs, with expected vs found.
    """
    bundle = manifest.read(folder)
    problems: list[str] = []
    for item in bundle.items:
        try:
            _missing_or_short(bundle, item)
        except FileDamaged as e:
            problems.append(e.message)
    if problems:
        raise _damaged(problems)
    total = bundle.size
    done = [0]
    for item in bundle.items:

        def read(n: int, what: str = item.file) -> None:
            done[0] += n
            progress(done[0], total, what)

        try:
            found = sha256_file(bundle.path(item), on_read=read)
            check_digest(
                item.file,
                size=item.size,
                sha256=item.sha256,
                found_size=item.size,
                found_sha256=found,
            )
        except FileDamaged as e:
            problems.append(e.message)
        except OSError as e:
            problems.append(f"cannot read {item.file}: {e.strerror or e}")
    if problems:
        raise _damaged(problems)
    return bundle


def _damaged(problems: Sequence[str]) -> FileDamaged:
    if len(problems) == 1:
        return FileDamaged(problems[0])
    return FileDamaged(f"{len(problems)} files do not match the manifest: " + "; ".join(problems))


def load(
    folder: str | os.PathLike[str],
    *,
    vm: VM | str | None = None,
    lab_dir: str | os.PathLike[str] | None = None,
    students: Sequence[str] | None = None,
    progress: BytesProgress = quiet,
    say: Progress = no_progress,
) -> LoadReport:
    """Load the bundle: box into the cache, images into ``vm``'s Docker, Vagrant boxes into
    Vagrant, and its course lab rendered into ``lab_dir``.

    ``vm``: a VM, or the name of one (created from the bundle's box and started if needed);
    None means the one running VM (only needed if the bundle has images).
    ``lab_dir``: default a folder named after the lab in the current folder; ``students``:
    the machine names to render (default the whole roster).
    ``progress(done, total, what)`` covers the whole bundle in bytes read.
    """
    started = time.monotonic()
    bundle = manifest.read(folder)
    manifest.require_runnable(bundle.arch, f"bundle {bundle.dir}")
    for item in bundle.items:
        _missing_or_short(bundle, item)

    boxes = [i for i in bundle.items if i.kind == "box"]
    image_items = [i for i in bundle.items if i.kind == "image"]
    vagrant_items = [i for i in bundle.items if i.kind == "vagrant-box"]
    lab_items = [i for i in bundle.items if i.kind == "lab"]
    lab_spec = _lab(bundle, lab_items[0]) if lab_items else None
    if lab_spec is None and students:
        raise InvalidInput(
            f"bundle {bundle.dir} has no course lab, so no student to choose",
            hint="leave out --student",
        )
    if lab_spec is not None and students:
        labfile.machines(lab_spec, students)  # an unknown student is refused before loading

    skipped = [i for i in boxes + vagrant_items if _present(i)]
    todo_boxes = [i for i in boxes if i not in skipped]
    todo_vagrant = [i for i in vagrant_items if i not in skipped]
    _require_host_space(todo_boxes, todo_vagrant)

    meter = Meter(sum(i.size for i in todo_boxes + todo_vagrant + image_items), progress)
    loaded: list[str] = []
    for item in todo_boxes:
        _load_box(bundle, item, meter.item(item))
        loaded.append(item.label)

    target: VM | None = None
    if image_items:
        target = _target_vm(vm, boxes, say)
        for item in image_items:
            manifest.require_runnable(item.arch, item.label, runs_on=target.record.arch)
        present = _present_images(target, image_items)
        skipped += present
        meter.total -= sum(i.size for i in present)
        todo_images = [i for i in image_items if i not in present]
        _require_vm_space(target, todo_images)
        for item in todo_images:
            images.load(
                target,
                bundle.path(item),
                progress=meter.item(item).file_progress,
                expect=images.Expected(item.file, item.size, item.sha256),
            )
            loaded.append(item.label)

    for item in todo_vagrant:
        meter.item(item).file_progress(0, item.size)
        _vagrant_add(bundle, item)
        meter.item(item).file_progress(item.size, item.size)
        loaded.append(item.label)

    lab_out: Path | None = None
    if lab_spec is not None:
        lab_out = Path(os.fspath(lab_dir or Path.cwd() / lab_spec.name)).expanduser().resolve()
        if labfile.rendered(lab_out, lab_spec):
            skipped.append(lab_items[0])
        else:
            labfile.render(lab_spec, lab_out, only=students or None)
            loaded.append(lab_items[0].label)
    progress(meter.done, meter.total, "done")
    return LoadReport(
        loaded=loaded,
        skipped=[i.label for i in skipped],
        bytes=meter.done,
        seconds=time.monotonic() - started,
        vm=target.name if target is not None else None,
        lab_dir=lab_out,
    )


class Meter:
    """One progress display for the whole bundle: bytes read of all items to load."""

    def __init__(self, total: int, progress: BytesProgress) -> None:
        self.total = total
        self.done = 0
        self.progress = progress

    def item(self, item: Item) -> _ItemMeter:
        return _ItemMeter(self, item)


class _ItemMeter:
    def __init__(self, meter: Meter, item: Item) -> None:
        self.meter = meter
        self.item = item
        self.base = meter.done

    def on_read(self, n: int) -> None:
        self.meter.done += n
        self.meter.progress(self.meter.done, self.meter.total, self.item.label)

    def file_progress(self, file_done: int, file_total: int) -> None:
        self.meter.done = self.base + file_done
        self.meter.progress(self.meter.done, self.meter.total, self.item.label)


def _lab(bundle: Bundle, item: Item) -> labfile.LabSpec:
    """The bundle's lab, its file checked against the manifest (it is small: read whole)."""
    path = bundle.path(item)
    check_digest(
        item.file,
        size=item.size,
        sha256=item.sha256,
        found_size=path.stat().st_size,
        found_sha256=sha256_file(path),
    )
    return labfile.read(path)


def _present(item: Item) -> bool:
    return _box_present(item) if item.kind == "box" else _vagrant_present(item)


# -- the box ---------------------------------------------------------------------------------


def _box_present(item: Item) -> bool:
    try:
        return store.same_build(store.find(item.name, item.arch), item.box_files)
    except BoxNotFound:
        return False


def _load_box(bundle: Bundle, item: Item, tick: _ItemMeter) -> None:
    path = bundle.path(item)
    try:
        with open(path, "rb") as raw:
            src = HashingReader(raw, on_read=tick.on_read)

            def whole_file() -> None:
                src.finish(item.file, size=item.size, sha256=item.sha256)

            try:
                store.import_box(
                    item.name, item.arch, cast(IO[bytes], src), before_publish=whole_file
                )
            except BoxCorrupt:
                whole_file()  # names the bundle's file, expected vs found
                raise
    except OSError as e:
        raise FileDamaged(
            f"cannot read {item.file}: {e.strerror or e}",
            hint="the disk or USB stick went away or is failing: plug it in and run the load again",
        ) from e


# -- images ----------------------------------------------------------------------------------


def _target_vm(vm: VM | str | None, boxes: Sequence[Item], say: Progress) -> VM:
    import vmkit.vm as api

    if vm is None:
        return api.resolve(None)
    if isinstance(vm, str):
        box = boxes[0] if boxes else None
        args = {"box": box.name, "arch": box.arch} if box is not None else {}
        try:
            target = api.get(vm)
        except VMNotFound:
            say(f"creating VM {vm}" + (f" from box {box.name} ({box.arch})" if box else ""))
            return api.up(vm, progress=say, **args)
        if not target.is_running():
            say(f"starting VM {vm}")
            return api.up(vm, progress=say)
        return target
    vm.require_running()
    return vm


def _present_images(vm: VM, items: Sequence[Item]) -> list[Item]:
    """The image items whose ids dockerd has (their tags put back if lost)."""
    with session(vm, f"listing the images in VM {vm.name!r}") as client:
        have = {str(i) for i in client.api.images(quiet=True, all=True)}
        present = [i for i in items if i.ids and all(x in have for x in i.ids)]
        for item in present:
            for tag in item.tags:
                repo, _, name = tag.rpartition(":")
                client.api.tag(item.ids[0], repo, name)
        return present


def _require_vm_space(vm: VM, items: Sequence[Item]) -> None:
    """Docker unpacks an archive beside its layers: the biggest tar once more, on top of all."""
    if not items:
        return
    need = sum(i.tar_size or i.size for i in items) + max(i.tar_size or i.size for i in items)
    with session(vm, f"asking dockerd in VM {vm.name!r} for its folder") as client:
        root = str(client.info().get("DockerRootDir") or "/var/lib/docker")
    try:
        out = vm.run(["df", "-Pk", root]).stdout
        free = int(out.splitlines()[-1].split()[3]) * 1024
    except (GuestCommandFailed, IndexError, ValueError):
        return  # no df answer: dockerd will say it when it runs out
    if free < need:
        raise NotEnoughSpace(
            f"the images need {need / _MIB:.0f} MiB in VM {vm.name!r} ({root}) and "
            f"{free / _MIB:.0f} MiB are free",
            hint="make room (`vmkit docker -- system prune -a`) or create the VM with a bigger "
            "--disk",
        )


# -- the host --------------------------------------------------------------------------------


def _require_host_space(boxes: Sequence[Item], vagrant_boxes: Sequence[Item]) -> None:
    cache = home.cache_dir()
    wants: list[tuple[Path, int, str]] = []
    if boxes:
        wants.append((cache, sum(i.size for i in boxes), "the box cache"))
    if vagrant_boxes:
        vhome = Path(os.environ.get("VAGRANT_HOME", "~/.vagrant.d")).expanduser()
        wants.append((vhome, 2 * sum(i.size for i in vagrant_boxes), "Vagrant's boxes"))
    for path, need, what in wants:
        probe = path
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        free = shutil.disk_usage(probe).free
        if free < need:
            raise NotEnoughSpace(
                f"{what} ({path}) need {need / _MIB:.0f} MiB and {free / _MIB:.0f} MiB are free",
                hint="free that much space on the host and run the load again",
            )


# -- Vagrant ---------------------------------------------------------------------------------


def _vagrant_present(item: Item) -> bool:
    from vmkit.providers.vagrant import parse
    from vmkit.providers.vagrant.cli import VagrantCLI

    out = VagrantCLI(Path.cwd()).run("box", "list", "--machine-readable").stdout
    names = {
        line.data[0]
        for line in parse.machine_readable(out)
        if line.kind == "box-name" and line.data
    }
    return item.name in names


def _vagrant_add(bundle: Bundle, item: Item) -> None:
    from vmkit.providers.vagrant.cli import VagrantCLI

    cli = VagrantCLI(bundle.dir)
    path = bundle.path(item)
    if not path.is_file():
        raise InvalidInput(f"{item.file} is missing from the bundle")
    # Vagrant reads the file itself and checks the sha256 as it does.
    cli.run(
        "box",
        "add",
        "--name",
        item.name,
        "--checksum-type",
        "sha256",
        "--checksum",
        item.sha256,
        str(path),
        timeout=3600,
    )
