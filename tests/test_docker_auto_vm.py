"""Issue 16 on the session's real VM: any Docker client through `vmkit env` gets its bind
mounts shared and its published ports forwarded, with no vmkit command in between.

The host's docker CLI (no engine on the host), Debian's docker-compose 1.29 and docker-py,
each through the agent's Docker endpoint. The image is the session's busybox (httpd in it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.vmfixtures import BUSYBOX_IMAGE, SESSION_VM, vmkit_cli
from vmkit.host.netutil import free_port

pytestmark = pytest.mark.vm


@pytest.fixture
def docker_env(vm: Any, vm_home: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The environment a user has after `eval "$(vmkit env)"`."""
    monkeypatch.setenv("COLUMNS", "250")  # vmkit's tables unwrapped, long paths whole
    out = vmkit_cli("env", SESSION_VM, "--shell", "sh", home=vm_home).stdout
    line = next(x for x in out.splitlines() if x.startswith("export DOCKER_HOST="))
    value = line.split("=", 1)[1].strip("'")
    assert value == "unix://" + str(vm.record.files.docker_sock)
    return {**os.environ, "DOCKER_HOST": value, "VMKIT_HOME": str(vm_home)}


def docker(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(
        [shutil.which("docker") or "docker", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    if check:
        assert r.returncode == 0, r.stderr
    return r


def fetch(port: int, path: str, timeout: float = 10) -> bytes:
    """GET 127.0.0.1:port/path, retried for up to ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/{path}", timeout=5) as r:
                return bytes(r.read())
        except urllib.error.HTTPError:
            raise  # the server answered
        except (urllib.error.URLError, ConnectionError, OSError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def answers(port: int, timeout: float) -> bool:
    """Whether an HTTP server answers on 127.0.0.1:port (any status) within ``timeout`` s."""
    try:
        fetch(port, "", timeout=timeout)
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False
    return True


def closed(port: int, timeout: float = 10) -> bool:
    """Whether 127.0.0.1:port stops answering within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2):
                pass
        except (urllib.error.URLError, ConnectionError, OSError):
            return True
        time.sleep(0.2)
    return False


def gone_from_record(vm: Any, port: int, timeout: float) -> bool:
    """Whether the forward of host ``port`` leaves the VM's record within ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while port in {f.host_port for f in vm.forwards()}:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def table(vm_home: Path, what: str) -> str:
    return vmkit_cli(what, "--vm", SESSION_VM, home=vm_home).stdout


def test_docker_cli_run_shares_the_bind_source_and_forwards_the_port(
    vm: Any, vm_home: Path, docker_env: dict[str, str], tmp_path: Path
) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("served from the host\n")
    port = free_port()
    cid = docker(
        docker_env,
        "run", "-d", "--name", "autoweb", "-v", f"{site}:{site}", "-p", f"{port}:80",
        BUSYBOX_IMAGE, "httpd", "-f", "-p", "80", "-h", str(site),
    ).stdout.strip()  # fmt: skip
    try:
        # The forward is in place when `docker run -d` returns.
        assert fetch(port, "index.html", timeout=2) == b"served from the host\n"
        (site / "live.txt").write_text("live\n")
        assert fetch(port, "live.txt") == b"live\n"
        shares = table(vm_home, "shares")
        assert str(site) in shares and "auto (container autoweb)" in shares
        assert "auto (container autoweb)" in table(vm_home, "forwards")
    finally:
        docker(docker_env, "rm", "-f", cid)
    assert gone_from_record(vm, port, timeout=5)
    assert closed(port)
    assert str(site) in table(vm_home, "shares")  # the share stays, listed as automatic
    vm.unshare(site)


def test_a_taken_host_port_and_a_refused_source_are_docker_errors(
    vm: Any, docker_env: dict[str, str], tmp_path: Path
) -> None:
    import socket

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        r = docker(
            docker_env, "run", "-d", "--name", "taken", "-p", f"{taken}:80", BUSYBOX_IMAGE,
            "httpd", "-f", "-p", "80", check=False,
        )  # fmt: skip
        docker(docker_env, "rm", "-f", "taken", check=False)
    assert r.returncode != 0
    assert "vmkit:" in r.stderr and f"host port {taken}/tcp" in r.stderr
    home = str(Path.home())
    r = docker(docker_env, "create", "-v", f"{home}:/h", BUSYBOX_IMAGE, check=False)
    assert r.returncode != 0
    assert "vmkit does not share" in r.stderr and "--force" in r.stderr


def test_docker_compose_up_serves_the_host_file_and_down_removes_the_forward(
    vm: Any, vm_home: Path, docker_env: dict[str, str], tmp_path: Path
) -> None:
    project = tmp_path / "proj"
    (project / "site").mkdir(parents=True)
    (project / "site" / "index.html").write_text("compose\n")
    port = free_port()
    (project / "docker-compose.yml").write_text(
        "version: '3'\n"
        "services:\n"
        "  web:\n"
        f"    image: {BUSYBOX_IMAGE}\n"
        "    command: httpd -f -p 80 -h /site\n"
        "    volumes:\n"
        "      - ./site:/site\n"
        "    ports:\n"
        f"      - '{port}:80'\n"
    )
    compose = shutil.which("docker-compose")
    assert compose, "docker-compose is installed by bin/install-deps"

    def run(*args: str) -> None:
        r = subprocess.run(
            [compose, *args], cwd=project, env=docker_env, capture_output=True, text=True,
            timeout=300,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr

    run("up", "-d")
    try:
        assert fetch(port, "index.html") == b"compose\n"
    finally:
        run("down")
    assert gone_from_record(vm, port, timeout=5)
    assert closed(port)
    shares = table(vm_home, "shares")
    assert str(project / "site") in shares and "auto (container" in shares
    vm.unshare(project / "site")


@pytest.mark.parametrize("how", ["vm.docker()", "DOCKER_HOST"])
def test_docker_py_gets_the_same(
    vm: Any, docker_env: dict[str, str], tmp_path: Path, how: str
) -> None:
    import docker as dockerpy

    site = tmp_path / "py"
    site.mkdir()
    (site / "f.txt").write_text(how)
    port = free_port()
    if how == "DOCKER_HOST":
        client = dockerpy.DockerClient(base_url=docker_env["DOCKER_HOST"])
    else:
        client = vm.docker()
    c = client.containers.run(
        BUSYBOX_IMAGE,
        ["httpd", "-f", "-p", "80", "-h", str(site)],
        detach=True,
        volumes={str(site): {"bind": str(site), "mode": "ro"}},
        ports={"80/tcp": port},
    )
    try:
        assert fetch(port, "f.txt") == how.encode()
    finally:
        c.remove(force=True)
        client.close()
    assert gone_from_record(vm, port, timeout=5)
    assert closed(port)
    vm.unshare(site)


def test_guest_listeners_are_forwarded_automatically_when_on(vm: Any, vm_home: Path) -> None:
    public, loopback = free_port(), free_port()
    vmkit_cli("forward", "--auto", "on", "--vm", SESSION_VM, home=vm_home)
    try:
        vm.run(["sh", "-c", "mkdir -p /tmp/l && echo listener > /tmp/l/i.txt"])
        for addr in (str(public), f"127.0.0.1:{loopback}"):
            # busybox httpd puts itself in the background
            vm.run(["busybox", "httpd", "-p", addr, "-h", "/tmp/l"])
        assert fetch(public, "i.txt", timeout=5) == b"listener\n"
        assert fetch(loopback, "i.txt", timeout=5) == b"listener\n"
        made = {f.host_port: f for f in vm.forwards() if f.auto == "listener"}
        assert made[public].mechanism == "hostfwd"
        assert made[loopback].mechanism == "ssh-tunnel"  # the only way to the guest's loopback
        vm.run(["pkill", "-f", f"[h]ttpd -p {public}"])
        assert gone_from_record(vm, public, timeout=5)
        assert closed(public, timeout=5)
    finally:
        vmkit_cli("forward", "--auto", "off", "--vm", SESSION_VM, home=vm_home)
        vm.run(["pkill", "-f", "[h]ttpd -p"], check=False)
    assert not [f for f in vm.forwards() if f.auto == "listener"]
    assert closed(loopback, timeout=5)


def test_a_restarted_vm_gives_restarting_containers_their_forwards_back(
    vm: Any, docker_env: dict[str, str], tmp_path: Path
) -> None:
    port, gone = free_port(), free_port()
    docker(
        docker_env, "run", "-d", "--name", "always", "--restart", "always", "-p", f"{port}:80",
        BUSYBOX_IMAGE, "httpd", "-f", "-p", "80", "-h", "/",
    )  # fmt: skip
    docker(
        docker_env, "run", "-d", "--name", "once", "-p", f"{gone}:80",
        BUSYBOX_IMAGE, "httpd", "-f", "-p", "80", "-h", "/",
    )  # fmt: skip
    try:
        assert answers(port, timeout=10)
        vm.stop()
        vm.start()
        assert answers(port, timeout=60)  # the container came back, and so did its forward
        assert gone_from_record(vm, gone, timeout=30)  # `once` did not come back
    finally:
        docker(docker_env, "rm", "-f", "always", "once", check=False)
    assert gone_from_record(vm, port, timeout=10)
