"""A QEMU VM's disk: a qcow2 copy-on-write overlay on a box's disk or a saved boot's."""

from __future__ import annotations

import contextlib
from pathlib import Path

from vmkit.host.runner import run, which


def overlay(path: Path, backing: Path, size_gib: int) -> None:
    """Make ``path`` a new, empty qcow2 overlay of ``size_gib`` GiB on ``backing`` (qcow2),
    replacing whatever was there."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    run(
        [
            which("qemu-img"),
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "qcow2",
            "-b",
            str(backing),
            str(path),
            f"{size_gib}G",
        ],
        timeout=60,
    )
