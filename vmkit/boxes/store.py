"""Boxes: the base images VMs boot from, built from a recipe in ``boxes/NAME/`` into the cache.

A built box is a folder ``cache_dir()/boxes/NAME/ARCH/`` holding ``vmlinuz``, ``initrd.img``,
a compressed ``disk.qcow2`` (one ext4 filesystem, no partition table, labelled by the recipe)
and ``manifest.json`` (sha256s, sizes, kernel command line, package versions, build time).
The manifest is written last and the folder appears by one ``rename``, so a crash or Ctrl-C
never leaves a half box that ``find`` accepts.

The recipe is data: ``recipe.toml`` (packages, mirrors, image size, command line, kernel
modules to keep), guest files under ``rootfs/`` and mmdebstrap hook scripts under ``hooks/``,
which are the only shell code and get nothing but the new root as ``"$1"``. This module is the
generic builder: mmdebstrap → trim kernel modules → ``mkfs.ext4 -d`` → ``qemu-img convert``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import shutil
import sys
import tarfile
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import attrs
from filelock import FileLock

from vmkit import home, resources
from vmkit.errors import (
    BoxBuildFailed,
    BoxCorrupt,
    BoxNotFound,
    CommandFailed,
    InvalidInput,
    ToolMissing,
    VmkitError,
)
from vmkit.host.arch import ARCHES, host_arch
from vmkit.host.runner import ErrorRule, run, which
from vmkit.progress import Progress, no_progress
from vmkit.streams import sha256_file

MANIFEST = "manifest.json"
KERNEL = "vmlinuz"
INITRD = "initrd.img"
DISK = "disk.qcow2"
#: Bumped when the layout of a built box changes; older boxes are reported as corrupt.
FORMAT = 1

#: The CLI shows this logger's warnings (a stale box).
log = logging.getLogger("vmkit")

_MERGED_USR_HOOKS = Path("/usr/share/mmdebstrap/hooks/merged-usr")

# Order matters: apt reports a mirror mid-sync as "Failed to fetch ... unexpected size".
_MMDEBSTRAP_RULES = [
    ErrorRule.of(
        r"^.*(File has unexpected size|Mirror sync in progress|Hash Sum mismatch).*$",
        lambda r, m: BoxBuildFailed(
            f"a Debian mirror served an index that is being updated: {m.group(0).strip()}",
            hint="wait a few minutes and run `vmkit box build` again",
        ),
    ),
    ErrorRule.of(
        r"^.*(Temporary failure resolving|Could not resolve|Failed to fetch|Unable to connect).*$",
        lambda r, m: BoxBuildFailed(
            f"mmdebstrap could not download Debian packages: {m.group(0).strip()}",
            hint="check the network connection to deb.debian.org and try again",
        ),
    ),
    ErrorRule.of(
        r"arch-test",
        lambda r, m: ToolMissing("arch-test", package="arch-test"),
    ),
]


def _is_mirror_hiccup(err: BoxBuildFailed) -> bool:
    return "being updated" in err.message


@attrs.frozen
class Recipe:
    """A box recipe read from ``boxes/NAME/recipe.toml``."""

    name: str
    dir: Path
    version: int
    description: str
    suite: str
    mirrors: tuple[str, ...]
    variant: str
    aptopts: tuple[str, ...]
    image_size_mib: int
    root_label: str
    cmdline: str
    packages: tuple[str, ...]
    path_exclude: tuple[str, ...]
    path_include: tuple[str, ...]
    keep_modules: tuple[str, ...]
    kernel_packages: Mapping[str, str]
    arch_mirrors: Mapping[str, tuple[str, ...]]
    arch_consoles: Mapping[str, str]
    disk_compression: str
    sha256: str

    @property
    def hooks_dir(self) -> Path:
        return self.dir / "hooks"

    def packages_for(self, arch: str) -> list[str]:
        """All packages to install for ``arch``: the common list plus its kernel."""
        if arch not in self.kernel_packages:
            known = ", ".join(sorted(self.kernel_packages))
            raise InvalidInput(
                f"box {self.name} has no recipe for architecture {arch!r}",
                hint=f"use one of: {known}",
            )
        return [*self.packages, self.kernel_packages[arch]]

    def mirrors_for(self, arch: str) -> tuple[str, ...]:
        """The apt sources for ``arch``: its own ``mirrors`` if the recipe sets them."""
        return self.arch_mirrors.get(arch, self.mirrors)

    def cmdline_for(self, arch: str) -> str:
        """The kernel command line for ``arch``: its own ``console`` replaces the recipe's."""
        console = self.arch_consoles.get(arch)
        if console is None:
            return self.cmdline
        words = [w for w in self.cmdline.split() if not w.startswith("console=")]
        return " ".join([*words, f"console={console}"])


