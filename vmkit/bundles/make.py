"""Making a bundle: the box from the cache, images from a VM's Docker or from files, Vagrant boxes.

Every item is written once and hashed as it is written (no second read). Images are
re-compressed with zstd by default (``compression="none"`` keeps plain tars); their ids, tags
and architecture are read from the archive itself as it passes. ``bundle.json`` is written
last, so a folder whose creation was interrupted has no manifest and is never taken for a
bundle; the files this call wrote are removed again on failure. A course lab goes in as its
template, roster and options (``vmkit.bundles.lab``), rendered where the bundle is loaded.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, cast

from vmkit.boxes import store
from vmkit.bundles import lab as labfile
from vmkit.bundles import manifest
from vmkit.bundles.lab import LabSpec
from vmkit.bundles.manifest import Bundle, Item
from vmkit.docker import images
from vmkit.errors import InvalidInput
from vmkit.streams import CHUNK, HashingReader, HashingWriter, sha256_file

if TYPE_CHECKING:
    from vmkit.vm import VM

#: ``(bytes done, bytes in all or 0 if not known yet, what is being done)``.
BytesProgress = Callable[[int, int, str], None]

COMPRESSIONS = {"zstd": ".tar.zst", "none": ".tar"}


def quiet(done: int, total: int, what: str) -> None:
    pass


_ARCHIVE_NAME = re.compile(r"\.(tar|tgz)(\.(gz|xz|zst|bz2))?$")


def is_image_file(spec: str) -> bool:
    """Whether ``--image SPEC`` names a file rather than an image in the VM's Docker.

    A file: it exists, or it starts with ``.``, ``/`` or ``~``, or its name ends like an
    archive (``.tar``, ``.tar.zst``...). ``ghcr.io/sage/sage:10.4`` is an image name.
    """
    return (
        spec.startswith((".", "/", "~"))
        or _ARCHIVE_NAME.search(spec) is not None
        or Path(spec).expanduser().is_file()
    )


def create(
    dest: str | os.PathLike[str],
    *,
    box: str | None = None,
    arch: str = "amd64",
    images_: Sequence[str] = (),
    vagrant_boxes: Sequence[str | os.PathLike[str]] = (),
    vm: VM | None = None,
    lab: LabSpec | None = None,
    compression: str = "zstd",
    progress: BytesProgress = quiet,
) -> Bundle:
    """Make the bundle folder ``dest`` (new, or empty).

    ``box``: a built box (``arch``) from the cache. ``images_``: image archive files, or names
    of images in ``vm``'s Docker (saved from it). ``vagrant_boxes``: ``.box`` files. ``lab``: a
    course lab (``vmkit.bundles.lab.make``), rendered where the bundle is loaded.
    """
    if compression not in COMPRESSIONS:
        raise InvalidInput(
            f"unknown compression {compression!r}", hint=f"use {' or '.join(COMPRESSIONS)}"
        )
    root = Path(os.fspath(dest)).expanduser().resolve()
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise InvalidInput(
            f"{root} exists and is not an empty folder",
            hint="give a new folder; a bundle is made whole, never added to",
        )
    if not (box or images_ or vagrant_boxes or lab):
        raise InvalidInput(
            "a bundle needs something in it", hint="give --box, --image, --vagrant-box or --lab"
        )
    named = [s for s in images_ if not is_image_file(s)]
    if named and vm is None:
        raise InvalidInput(
            f"image {named[0]} is not a file, and no VM was given to save it from",
            hint="start the VM that holds it and give --vm NAME",
        )
    # Check every input before writing anything.
    box_obj = store.find(box, arch) if box else None
    sources = [images.open_archive(s) for s in images_ if is_image_file(s)]
    vboxes = [_existing(Path(os.fspath(v)).expanduser()) for v in vagrant_boxes]
    known = sum(p.stat().st_size for p in vboxes) + sum(size for _, size, _ in sources)
    if vm is not None and named:
        known += images.image_sizes(vm, named)
    if box_obj is not None:
        known += sum(int(f["size"]) for f in box_obj.manifest["files"].values())

    made_root = not root.exists()
    root.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    done = [0]

    def tick(n: int, what: str) -> None:
        done[0] += n
        progress(done[0], known, what)

    try:
        items: list[Item] = []
        if box_obj is not None:
            items.append(_add_box(root, box_obj, written, tick))
        file_sources = iter(sources)
        for spec in images_:
            if is_image_file(spec):
                items.append(_add_image_file(root, next(file_sources), compression, written, tick))
            else:
                assert vm is not None
                items.append(_add_image_from_vm(root, vm, spec, compression, written, tick))
        for path in vboxes:
            items.append(_add_vagrant_box(root, path, written, tick))
        if lab is not None:
            items.append(_add_lab(root, lab, written))
        bundle = Bundle(
            dir=root,
            format=manifest.FORMAT,
            arch=manifest.bundle_arch(items),
            created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            items=tuple(items),
        )
        readme = root / manifest.README
        written.append(readme)
        readme.write_text(student_readme(bundle, lab), encoding="utf-8")
        written.append(root / manifest.MANIFEST)
        manifest.write(bundle)
    except BaseException:
        for path in reversed(written):
            path.unlink(missing_ok=True)
        for sub in ("boxes", "images", "vagrant", "lab"):
            if (root / sub).is_dir() and not any((root / sub).iterdir()):
                (root / sub).rmdir()
        if made_root and not any(root.iterdir()):
            root.rmdir()
        raise
    return bundle


def _existing(path: Path) -> Path:
    if not path.is_file():
        raise InvalidInput(f"{path} does not exist or is not a file")
    return path


def _slot(root: Path, sub: str, stem: str, suffix: str, written: list[Path]) -> Path:
    """A new file name ``sub/STEM[-N]SUFFIX`` in the bundle, recorded as written."""
    folder = root / sub
    folder.mkdir(exist_ok=True)
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._") or "item"
    path, n = folder / f"{safe}{suffix}", 1
    while path.exists() or path in written:
        n += 1
        path = folder / f"{safe}-{n}{suffix}"
    written.append(path)
    return path


def _rel(root: Path, path: Path) -> str:
    return path.relative_to(root).as_posix()


def _add_box(
    root: Path, box: store.Box, written: list[Path], tick: Callable[[int, str], None]
) -> Item:
    out = _slot(root, "boxes", f"{box.name}-{box.arch}", ".tar", written)
    what = f"box {box.name} ({box.arch})"
    with open(out, "wb") as raw:
        sink = HashingWriter(raw, on_write=lambda n: tick(n, what))
        store.export_box(box, cast(IO[bytes], sink))
    return Item(
        kind="box",
        file=_rel(root, out),
        size=sink.count,
        sha256=sink.hexdigest(),
        name=box.name,
        arch=box.arch,
        box_files=dict(box.manifest["files"]),
    )


def _image_item(root: Path, archive: images.Archive) -> Item:
    arches = [manifest.docker_arch(a) for a in archive.info.arches]
    return Item(
        kind="image",
        file=_rel(root, archive.path),
        size=archive.size,
        sha256=archive.sha256,
        arch=arches[0] if arches else "",
        ids=tuple(archive.info.ids),
        tags=tuple(archive.info.tags),
        tar_size=archive.tar_bytes,
    )


def _add_image_file(
    root: Path,
    source: tuple[Path, int, str],
    compression: str,
    written: list[Path],
    tick: Callable[[int, str], None],
) -> Item:
    path, _size, kind = source
    stem = path.name.split(".tar")[0].split(".t")[0]
    out = _slot(root, "images", stem, COMPRESSIONS[compression], written)
    what = f"image {path.name}"
    chunks = images.read_archive(path, kind, images.TarCheck(), on_read=lambda n: tick(n, what))
    return _image_item(root, images.write_archive(chunks, out))


def _add_image_from_vm(
    root: Path,
    vm: VM,
    image: str,
    compression: str,
    written: list[Path],
    tick: Callable[[int, str], None],
) -> Item:
    out = _slot(
        root,
        "images",
        image.replace(":", "_").replace("/", "_"),
        COMPRESSIONS[compression],
        written,
    )
    what = f"image {image} from VM {vm.name}"
    last = [0]

    def saved(tar_bytes: int) -> None:
        tick(tar_bytes - last[0], what)
        last[0] = tar_bytes

    return _image_item(root, images.save_archive(vm, image, out, progress=saved))


def _add_vagrant_box(
    root: Path, path: Path, written: list[Path], tick: Callable[[int, str], None]
) -> Item:
    name = path.name.removesuffix(".box")
    out = _slot(root, "vagrant", name, ".box", written)
    what = f"Vagrant box {name}"
    with open(path, "rb") as src, open(out, "wb") as raw:
        reader = HashingReader(src, on_read=lambda n: tick(n, what))
        shutil.copyfileobj(reader, raw, CHUNK)
    return Item(
        kind="vagrant-box",
        file=_rel(root, out),
        size=reader.count,
        sha256=reader.hexdigest(),
        name=name,
    )


def _add_lab(root: Path, spec: LabSpec, written: list[Path]) -> Item:
    written.append(root.joinpath(*labfile.FILE.split("/")))
    path = labfile.write(spec, root)
    return Item(
        kind="lab",
        file=labfile.FILE,
        size=path.stat().st_size,
        sha256=sha256_file(path),
        name=spec.name,
    )


def _describe(bundle: Bundle) -> Iterator[str]:
    for item in bundle.items:
        size = (
            f"{item.size / (1 << 20):.0f} MiB"
            if item.size >= 1 << 20
            else f"{item.size / 1024:.0f} KiB"
        )
        yield f"  - {item.label}: {item.file}, {size}"


def _lab_readme(spec: LabSpec) -> str:
    machines = "\n".join(f"       {s.machine:<24} {s.name}" for s in spec.students)
    return (
        "\n"
        f"3. The course lab {spec.name}: find your machine's name here\n"
        "\n"
        f"{machines}\n"
        "\n"
        "   and make your copy of the lab (in a new folder here, named after the lab):\n"
        "\n"
        "       vmkit bundle load THIS_FOLDER --student YOUR_MACHINE\n"
        "\n"
        f"   then start it: cd {spec.name}/YOUR_MACHINE && vagrant up\n"
    )


def student_readme(bundle: Bundle, lab: LabSpec | None = None) -> str:
    """The short README.txt a student finds in the bundle folder."""
    return (
        "This folder is a vmkit bundle: everything the course needs, to set up without network.\n"
        "\n"
        "1. Check that every file arrived whole (a few minutes for a few GB):\n"
        "\n"
        "       vmkit bundle verify THIS_FOLDER\n"
        "\n"
        "2. Load it: the box into vmkit's cache, the Docker images into your VM,\n"
        "   Vagrant boxes into Vagrant. Files are checked again as they are read.\n"
        "   If it stops (Ctrl-C, the stick pulled out), run it again: what is\n"
        "   already loaded is skipped.\n"
        "\n"
        "       vmkit bundle load THIS_FOLDER --vm course\n"
        + (_lab_readme(lab) if lab is not None else "")
        + "\n"
        f"Made {bundle.created_at} for {bundle.arch or 'any'} machines; bundle.json lists\n"
        "every file with its size and sha256 (format: docs/bundles.md in vmkit).\n"
        "\n"
        "What is in it:\n" + "\n".join(_describe(bundle)) + "\n"
    )
