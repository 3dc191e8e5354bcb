"""The 32-bit box, which the no-VT-x VirtualBox <= 6.0 fallback hands out, really boots:
under QEMU (TCG) to SSH and a container, and from the BIOS-bootable disk VirtualBox uses."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.vmfixtures import vmkit_cli

pytestmark = pytest.mark.vm

# A tiny image from the guest's own (i386) busybox: the amd64 one fails there with
# "exec format error".
_MAKE_IMAGE = (
    "set -e; d=$(mktemp -d); mkdir -p $d/bin; cp /bin/busybox $d/bin/; ln -s busybox $d/bin/sh; "
    "ln -s busybox $d/bin/uname; tar -C $d -c . | docker import - vmkit-test/busybox32 >/dev/null"
)


def test_i386_box_boots_to_ssh_and_runs_a_container(tmp_path: Path) -> None:
    home = tmp_path / "home"
    try:
        up = vmkit_cli(
            "up",
            "x32",
            "--arch",
            "i386",
            "--accel",
            "tcg",
            "--memory",
            "768",
            home=home,
            timeout=900,
        )
        assert "is running" in up.stdout
        assert vmkit_cli("ssh", "x32", "--", "uname", "-m", home=home).stdout.strip() == "i686"
        vmkit_cli("ssh", "x32", "--", "sh", "-c", _MAKE_IMAGE, home=home, timeout=300)
        out = vmkit_cli(
            "docker",
            "--vm",
            "x32",
            "--",
            "run",
            "--rm",
            "vmkit-test/busybox32",
            "uname",
            "-m",
            home=home,
            timeout=300,
        )
        assert out.stdout.strip() == "i686"
    finally:
        vmkit_cli("destroy", "x32", "-f", home=home, check=False)
