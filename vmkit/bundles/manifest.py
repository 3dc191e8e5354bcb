"""``bundle.json``: what a bundle holds, each file with its kind, size and sha256 (docs/bundles.md).

Pure: reading, writing and checking the manifest, no I/O beyond the one file. A manifest of a
newer ``format`` than this vmkit reads is refused with ``FormatTooNew``; fields this version
does not know are ignored, so adding one does not need a new format.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from vmkit.errors import ArchMismatch, FileDamaged, FormatTooNew, InvalidInput
from vmkit.host import arch as arch_mod

#: The manifest's file name in the bundle folder.
MANIFEST = "bundle.json"
README = "README.txt"
#: Bumped only when an older vmkit would misread a bundle.
FORMAT = 1
KINDS = ("box", "image", "vagrant-box", "lab")

#: Which VM architectures a host runs natively: an amd64 host runs i386 VMs too, not the
#: reverse (other ones only emulated, which a workshop bundle does not count on).
_RUNS = {"amd64": ("amd64", "i386"), "i386": ("i386",), "arm64": ("arm64",)}


@attrs.frozen
class Item:
    """One file of a bundle. ``file`` is relative to the bundle folder, with ``/``.

    box: ``name``, ``arch`` and ``box_files`` (the box manifest's files: sha256 and size).
    image: ``ids`` (``sha256:...``), ``tags``, ``arch``, ``tar_size`` (uncompressed).
    vagrant-box: ``name``. lab: ``name`` (the lab's; the file is ``vmkit.bundles.lab.LabSpec``).
    """

    kind: str
    file: str
    size: int
    sha256: str
    name: str = ""
    arch: str = ""
    ids: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    tar_size: int = 0
    box_files: Mapping[str, Any] = attrs.field(factory=dict, eq=False)

    @property
    def label(self) -> str:
        """How the item is called in progress lines and errors."""
        if self.kind == "image":
            return f"image {', '.join(self.tags) or (self.ids[0][7:19] if self.ids else self.file)}"
        if self.kind == "box":
            return f"box {self.name} ({self.arch})"
        if self.kind == "lab":
            return f"lab {self.name}"
        return f"Vagrant box {self.name}"

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "kind": self.kind,
            "file": self.file,
            "size": self.size,
            "sha256": self.sha256,
        }
        if self.kind in ("box", "vagrant-box", "lab"):
            data["name"] = self.name
        if self.kind in ("box", "image"):
            data["arch"] = self.arch
        if self.kind == "box":
            data["box_files"] = dict(self.box_files)
        if self.kind == "image":
            data |= {"ids": list(self.ids), "tags": list(self.tags), "tar_size": self.tar_size}
        return data


@attrs.frozen
class Bundle:
    """A bundle folder and its manifest."""

    dir: Path
    format: int
    arch: str
    created_at: str
    items: tuple[Item, ...]

    def path(self, item: Item) -> Path:
        return self.dir.joinpath(*item.file.split("/"))

    @property
    def size(self) -> int:
        return sum(i.size for i in self.items)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "arch": self.arch,
            "created_at": self.created_at,
            "items": [i.to_json() for i in self.items],
        }


def write(bundle: Bundle) -> Path:
    """Write ``bundle.json`` (beside it first, then renamed: a half manifest never exists)."""
    path = bundle.dir / MANIFEST
    with tempfile.NamedTemporaryFile(
        "w", dir=bundle.dir, prefix=f".{MANIFEST}.", suffix=".part", delete=False, encoding="utf-8"
    ) as tmp:
        tmp.write(json.dumps(bundle.to_json(), indent=2) + "\n")
    # NamedTemporaryFile makes it 0600; a manifest is for everyone who may read the bundle.
    os.chmod(tmp.name, 0o644)
    os.replace(tmp.name, path)
    return path


def read(folder: str | os.PathLike[str]) -> Bundle:
    """Read and check the manifest of the bundle in ``folder``."""
    root = Path(os.fspath(folder)).expanduser()
    path = root / MANIFEST
    if not root.is_dir():
        raise InvalidInput(f"{root} is not a folder", hint="give the bundle's folder")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidInput(
            f"{root} has no {MANIFEST}: it is not a vmkit bundle",
            hint="give the folder `vmkit bundle create` made",
        ) from None
    except (OSError, ValueError) as e:
        raise FileDamaged(f"{path} is unreadable ({e})") from e
    return parse(data, root)


def parse(data: Any, root: Path) -> Bundle:
    """A ``Bundle`` from the parsed JSON of its manifest; ``root`` is its folder."""
    where = root / MANIFEST
    if not isinstance(data, dict):
        raise FileDamaged(f"{where} is not a bundle manifest")
    fmt = data.get("format")
    if not isinstance(fmt, int) or isinstance(fmt, bool):
        raise FileDamaged(f"{where} has no format number")
    if fmt > FORMAT:
        raise FormatTooNew(
            f"{where} is bundle format {fmt}; this vmkit reads formats up to {FORMAT}"
        )
    raw_items = data.get("items")
    if not isinstance(raw_items, list):
        raise FileDamaged(f"{where} lists no items")
    items = tuple(_item(entry, where) for entry in raw_items)
    return Bundle(
        dir=root,
        format=fmt,
        arch=str(data.get("arch", "")),
        created_at=str(data.get("created_at", "")),
        items=items,
    )


def _item(entry: Any, where: Path) -> Item:
    def bad(what: str) -> FileDamaged:
        return FileDamaged(f"{where}: an item {what}")

    if not isinstance(entry, dict):
        raise bad("is not an object")
    kind = entry.get("kind")
    if kind not in KINDS:
        raise FormatTooNew(
            f"{where} has an item of kind {kind!r}; this vmkit knows {', '.join(KINDS)}"
        )
    file = entry.get("file")
    if not isinstance(file, str) or not file or file.startswith("/") or ".." in file.split("/"):
        raise bad(f"has a bad file name {file!r}")
    size, sha = entry.get("size"), entry.get("sha256")
    if not isinstance(size, int) or size < 0 or not isinstance(sha, str) or len(sha) != 64:
        raise bad(f"({file}) has no valid size and sha256")
    return Item(
        kind=kind,
        file=file,
        size=size,
        sha256=sha,
        name=str(entry.get("name", "")),
        arch=str(entry.get("arch", "")),
        ids=tuple(str(i) for i in entry.get("ids", [])),
        tags=tuple(str(t) for t in entry.get("tags", [])),
        tar_size=int(entry.get("tar_size", 0)),
        box_files=dict(entry.get("box_files", {})),
    )


def host_arch(machine: str | None = None) -> str:
    """The host's architecture in Debian's words (``amd64``, ``i386``, ``arm64``), from
    ``platform.machine()``."""
    return arch_mod.host_arch(machine)


def require_runnable(arch: str, where: str, *, runs_on: str | None = None) -> None:
    """``ArchMismatch`` unless a host (or VM) of architecture ``runs_on`` runs ``arch``."""
    if not arch:
        return
    on = runs_on or host_arch()
    if arch not in _RUNS.get(on, (on,)):
        raise ArchMismatch(
            f"{where} is for {arch} and this {'host' if runs_on is None else 'VM'} is {on}, "
            f"which runs only {' and '.join(_RUNS.get(on, (on,)))}",
            hint=f"make the bundle for {on} (`vmkit bundle create ... --arch {on}`)",
        )


def bundle_arch(items: Sequence[Item]) -> str:
    """The architecture a bundle needs: amd64 if any item is amd64, else its items' (or ``""``)."""
    arches = sorted({i.arch for i in items if i.arch})
    if "amd64" in arches:
        return "amd64"
    return arches[0] if arches else ""


def docker_arch(goarch: str) -> str:
    """An image config's architecture (Go's words: ``amd64``, ``386``) in Debian's."""
    return {"386": "i386"}.get(goarch, goarch)
