"""What may be shared, and where: the checks a share passes before anything changes.

A share is a hole between the VM and the user's account, and a mount is a hole in the guest's
own system: mounted over ``/etc`` or ``/usr`` a host folder makes the VM stop answering. These
pure functions decide; ``VM.share`` gathers the facts (the resolved host folder, the guest's
resolved target and home) and calls them, so the CLI stays thin.
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path

import attrs

from vmkit.errors import InvalidInput, NotSupported

#: Guest folders a share may never be mounted on (nor on anything below ``/proc``, ``/sys``,
#: ``/dev``): the system, the kernel's views, docker's data. ``--force`` allows them, except ``/``.
SYSTEM_PATHS = (
    "/etc",
    "/usr",
    "/bin",
    "/sbin",
    "/boot",
    "/dev",
    "/proc",
    "/sys",
    "/run",
    "/var/lib/docker",
)
#: Below these nothing is ever a plain folder: mounting there breaks the kernel's views.
_SYSTEM_TREES = ("/dev", "/proc", "/sys")

#: Which mechanisms enforce ``--readonly`` on the host (docs/security.md says how).
ENFORCES_READONLY = {"virtiofs": True, "sshfs": True, "vboxsf": True}


#: What a mechanism cannot guarantee on the host (docs/security.md); `vmkit shares` says it.
CAVEATS = {
    "vboxsf": "VirtualBox's host service, not vmkit, decides whether a guest can set a "
    "setuid/setgid bit in the folder",
}


@attrs.frozen
class HostSource:
    """The host folder to share, resolved, and what the user should be told about it."""

    path: Path
    notes: tuple[str, ...] = ()


def host_source(path: str | os.PathLike[str], *, force: bool) -> HostSource:
    """Resolve and check the host folder ``path``: it exists, is a folder the user can read,
    is not ``/`` or the home folder (unless ``force``). A symlink is resolved and said so."""
    given = Path(os.fspath(path)).expanduser()
    try:
        resolved = given.resolve(strict=True)
    except (FileNotFoundError, RuntimeError):
        raise InvalidInput(
            f"{given} does not exist", hint="give an existing folder to share"
        ) from None
    except PermissionError:
        raise InvalidInput(
            f"{given} cannot be reached: permission denied",
            hint="share a folder your user can read",
        ) from None
    if not resolved.is_dir():
        raise InvalidInput(f"{resolved} is not a folder", hint="share the folder that contains it")
    if not os.access(resolved, os.R_OK | os.X_OK):
        raise InvalidInput(
            f"you cannot read {resolved}", hint="share a folder your user can read and list"
        )
    if not force and (resolved == Path(resolved.anchor) or resolved == Path.home().resolve()):
        raise InvalidInput(
            f"sharing {resolved} would expose everything in it to the VM",
            hint="share a subfolder, or pass --force",
        )
    notes: tuple[str, ...] = ()
    if given.is_symlink() or Path(os.path.abspath(given)) != resolved:
        notes = (f"{given} is a symlink: sharing the folder it points to, {resolved}",)
    return HostSource(resolved, notes)


def check_target(target: str, *, resolved: str | None, home: str | None, force: bool) -> None:
    """Refuse a guest mount point that is a system path or the login user's home itself.

    ``target`` is the normalized guest path; ``resolved`` is what it resolves to in the guest
    (symlinks and ``..`` followed, e.g. by ``realpath -m``), when the guest could be asked.
    ``force`` allows everything but ``/``.
    """
    for path in dict.fromkeys(p for p in (target, resolved) if p):
        clean = posixpath.normpath(path)
        if clean.startswith("//"):
            clean = "/" + clean.lstrip("/")
        via = "" if path == target else f" (it resolves to {clean} in the guest)"
        if clean == "/":
            raise InvalidInput(
                f"a share cannot be mounted over the guest's /{via}",
                hint="pick a folder such as /mnt/NAME with --to",
            )
        if force:
            continue
        why = _system(clean, home)
        if why:
            raise InvalidInput(
                f"a share at {target}{via} would hide the guest's {why}",
                hint="pick a folder such as /mnt/NAME with --to, or pass --force",
            )


def _system(path: str, home: str | None) -> str:
    if home and path == posixpath.normpath(home):
        return "home folder of the login user"
    top = posixpath.dirname(path) == "/"
    if path in SYSTEM_PATHS or (top and posixpath.basename(path).startswith("lib")):
        return f"system folder {path}"
    for tree in _SYSTEM_TREES:
        if path.startswith(tree + "/"):
            return f"kernel file system {tree}"
    return ""


def check_readonly(mechanism: str, readonly: bool) -> None:
    """Refuse ``--readonly`` on a mechanism that cannot enforce it on the host."""
    if readonly and not ENFORCES_READONLY.get(mechanism, False):
        can = ", ".join(m for m, ok in ENFORCES_READONLY.items() if ok)
        raise NotSupported(
            f"the {mechanism} mechanism cannot enforce --readonly on the host",
            hint=f"use --mechanism with one that can: {can}",
        )