@attrs.frozen
class Box:
    """A built box in the cache."""

    name: str
    arch: str
    dir: Path
    kernel: Path
    initrd: Path
    disk: Path
    manifest: dict[str, Any] = attrs.field(eq=False, hash=False)

    @property
    def cmdline(self) -> str:
        """The kernel command line the box boots with (direct kernel boot)."""
        return str(self.manifest["cmdline"])

    @property
    def root_label(self) -> str:
        return str(self.manifest["root_label"])


def recipes_dir() -> Path:
    """The shipped ``boxes/`` folder, where recipes live."""
    try:
        return resources.data_dir(resources.BOXES)
    except VmkitError as e:
        raise BoxNotFound(f"the box recipes folder is missing: {e.message}", hint=e.hint) from e


def box_dir(name: str, arch: str) -> Path:
    """Where the box ``name`` for ``arch`` lives once built."""
    return home.cache_dir() / "boxes" / home.check_name(name, "box name") / _check_arch(arch)


def _check_arch(arch: str) -> str:
    if arch not in ARCHES:
        raise InvalidInput(
            f"unknown architecture {arch!r}", hint=f"use one of: {', '.join(ARCHES)}"
        )
    return arch


# --- recipes ---------------------------------------------------------------------------------


def load_recipe(name: str) -> Recipe:
    """Read and check ``boxes/NAME/recipe.toml``."""
    home.check_name(name, "box name")
    base = recipes_dir()
    folder = base / name
    path = folder / "recipe.toml"
    if not path.is_file():
        known = sorted(p.name for p in base.iterdir() if (p / "recipe.toml").is_file())
        raise BoxNotFound(
            f"there is no box recipe named {name!r}",
            hint=f"known recipes: {', '.join(known) or 'none'}",
        )
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise InvalidInput(f"{path} is not valid TOML: {e}", hint="fix the recipe file") from e
    return parse_recipe(data, folder)


