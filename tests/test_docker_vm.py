"""Docker in a real VM (QEMU, TCG): docker-py over the kept SSH connection, image load, vmkit run.

The session's one VM (tests/vmfixtures.py). Images are built on the host in
`docker save` format from the guest's own busybox: no registry, no host dockerd.
"""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

import vmkit.vm as api
from tests.imagetar import imagetar as _imagetar
from tests.vmfixtures import SESSION_VM
from vmkit.docker import client as dockerhost
from vmkit.docker import images
from vmkit.errors import DockerError, InvalidInput

pytestmark = pytest.mark.vm

NAME = SESSION_VM


@pytest.fixture(scope="module")
def vm(_session_vm: api.VM) -> api.VM:
    """The test session's one booted VM (tests/vmfixtures.py), shared with the other VM tests."""
    return _session_vm


@pytest.fixture(scope="module")
def busybox(vm: api.VM, tmp_path_factory: pytest.TempPathFactory) -> bytes:
    chan = vm.ssh().open_channel(["cat", "/bin/busybox"])
    data = bytearray()
    while chunk := chan.recv(1 << 16):
        data += chunk
    assert chan.recv_exit_status() == 0
    return bytes(data)


@pytest.fixture(scope="module")
def small_image(vm: api.VM, busybox: bytes, tmp_path_factory: pytest.TempPathFactory) -> str:
    p = _imagetar.build(tmp_path_factory.mktemp("img") / "bb.tar", busybox, "vmkit-bb:1")
    assert images.load(vm, p).images == ["vmkit-bb:1"]
    return "vmkit-bb:1"


def vmkit_cli(*args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vmkit", *args], capture_output=True, text=True, timeout=900, **kw
    )  # type: ignore[call-overload, no-any-return]


def test_docker_py_lists_containers_over_the_kept_connection(vm: api.VM, small_image: str) -> None:
    client = vm.docker()  # through the agent's Docker endpoint
    c = client.containers.run(small_image, ["sleep", "60"], detach=True, name="listed")
    try:
        names = [x.name for x in client.containers.list()]
        assert "listed" in names
        direct = dockerhost.docker_client(vm)  # straight over channels (image loads)
        assert "listed" in [x.name for x in direct.containers.list()]
        assert dockerhost._dialer_for(vm).streamlocal is True
        assert vm.ssh() is vm.ssh()  # one SSH connection carries every call
    finally:
        c.remove(force=True)


def test_docker_cli_passthrough_exit_code_and_quoting(vm: api.VM, small_image: str) -> None:
    weird = "a b 'q' $(x) ünï"
    r = vmkit_cli(
        "docker",
        "--vm",
        NAME,
        "--",
        "run",
        "--rm",
        small_image,
        "sh",
        "-c",
        'echo "$0"; exit 7',
        weird,
    )
    assert r.returncode == 7, r.stderr
    assert r.stdout.strip() == weird


def test_big_image_load_then_run(vm: api.VM, busybox: bytes, tmp_path: Path) -> None:
    tar = _imagetar.build(tmp_path / "big.tar", busybox, "vmkit-big:1", filler_mib=510)
    assert tar.stat().st_size >= 500 << 20
    r = vmkit_cli("image", "load", str(tar), "--vm", NAME)
    assert r.returncode == 0, r.stderr
    assert "loaded vmkit-big:1" in r.stdout
    assert "MiB/s" in r.stderr or "MiB/s" in r.stdout
    r = vmkit_cli(
        "docker",
        "--vm",
        NAME,
        "--",
        "run",
        "--rm",
        "vmkit-big:1",
        "sh",
        "-c",
        "wc -c < /filler.bin",
    )
    assert r.returncode == 0, r.stderr
    assert int(r.stdout.strip()) == 510 << 20


def test_truncated_and_foreign_archives_leave_nothing_tagged(
    vm: api.VM, busybox: bytes, tmp_path: Path
) -> None:
    full = _imagetar.build(tmp_path / "t.tar", busybox, "vmkit-trunc:1", filler_mib=1)
    data = full.read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[: (len(data.rstrip(b"\0")) + 511) // 512 * 512])
    with pytest.raises(InvalidInput, match="cut short"):
        images.load(vm, cut)
    tags = vm.run(["docker", "images", "--format", "{{.Repository}}:{{.Tag}}"]).stdout.split()
    assert "vmkit-trunc:1" not in tags
    r = vmkit_cli("image", "load", str(tmp_path / "t.tar.layer.tar.missing"), "--vm", NAME)
    assert r.returncode == 1 and "does not exist" in r.stderr and "Traceback" not in r.stderr


def test_run_serves_a_shared_file_on_a_forwarded_port(
    vm: api.VM, small_image: str, tmp_path: Path
) -> None:
    site = tmp_path / "site with spaces"
    site.mkdir()
    (site / "index.html").write_text("hello from the host folder\n")
    port = 18931
    r = vmkit_cli(
        "run",
        small_image,
        "--vm",
        NAME,
        "--share",
        str(site),
        "--forward",
        str(port),
        "-d",
        "--name",
        "web",
        "--",
        "httpd",
        "-f",
        "-p",
        str(port),
        "-h",
        str(site),
    )
    assert r.returncode == 0, r.stderr
    assert f"http://127.0.0.1:{port}/" in r.stdout
    try:
        body = ""
        for _ in range(60):
            try:
                body = (
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/index.html", timeout=5)
                    .read()
                    .decode()
                )
                break
            except OSError:
                time.sleep(1)
        assert body == "hello from the host folder\n"
        with pytest.raises(DockerError, match="already published by container web"):
            dockerhost.prepare_run(vm, small_image, forwards=[(port + 1, port)])
    finally:
        vmkit_cli("docker", "--vm", NAME, "--", "rm", "-f", "web")
        vm.unforward(port)
        vm.unshare(site)


def test_run_of_a_missing_image_is_a_clear_error(vm: api.VM) -> None:
    r = vmkit_cli("run", "no-such-image:9", "--vm", NAME)
    assert r.returncode == 1
    assert "is not in VM" in r.stderr and "vmkit image load" in r.stderr


def test_env_and_context(vm: api.VM, small_image: str) -> None:
    r = vmkit_cli("env", NAME, "--shell", "bash")
    assert r.returncode == 0, r.stderr
    out = subprocess.run(
        ["bash", "-c", r.stdout + "docker images --format '{{.Repository}}:{{.Tag}}'"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert small_image in out.stdout.split(), out.stderr


def test_save_round_trip(vm: api.VM, small_image: str, tmp_path: Path) -> None:
    out = tmp_path / "bb.tar.gz"
    size = images.save(vm, small_image, out)
    assert size > 1_000_000 and out.stat().st_size > 0
    assert images.detect_compression(out.read_bytes()[:512]) == "gzip"
    with pytest.raises(DockerError, match="is not in VM"):
        images.save(vm, "nope:0", tmp_path / "x.tar")
    assert not (tmp_path / "x.tar").exists()
