"""A stand-in ``qemu-system-x86_64`` that makes a hardware accelerator misbehave on any host.

Put the folder made by ``install`` first on PATH. Every call is handed to the real QEMU with
``-accel kvm`` replaced by TCG, so the vCPU probe passes; then, by ``$FAKEQEMU_SILENT``:

- ``all``: every start with "kvm" also gets ``-S``: its CPUs never run, its console stays
  empty (what a paravirtual KVM does with a stock kernel), so the boot proof fails;
- ``boot``: only daemonized starts (real VM boots) get ``-S``: the proof passes and the
  boot watchdog has to catch the silence.
"""

from __future__ import annotations

import os
import shutil
import stat
import sys
from pathlib import Path

SCRIPT = """#!{python}
import os, sys
real = {real!r}
args = sys.argv[1:]
mode = os.environ.get("FAKEQEMU_SILENT", "")
if "kvm" in args and args[args.index("kvm") - 1] == "-accel":
    i = args.index("kvm")
    args[i] = "tcg"
    if "-cpu" in args:
        args[args.index("-cpu") + 1] = "max"
    if mode == "all" or (mode == "boot" and "-daemonize" in args):
        if "-S" not in args:
            args.append("-S")
os.execv(real, [real, *args])
"""


def install(folder: Path) -> Path:
    """Write the stand-in into ``folder``; returns the folder (to put first on PATH)."""
    real = shutil.which("qemu-system-x86_64")
    assert real is not None, "qemu-system-x86_64 is not installed"
    folder.mkdir(parents=True, exist_ok=True)
    exe = folder / "qemu-system-x86_64"
    exe.write_text(SCRIPT.format(python=sys.executable, real=str(Path(real).resolve())))
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return folder


def environ(folder: Path, mode: str) -> dict[str, str]:
    """The environment changes that make vmkit use the stand-in."""
    return {"PATH": f"{folder}{os.pathsep}{os.environ['PATH']}", "FAKEQEMU_SILENT": mode}