def parse_recipe(data: Mapping[str, Any], folder: Path) -> Recipe:
    """Check the fields of a parsed recipe and build a ``Recipe``; ``folder`` holds its files."""
    where = folder / "recipe.toml"

    def bad(key: str, what: str) -> InvalidInput:
        return InvalidInput(f"{where}: {key!r} {what}", hint="fix the recipe file")

    def get_str(key: str, default: str | None = None) -> str:
        value = data.get(key, default)
        if not isinstance(value, str) or not value:
            raise bad(key, "must be a non-empty string")
        return value

    def get_int(key: str) -> int:
        value = data.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise bad(key, "must be a positive integer")
        return value

    def get_list(key: str, *, required: bool = True) -> tuple[str, ...]:
        value = data.get(key, None if required else [])
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise bad(key, "must be a list of non-empty strings")
        if required and not value:
            raise bad(key, "must not be empty")
        return tuple(value)

    arches = data.get("arch")
    if not isinstance(arches, dict) or not arches:
        raise bad("arch", "must have at least one [arch.NAME] table")
    kernels: dict[str, str] = {}
    arch_mirrors: dict[str, tuple[str, ...]] = {}
    arch_consoles: dict[str, str] = {}
    for arch, table in arches.items():
        if arch not in ARCHES:
            raise bad(f"arch.{arch}", f"is not a known architecture ({', '.join(ARCHES)})")
        kernel = table.get("kernel_package") if isinstance(table, dict) else None
        if not isinstance(kernel, str) or not kernel:
            raise bad(f"arch.{arch}.kernel_package", "must be a non-empty string")
        kernels[arch] = kernel
        if "mirrors" in table:
            mirrors = table["mirrors"]
            if (
                not isinstance(mirrors, list)
                or not mirrors
                or not all(isinstance(m, str) and m for m in mirrors)
            ):
                raise bad(f"arch.{arch}.mirrors", "must be a list of non-empty strings")
            arch_mirrors[arch] = tuple(mirrors)
        if "console" in table:
            console = table["console"]
            if not isinstance(console, str) or not console or " " in console:
                raise bad(f"arch.{arch}.console", "must be a device name such as ttyAMA0")
            arch_consoles[arch] = console

    name = get_str("name")
    if name != folder.name:
        raise bad("name", f"is {name!r} but the folder is {folder.name!r}")
    label = get_str("root_label")
    if len(label) > 16:
        raise bad("root_label", "must be at most 16 characters (an ext4 label)")
    cmdline = get_str("cmdline")
    if f"root=LABEL={label}" not in cmdline.split():
        raise bad("cmdline", f"must contain root=LABEL={label}")
    compression = get_str("disk_compression", "zstd")
    if compression not in ("zstd", "zlib"):
        raise bad("disk_compression", "must be 'zstd' or 'zlib'")
    packages = get_list("packages")
    for pkg in (*packages, *kernels.values()):
        # Package names go into one comma-separated mmdebstrap argument.
        if "," in pkg or " " in pkg:
            raise bad("packages", f"has an invalid package name {pkg!r}")

    return Recipe(
        name=name,
        dir=folder,
        version=get_int("version"),
        description=get_str("description"),
        suite=get_str("suite"),
        mirrors=get_list("mirrors"),
        variant=get_str("variant"),
        aptopts=get_list("aptopts", required=False),
        image_size_mib=get_int("image_size_mib"),
        root_label=label,
        cmdline=cmdline,
        packages=packages,
        path_exclude=get_list("path_exclude", required=False),
        path_include=get_list("path_include", required=False),
        keep_modules=get_list("keep_modules"),
        kernel_packages=kernels,
        arch_mirrors=arch_mirrors,
        arch_consoles=arch_consoles,
        disk_compression=compression,
        sha256=recipe_digest(folder),
    )


def recipe_digest(folder: Path) -> str:
    """A sha256 over every file of a recipe folder (path, executable bit, content)."""
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        h.update(rel.encode() + b"\0" + (b"x" if os.access(path, os.X_OK) else b"-") + b"\0")
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


# --- finding, listing, removing, verifying -------------------------------------------------


def find(name: str = "vmkit-mini", arch: str = "amd64") -> Box:
    """The built box ``name`` for ``arch``, or ``BoxNotFound`` saying how to build it."""
    folder = box_dir(name, arch)
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise BoxNotFound(
            f"box {name} ({arch}) is not built",
            hint=f"build it with `vmkit box build {name} --arch {arch}` (as root)",
        )
    return _load(folder, name, arch)


def _load(folder: Path, name: str, arch: str) -> Box:
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise BoxCorrupt(f"the manifest of box {name} ({arch}) in {folder} is unreadable") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BoxCorrupt(f"box {name} ({arch}) in {folder} was built by another vmkit version")
    files = manifest.get("files")
    if not isinstance(files, dict) or not all(k in files for k in (KERNEL, INITRD, DISK)):
        raise BoxCorrupt(f"the manifest of box {name} ({arch}) in {folder} lists no files")
    for key in (KERNEL, INITRD, DISK):
        if not (folder / key).is_file():
            raise BoxCorrupt(f"box {name} ({arch}) in {folder} has no {key}")
    return Box(
        name=name,
        arch=arch,
        dir=folder,
        kernel=folder / KERNEL,
        initrd=folder / INITRD,
        disk=folder / DISK,
        manifest=manifest,
    )


