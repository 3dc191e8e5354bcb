"""The arm64 box really boots on this x86 host: under qemu-system-aarch64 (TCG, the Arm virt
machine) to SSH, with a live share, a live forward and a container, all in one VM to keep CI
time down (the box itself takes ~8.5 min to build here the first time, under qemu-user)."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest

from tests.vmfixtures import guest_busybox_image, vmkit_cli
from vmkit.host.netutil import free_port

pytestmark = pytest.mark.vm

_MAKE_IMAGE = guest_busybox_image("vmkit-test/busybox-arm64")


def test_arm64_box_boots_shares_forwards_and_runs_a_container(tmp_path: Path) -> None:
    home = tmp_path / "home"
    share = tmp_path / "share"
    share.mkdir()
    (share / "hello.txt").write_text("from the host\n")
    try:
        # No --accel: a foreign box runs under TCG by itself, said in one line.
        up = vmkit_cli("up", "a1", "--arch", "arm64", home=home, timeout=1500)
        assert "is running" in up.stdout
        assert "arm64 box is foreign to this amd64 host" in up.stdout
        assert vmkit_cli("ssh", "a1", "--", "uname", "-m", home=home).stdout.strip() == "aarch64"

        vmkit_cli("share", str(share), "--vm", "a1", home=home, timeout=120)
        seen = vmkit_cli("ssh", "a1", "--", "cat", str(share / "hello.txt"), home=home)
        assert seen.stdout == "from the host\n"

        port = free_port()
        vmkit_cli(
            "ssh",
            "a1",
            "--",
            "sh",
            "-c",
            f"busybox httpd -p 8080 -h {share}",
            home=home,
        )
        vmkit_cli("forward", f"{port}:8080", "--vm", "a1", home=home)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/hello.txt", timeout=30) as r:
            assert r.read() == b"from the host\n"

        vmkit_cli("ssh", "a1", "--", "sh", "-c", _MAKE_IMAGE, home=home, timeout=300)
        out = vmkit_cli(
            "docker",
            "--vm",
            "a1",
            "--",
            "run",
            "--rm",
            "vmkit-test/busybox-arm64",
            "uname",
            "-m",
            home=home,
            timeout=300,
        )
        assert out.stdout.strip() == "aarch64"
    finally:
        vmkit_cli("destroy", "a1", "-f", home=home, check=False)
