"""Finding VBoxManage and telling which VirtualBox it belongs to."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Mapping
from pathlib import PureWindowsPath

from vmkit.errors import ProviderError, ToolMissing
from vmkit.host.runner import run
from vmkit.providers.virtualbox.parsers import VBoxVersion, parse_version

#: The oldest series vmkit drives. 5.0 and 5.1 print the same machine-readable formats as 5.2
#: and have every command vmkit uses (``controlvm natpfN`` for live forwards, ``sharedfolder add
#: --transient`` for live shares, both documented in VirtualBox's manual since 4.x); 4.3 and
#: older are not tested and are refused.
MIN_SERIES = (5, 0)

_HINT = (
    "install VirtualBox from https://www.virtualbox.org/wiki/Downloads (it brings VBoxManage), "
    "or use the QEMU provider instead"
)


def candidates(environ: Mapping[str, str], platform: str) -> list[str]:
    """Where VBoxManage lives when it is not on PATH, most likely first."""
    if platform.startswith("win"):
        found = []
        for var in ("VBOX_MSI_INSTALL_PATH", "VBOX_INSTALL_PATH"):
            if environ.get(var):
                found.append(str(PureWindowsPath(environ[var]) / "VBoxManage.exe"))
        program_files = environ.get("ProgramFiles", r"C:\Program Files")
        found.append(
            str(PureWindowsPath(program_files) / "Oracle" / "VirtualBox" / "VBoxManage.exe")
        )
        return found
    if platform == "darwin":
        return [
            "/Applications/VirtualBox.app/Contents/MacOS/VBoxManage",
            "/usr/local/bin/VBoxManage",
        ]
    return ["/usr/bin/VBoxManage", "/usr/lib/virtualbox/VBoxManage"]


def find_vboxmanage(
    *,
    environ: Mapping[str, str] | None = None,
    platform: str | None = None,
    is_file: Callable[[str], bool] = os.path.isfile,
) -> str:
    """The path of VBoxManage: ``$VMKIT_VBOXMANAGE``, PATH, then the installers' usual places.

    Raises ``ToolMissing`` saying how to get it.
    """
    env = os.environ if environ is None else environ
    plat = sys.platform if platform is None else platform
    override = env.get("VMKIT_VBOXMANAGE")
    if override:
        if is_file(override):
            return override
        raise ToolMissing(override, hint="VMKIT_VBOXMANAGE names a file that does not exist")
    path = env.get("PATH")
    # Debian's and Fedora's packages also install the lower-case name.
    for name in ("VBoxManage", "vboxmanage"):
        hit = shutil.which(name, path=path)
        if hit:
            return hit
    for cand in candidates(env, plat):
        if is_file(cand):
            return cand
    raise ToolMissing("VBoxManage", hint=_HINT)


def check_series(version: tuple[int, int], raw: str) -> None:
    """Refuse VirtualBox releases older than ``MIN_SERIES`` with a clear message."""
    if version < MIN_SERIES:
        raise ProviderError(
            f"VirtualBox {raw} is too old for vmkit (it needs 5.0 or newer)",
            hint="upgrade VirtualBox from https://www.virtualbox.org/wiki/Downloads",
        )


def read_version(path: str) -> VBoxVersion:
    """The version ``path --version`` prints; ``ProviderError`` if it prints none."""
    r = run([path, "--version"], timeout=30)
    v = parse_version(r.stdout)
    if v is None:
        raise ProviderError(
            f"cannot tell the VirtualBox version from `{path} --version`: {r.stdout.strip()[:80]!r}",
            hint="reinstall VirtualBox",
        )
    return v


def version(path: str | None = None) -> tuple[int, int, int]:
    """``(major, minor, patch)`` of the installed VirtualBox, without the minimum check.

    ``ToolMissing`` if there is no VBoxManage; ``ProviderError`` if its answer is unreadable.
    For choosing a provider: callers decide what an old release means for them.
    """
    v = read_version(path or find_vboxmanage())
    return (v.major, v.minor, v.patch)