def list_boxes() -> list[Box]:
    """Every built box in the cache (folders without a valid manifest are skipped)."""
    root = home.cache_dir() / "boxes"
    boxes: list[Box] = []
    if not root.is_dir():
        return boxes
    for name_dir in sorted(root.iterdir()):
        if name_dir.name.startswith(".") or not name_dir.is_dir():
            continue
        for arch_dir in sorted(name_dir.iterdir()):
            if arch_dir.name not in ARCHES or not (arch_dir / MANIFEST).is_file():
                continue
            try:
                boxes.append(_load(arch_dir, name_dir.name, arch_dir.name))
            except BoxCorrupt:
                continue
    return boxes


def require_unused(name: str, arch: str, action: str) -> None:
    """Refuse to ``action`` a box that QEMU VMs use: their disks are overlays on its disk."""
    from vmkit import state

    users = []
    for vm in state.names():
        with contextlib.suppress(VmkitError):
            r = state.load(vm)
            if r.provider == "qemu" and (r.box, r.arch) == (name, arch):
                users.append(vm)
    if users:
        raise InvalidInput(
            f"cannot {action} box {name} ({arch}): VM {', '.join(users)} use it as the base of "
            "their disks",
            hint="destroy those VMs first",
        )


def remove(name: str, arch: str) -> None:
    """Delete a built box from the cache; refused while QEMU VMs are made from it."""
    require_unused(name, arch, "remove")
    folder = box_dir(name, arch)
    with _lock(folder):
        if not folder.exists():
            raise BoxNotFound(f"box {name} ({arch}) is not built", hint="see `vmkit box list`")
        trash = folder.with_name(f".{arch}.old-{os.getpid()}")
        os.rename(folder, trash)
        shutil.rmtree(trash)


def verify(box: Box) -> None:
    """Check every file of ``box`` against the sha256 and size in its manifest."""
    for key, path in ((KERNEL, box.kernel), (INITRD, box.initrd), (DISK, box.disk)):
        expected = box.manifest["files"][key]
        if not path.is_file():
            raise BoxCorrupt(f"box {box.name} ({box.arch}) has no {key} in {box.dir}")
        if path.stat().st_size != expected["size"] or sha256_file(path) != expected["sha256"]:
            raise BoxCorrupt(f"{path} of box {box.name} ({box.arch}) does not match its manifest")


# --- moving a built box between machines -----------------------------------------------------

#: The files of a box, in the order they go into an export (the manifest first).
BOX_FILES = (MANIFEST, KERNEL, INITRD, DISK)


def export_box(box: Box, out: IO[bytes]) -> None:
    """Write ``box`` as an uncompressed tar of its four files to ``out`` (the disk is compressed)."""
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for key in BOX_FILES:
            info = tar.gettarinfo(str(box.dir / key), arcname=key)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            with open(box.dir / key, "rb") as f:
                tar.addfile(info, f)


def same_build(box: Box, files: Mapping[str, Any]) -> bool:
    """Whether ``box`` has exactly the files (sha256 and size) a manifest's ``files`` lists."""
    mine = box.manifest.get("files", {})
    return all(
        isinstance(files.get(k), dict)
        and mine.get(k, {}).get("sha256") == files[k].get("sha256")
        and mine.get(k, {}).get("size") == files[k].get("size")
        for k in (KERNEL, INITRD, DISK)
    )


