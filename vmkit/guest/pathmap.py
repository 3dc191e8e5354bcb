"""Guest path = host path: where a host folder appears inside the VM.

POSIX paths map to themselves. Windows paths follow boot2docker's convention, which Docker
Toolbox users already type: ``C:\\Users\\Ann\\data`` → ``/c/Users/Ann/data``; UNC paths
``\\\\server\\share\\dir`` → ``/unc/server/share/dir``. Pure functions, no I/O.
"""

from __future__ import annotations

import posixpath
import re

from vmkit.errors import InvalidInput

_DRIVE = re.compile(r"^([A-Za-z]):(?:[\\/]|$)")


def guest_path(host_path: str) -> str:
    """The guest path that mirrors absolute ``host_path`` (Windows or POSIX)."""
    if not host_path:
        raise InvalidInput("empty path")
    if "\0" in host_path:
        raise InvalidInput("a path cannot contain a NUL character")
    m = _DRIVE.match(host_path)
    if m:
        rest = host_path[2:].replace("\\", "/")
        return _clean("/" + m.group(1).lower() + "/" + rest)
    if host_path.startswith(("\\\\", "//")):
        parts = [p for p in re.split(r"[\\/]+", host_path) if p]
        if len(parts) < 2:
            raise InvalidInput(f"UNC path {host_path!r} needs a server and a share name")
        return _clean("/unc/" + "/".join(parts))
    if not host_path.startswith("/"):
        raise InvalidInput(f"{host_path!r} is not an absolute path")
    return _clean(host_path)


def _clean(path: str) -> str:
    cleaned = posixpath.normpath(path)
    # normpath keeps a leading "//" (POSIX allows it to mean something else); we never want it.
    if cleaned.startswith("//"):
        cleaned = "/" + cleaned.lstrip("/")
    return cleaned
