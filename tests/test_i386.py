"""The 32-bit box, which the no-VT-x VirtualBox <= 6.0 fallback hands out, really boots:
under QEMU (TCG) to SSH and a container, and from the BIOS-bootable disk VirtualBox uses."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.vmfixtures import guest_busybox_image, vmkit_cli

pytestmark = pytest.mark.vm

_MAKE_IMAGE = guest_busybox_image("vmkit-test/busybox32")


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