def import_box(
    name: str,
    arch: str,
    src: IO[bytes],
    *,
    before_publish: Callable[[], None] | None = None,
) -> Box:
    """Install box ``name``/``arch`` into the cache from an ``export_box`` tar read from ``src``.

    Read once as a stream; each file is hashed as it is written and checked against the
    manifest in the tar, and the box appears by one rename only when all match (an
    interruption leaves nothing ``find`` accepts). ``before_publish`` runs last, when every
    file is checked (e.g. to check the whole archive's digest); raising there keeps the box
    out. Replacing another build of the box is refused while QEMU VMs use it.
    """
    folder = box_dir(name, arch)
    if folder.exists():
        require_unused(name, arch, "replace")
    with _lock(folder):
        _remove_leftovers(folder)
        work = Path(tempfile.mkdtemp(prefix=f".{arch}.build-", dir=folder.parent))
        try:
            digests = _extract_box(src, work)
            _check_import(work, digests, name, arch)
            if before_publish is not None:
                before_publish()
            _publish(work, folder)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
    return find(name, arch)


def _extract_box(src: IO[bytes], work: Path) -> dict[str, tuple[int, str]]:
    digests: dict[str, tuple[int, str]] = {}
    try:
        with tarfile.open(fileobj=src, mode="r|") as tar:
            for member in tar:
                if member.name not in BOX_FILES or not member.isfile():
                    raise BoxCorrupt(f"the box archive holds an unexpected member {member.name!r}")
                data = tar.extractfile(member)
                assert data is not None
                h = hashlib.sha256()
                with open(work / member.name, "wb") as out:
                    while chunk := data.read(1 << 20):
                        h.update(chunk)
                        out.write(chunk)
                os.chmod(work / member.name, 0o644)
                digests[member.name] = (member.size, h.hexdigest())
    except tarfile.TarError as e:
        raise BoxCorrupt(f"the box archive is damaged or cut short ({e})") from e
    return digests


def _check_import(work: Path, digests: Mapping[str, tuple[int, str]], name: str, arch: str) -> None:
    if MANIFEST not in digests:
        raise BoxCorrupt("the box archive has no manifest.json")
    manifest = json.loads((work / MANIFEST).read_text(encoding="utf-8"))
    files = manifest.get("files", {}) if isinstance(manifest, dict) else {}
    if manifest.get("format") != FORMAT:
        raise BoxCorrupt(f"the box archive of {name} ({arch}) was made by another vmkit version")
    for key in (KERNEL, INITRD, DISK):
        want = files.get(key, {})
        if key not in digests:
            raise BoxCorrupt(f"the box archive of {name} ({arch}) has no {key}")
        if digests[key] != (want.get("size"), want.get("sha256")):
            raise BoxCorrupt(
                f"{key} in the box archive of {name} ({arch}) does not match its manifest"
            )


# --- building --------------------------------------------------------------------------------


def ensure(
    name: str = "vmkit-mini", arch: str = "amd64", *, progress: Progress = no_progress
) -> Box:
    """The built box, building it first if the cache has none (a stale build is logged)."""
    try:
        box = find(name, arch)
    except BoxNotFound:
        return build(name, arch, progress=progress)
    notice = stale_notice(box)
    if notice:
        _warn_once(notice)
    return box


@functools.cache
def _warn_once(notice: str) -> None:
    """One warning per process: `up` looks the box up more than once."""
    log.warning(notice)


def stale_notice(box: Box) -> str | None:
    """What to tell a user whose box was built by an older version of its recipe (else None).

    Such a box still boots; a newer recipe changes how fast or what it offers.
    """
    try:
        current = load_recipe(box.name).version
    except VmkitError:  # a box without a recipe here (imported from elsewhere)
        return None
    built = int(box.manifest.get("recipe_version", 0))
    if built >= current:
        return None
    return (
        f"box {box.name} ({box.arch}) was built by recipe version {built}, the recipe is now "
        f"version {current} (a faster boot); rebuild it with "
        f"`vmkit box build {box.name} --arch {box.arch} --force` (destroy its VMs first)"
    )


