"""Which host folders a container create needs shared, and the body to send dockerd instead.

Pure: the host is asked only through the ``Host`` functions given (exists, is a folder, real
path), so every rule is tested without a VM. The rules, like Docker Desktop's file sharing:

* bind sources are the ``HostConfig.Binds`` entries (``SRC:DST[:OPTS]``, what ``docker run
  -v`` and compose's short syntax send) with a path as ``SRC``, and ``HostConfig.Mounts``
  entries of ``"Type": "bind"`` (``--mount`` and compose's long syntax); named volumes are
  not touched;
* a source under the home folder, ``/tmp``, ``/var/tmp``, ``/mnt``, ``/media``, ``/srv``,
  ``/opt`` (macOS: ``/Users``, ``/Volumes``, ``/private``, ``/var/folders``), or any Windows
  path, is the host's: it is shared into the VM at the path that mirrors it; any other path
  (``/var/run/docker.sock``, ``/etc/localtime``, ``/proc``) means the VM's own file, as with
  Docker Desktop, and is passed on untouched;
* a source inside a folder already shared needs nothing;
* a source that is a file shares the folder that holds it;
* a missing ``-v`` source is created on the host as a folder (Docker creates it, and Docker
  Desktop creates it on the host); a missing ``--mount`` source is refused, as Docker does;
* ``/`` and the whole home folder are never shared this way: the error says how to allow it.
"""

from __future__ import annotations

import copy
import json
import os
import posixpath
import re
from collections.abc import Callable, Sequence

import attrs

from vmkit.errors import InvalidInput
from vmkit.guest.pathmap import guest_path

__all__ = ["HOST_ROOTS", "Host", "Plan", "plan"]

HOST_ROOTS = (
    "/tmp",
    "/var/tmp",
    "/mnt",
    "/media",
    "/srv",
    "/opt",
    "/Users",
    "/Volumes",
    "/private",
    "/var/folders",
)

_WINDOWS = re.compile(r"^(?:[A-Za-z]:[\\/]|\\\\|//)")
# SRC:DST[:OPTS] where SRC may be a Windows path with its own colon (C:\x or C:/x).
_BIND = re.compile(r"^(?P<src>[A-Za-z]:[\\/][^:]*|[^:]+):(?P<rest>.+)$")


@attrs.frozen
class Host:
    """What the planner may ask the host (the real functions by default)."""

    home: str = attrs.field(factory=lambda: os.path.expanduser("~"))
    exists: Callable[[str], bool] = os.path.exists
    isdir: Callable[[str], bool] = os.path.isdir
    realpath: Callable[[str], str] = os.path.realpath


@attrs.frozen
class Plan:
    """What to do for one container create."""

    share: list[str]  # host folders to share, outermost first, none inside another
    create: list[str]  # missing ``-v`` sources to create on the host first
    body: bytes | None  # the body to send instead, or None to send the original


def _is_host_path(path: str, home: str) -> bool:
    if _WINDOWS.match(path):
        return True
    roots = (home, *HOST_ROOTS)
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def plan(body: bytes, shared: Sequence[tuple[str, str]], host: Host | None = None) -> Plan:
    """The plan for a ``POST /containers/create`` body, given the VM's shares as
    (host source, guest target) pairs. ``InvalidInput`` for a source refused by policy."""
    host = host or Host()
    try:
        data = json.loads(body) if body.strip() else {}
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InvalidInput(f"the container create request is not JSON: {e}") from None
    if not isinstance(data, dict):
        return Plan([], [], None)
    new = copy.deepcopy(data)
    hc = new.get("HostConfig")
    if not isinstance(hc, dict):
        return Plan([], [], None)
    folders: list[str] = []
    create: list[str] = []

    def place(src: str, kind: str) -> str:
        """The guest path dockerd is to get for host path ``src``."""
        if src.rstrip("/") == "":
            raise _refusal("/", src, host.home)
        if not _is_host_path(src, host.home):
            return src  # the VM's own file (docker.sock, /etc/localtime, /proc)
        if _WINDOWS.match(src):
            real = src
        else:
            real = host.realpath(posixpath.normpath(src))
            if not _is_host_path(real, host.home):
                return real  # a link out to the VM's own paths
        for source, target in shared:
            if _inside(real, source):
                rest = real[len(source) :].lstrip("/\\").replace("\\", "/")
                return posixpath.join(target, rest) if rest else target
        if not host.exists(real):
            if kind == "mount":
                raise InvalidInput(
                    f"bind source path does not exist on the host: {src}",
                    hint="create it first (`docker run -v` creates a missing folder, "
                    "`--mount type=bind` does not)",
                )
            create.append(real)
            folder = real
        else:
            folder = real if host.isdir(real) else _parent(real)
        if folder.rstrip("/\\") in ("", "/") or folder == host.home or _is_drive_root(folder):
            raise _refusal(folder, src, host.home)
        folders.append(folder)
        return guest_path(real)

    changed = False
    binds = hc.get("Binds")
    if isinstance(binds, list):
        for i, b in enumerate(binds):
            if not isinstance(b, str):
                continue
            m = _BIND.match(b)
            if m is None or not _looks_like_path(m.group("src")):
                continue
            placed = place(m.group("src"), "bind")
            if placed != m.group("src"):
                binds[i] = f"{placed}:{m.group('rest')}"
                changed = True
    mounts = hc.get("Mounts")
    if isinstance(mounts, list):
        for mnt in mounts:
            if not isinstance(mnt, dict) or str(mnt.get("Type", "")).lower() != "bind":
                continue
            src = mnt.get("Source")
            if not isinstance(src, str) or not _looks_like_path(src):
                continue
            placed = place(src, "mount")
            if placed != src:
                mnt["Source"] = placed
                changed = True
    return Plan(_outermost(folders), create, json.dumps(new).encode() if changed else None)


def _looks_like_path(src: str) -> bool:
    """A path, not a named volume (Docker's rule: a volume name has no slash)."""
    return src.startswith("/") or bool(_WINDOWS.match(src))


def _parent(path: str) -> str:
    if _WINDOWS.match(path):
        return re.split(r"[\\/](?=[^\\/]*$)", path)[0]
    return posixpath.dirname(path)


def _is_drive_root(path: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z]:[\\/]?", path))


def _outermost(folders: list[str]) -> list[str]:
    out: list[str] = []
    for f in sorted(set(folders), key=len):
        if not any(_inside(f, o) for o in out):
            out.append(f)
    return out


def _refusal(folder: str, src: str, home: str) -> InvalidInput:
    what = "your whole home folder" if folder == home else "the host's root folder"
    return InvalidInput(
        f"vmkit does not share {folder} ({what}) with the VM for the bind mount of {src}",
        hint=f"bind a subfolder instead, or share it yourself first: `vmkit share --force {folder}`",
    )