def build(
    name: str = "vmkit-mini",
    arch: str = "amd64",
    *,
    progress: Progress = no_progress,
    force: bool = False,
) -> Box:
    """Build box ``name`` for ``arch`` from its recipe into the cache (kept if built, unless force).

    Needs root (mmdebstrap --mode=root) and mmdebstrap, e2fsprogs and qemu-utils; a foreign
    architecture also needs arch-test. Takes one to three minutes and ~1.5 GB of scratch space.
    """
    _check_arch(arch)
    recipe = load_recipe(name)
    recipe.packages_for(arch)
    folder = box_dir(name, arch)
    if not force:
        try:
            return find(name, arch)
        except BoxNotFound:
            pass
    else:
        require_unused(name, arch, "rebuild")
    tools = _preflight(arch)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with _lock(folder):
        if not force and (folder / MANIFEST).is_file():
            return find(name, arch)
        _remove_leftovers(folder)
        work = Path(tempfile.mkdtemp(prefix=f".{arch}.build-", dir=folder.parent))
        try:
            _build_into(work, recipe, arch, tools, progress)
            _publish(work, folder)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
    return find(name, arch)


@attrs.frozen
class _Tools:
    mmdebstrap: str
    mkfs: str
    qemu_img: str
    chroot: str


def _preflight(arch: str) -> _Tools:
    if sys.platform != "linux":
        raise BoxBuildFailed(
            "boxes can only be built on Linux",
            hint="build the box on a Debian/Ubuntu machine and copy the cache folder",
        )
    tools = _Tools(
        mmdebstrap=which("mmdebstrap"),
        mkfs=which("mkfs.ext4"),
        qemu_img=which("qemu-img"),
        chroot=which("chroot", package="coreutils"),
    )
    if arch != host_arch():
        _check_foreign(arch)
    if os.geteuid() != 0:
        raise BoxBuildFailed(
            "building a box needs root (mmdebstrap --mode=root installs packages as root)",
            hint="run `sudo vmkit box build` and point VMKIT_CACHE at a folder you can read",
        )
    return tools


def _check_foreign(arch: str) -> None:
    """Refuse early when the host cannot run ``arch``'s programs (package scripts need it)."""
    result = run([which("arch-test"), arch], timeout=60, check=False)
    if result.exit_code != 0:
        raise BoxBuildFailed(
            f"this host cannot run {arch} programs, which the package scripts of the {arch} box "
            f"are ({result.stdout.strip() or result.stderr.strip()})",
            hint="install qemu-user-static and binfmt-support (bin/install-deps does); where "
            "binfmt_misc is not mounted: `mount -t binfmt_misc binfmt_misc "
            "/proc/sys/fs/binfmt_misc && update-binfmts --enable`",
        )


def _lock(folder: Path) -> FileLock:
    folder.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(folder.with_name(f".{folder.name}.lock")))


def _remove_leftovers(folder: Path) -> None:
    """Delete build and trash folders a crashed build left beside ``folder`` (lock held)."""
    for pattern in (f".{folder.name}.build-*", f".{folder.name}.old-*"):
        for leftover in folder.parent.glob(pattern):
            shutil.rmtree(leftover, ignore_errors=True)


def _publish(work: Path, folder: Path) -> None:
    """Put the finished box in place with renames, replacing an older build of it."""
    old: Path | None = None
    if folder.exists():
        old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
        os.rename(folder, old)
    os.rename(work, folder)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _build_into(work: Path, recipe: Recipe, arch: str, tools: _Tools, progress: Progress) -> None:
    started = time.monotonic()
    rootfs = work / "rootfs"
    raw = work / "disk.raw"

    progress(f"installing Debian {recipe.suite} packages with mmdebstrap (1-3 min)")
    t0 = time.monotonic()
    _mmdebstrap(recipe, arch, rootfs, tools)
    t_debootstrap = time.monotonic() - t0

    version = _kernel_version(rootfs)
    progress(f"keeping the kernel modules the box needs ({version}, a few seconds)")
    kept, dropped = trim_modules(rootfs / "lib" / "modules" / version, recipe.keep_modules)
    run([tools.chroot, str(rootfs), "depmod", "-a", version], timeout=300)

    boot = rootfs / "boot"
    shutil.copyfile(boot / f"vmlinuz-{version}", work / KERNEL)
    shutil.copyfile(boot / f"initrd.img-{version}", work / INITRD)
    packages = installed_packages(rootfs / "var" / "lib" / "dpkg" / "status")
    content_bytes = _tree_size(rootfs)

    progress(f"making the {recipe.image_size_mib} MiB ext4 root filesystem (10-30 s)")
    t0 = time.monotonic()
    run(
        [
            tools.mkfs,
            "-q",
            "-F",
            "-t",
            "ext4",
            "-L",
            recipe.root_label,
            "-m",
            "1",
            # Zeroed inode tables now (sparse, free in the qcow2) rather than lazily by every
            # VM's kernel, which would write them into each overlay.
            "-E",
            "lazy_itable_init=0,lazy_journal_init=0,root_owner=0:0",
            "-d",
            str(rootfs),
            str(raw),
            f"{recipe.image_size_mib}M",
        ],
        timeout=900,
    )
    t_mkfs = time.monotonic() - t0
    shutil.rmtree(rootfs)

    progress(f"compressing the disk image to qcow2 with {recipe.disk_compression} (20-60 s)")
    t0 = time.monotonic()
    run(
        [
            tools.qemu_img,
            "convert",
            "-c",
            "-f",
            "raw",
            "-O",
            "qcow2",
            "-o",
            f"compression_type={recipe.disk_compression}",
            str(raw),
            str(work / DISK),
        ],
        timeout=1800,
    )
    t_convert = time.monotonic() - t0
    raw.unlink()

    progress("writing the manifest")
    files = {
        key: {"sha256": sha256_file(work / key), "size": (work / key).stat().st_size}
        for key in (KERNEL, INITRD, DISK)
    }
    files[DISK]["virtual_size"] = recipe.image_size_mib * 1024 * 1024
    manifest = {
        "format": FORMAT,
        "name": recipe.name,
        "arch": arch,
        "recipe_version": recipe.version,
        "recipe_sha256": recipe.sha256,
        "description": recipe.description,
        "suite": recipe.suite,
        "kernel_version": version,
        "cmdline": recipe.cmdline_for(arch),
        "root_label": recipe.root_label,
        "disk_compression": recipe.disk_compression,
        "files": files,
        "content_bytes": content_bytes,
        "modules": {"kept": kept, "dropped": dropped},
        "packages": packages,
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "build_seconds": {
            "total": round(time.monotonic() - started, 1),
            "mmdebstrap": round(t_debootstrap, 1),
            "mkfs": round(t_mkfs, 1),
            "convert": round(t_convert, 1),
        },
    }
    (work / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    # Built as root, used by whoever VMKIT_CACHE is shared with: readable, not writable.
    for path in work.iterdir():
        path.chmod(0o644)
    work.chmod(0o755)


def _mmdebstrap(recipe: Recipe, arch: str, rootfs: Path, tools: _Tools) -> None:
    argv = [
        tools.mmdebstrap,
        "--mode=root",
        f"--variant={recipe.variant}",
        f"--arch={arch}",
        "--include=" + ",".join(recipe.packages_for(arch)),
        *(f"--aptopt={o}" for o in recipe.aptopts),
        *(f"--dpkgopt=path-exclude={p}" for p in recipe.path_exclude),
        *(f"--dpkgopt=path-include={p}" for p in recipe.path_include),
    ]
    if _MERGED_USR_HOOKS.is_dir():
        # Sets up merged /usr itself, so the usrmerge package (and perl with it) stays out.
        argv.append(f"--hook-dir={_MERGED_USR_HOOKS}")
    if recipe.hooks_dir.is_dir():
        argv.append(f"--hook-dir={recipe.hooks_dir}")
    argv += [recipe.suite, str(rootfs), *recipe.mirrors_for(arch)]
    for attempt in (1, 2):
        try:
            run(argv, timeout=1800, rules=_MMDEBSTRAP_RULES)
            return
        except BoxBuildFailed as e:
            if attempt == 2 or not _is_mirror_hiccup(e):
                raise
            shutil.rmtree(rootfs, ignore_errors=True)
            time.sleep(20)
        except CommandFailed as e:
            raise BoxBuildFailed(
                f"mmdebstrap failed (exit {e.result.exit_code}): {e.message}",
                hint="run `vmkit --debug box build` to see its output",
            ) from e


def _kernel_version(rootfs: Path) -> str:
    kernels = sorted((rootfs / "boot").glob("vmlinuz-*"))
    if len(kernels) != 1:
        raise BoxBuildFailed(
            f"expected one kernel in the new tree's /boot, found {len(kernels)}",
            hint="check the recipe's kernel_package",
        )
    version = kernels[0].name[len("vmlinuz-") :]
    if not (rootfs / "boot" / f"initrd.img-{version}").is_file():
        raise BoxBuildFailed(
            f"the kernel {version} has no initramfs",
            hint="the recipe must install initramfs-tools",
        )
    return version


def trim_modules(moddir: Path, keep: tuple[str, ...] | list[str]) -> tuple[int, int]:
    """Delete the modules under ``moddir/kernel`` not matched by a ``keep`` prefix or needed
    by a kept one (per ``modules.dep``); return (kept, dropped) counts. Run depmod after."""
    dep_file = moddir / "modules.dep"
    deps: dict[str, list[str]] = {}
    if dep_file.is_file():
        for line in dep_file.read_text().splitlines():
            mod, _, rest = line.partition(":")
            deps[mod.strip()] = rest.split()
    prefixes = tuple(("kernel/" + p.strip("/")) for p in keep)
    all_mods = [p.relative_to(moddir).as_posix() for p in _module_files(moddir / "kernel")]

    def wanted(rel: str) -> bool:
        return any(rel == p or rel.startswith(p + "/") or _stem(rel) == p for p in prefixes)

    keep_set = {m for m in all_mods if wanted(m)}
    todo = list(keep_set)
    while todo:
        for dep in deps.get(todo.pop(), []):
            if dep not in keep_set:
                keep_set.add(dep)
                todo.append(dep)
    dropped = 0
    for rel in all_mods:
        if rel not in keep_set:
            (moddir / rel).unlink()
            dropped += 1
    for folder in sorted((p for p in (moddir / "kernel").rglob("*") if p.is_dir()), reverse=True):
        if not any(folder.iterdir()):
            folder.rmdir()
    return len(all_mods) - dropped, dropped


def _module_files(root: Path) -> Iterator[Path]:
    return (p for p in root.rglob("*") if p.is_file() and ".ko" in p.name)


def _stem(rel: str) -> str:
    # "kernel/fs/fuse/fuse.ko.xz" matches a keep entry "kernel/fs/fuse/fuse.ko".
    return rel[: rel.index(".ko") + 3] if ".ko" in rel else rel


def installed_packages(status: Path) -> dict[str, str]:
    """``{package: version}`` of what dpkg's status file says is installed."""
    out: dict[str, str] = {}
    for stanza in status.read_text(encoding="utf-8", errors="replace").split("\n\n"):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line and not line[0].isspace() and ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        if fields.get("Status", "").endswith(" installed") and "Package" in fields:
            arch = fields.get("Architecture", "")
            name = fields["Package"]
            if arch not in ("", "all") and name in out:
                name = f"{name}:{arch}"
            out[name] = fields.get("Version", "")
    return dict(sorted(out.items()))


def _tree_size(root: Path) -> int:
    total = 0
    for dirpath, _dirs, names in os.walk(root):
        for n in names:
            st = os.lstat(os.path.join(dirpath, n))
            total += st.st_size
    return total
