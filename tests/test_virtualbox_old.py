"""VirtualBox 5.0 and 5.1 through the simulator (its version switch gates the pre-6.0 output
format), and attaching to a *running* VM whose SSH server does not answer yet, then finishing
it with ``vmkit attach --refresh`` once an SSH server is up."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest

from vmkit.host.netutil import free_port
from vmkit.testing.vboxsim import VBoxSim

pytest_plugins = ["tests.conftest_vbox"]


def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vmkit", *args],
        capture_output=True,
        text=True,
        input=stdin,
        env=dict(os.environ, COLUMNS="200"),
        timeout=120,
    )


@contextlib.contextmanager
def ssh_server(port: int) -> Iterator[str]:
    """A bare SSH server on 127.0.0.1:``port`` that only shows its host key; yields its fingerprint."""
    key = paramiko.RSAKey.generate(2048)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(5)
    sock.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except OSError:
                continue
            t = paramiko.Transport(conn)
            t.add_server_key(key)
            with contextlib.suppress(Exception):
                t.start_server(server=paramiko.ServerInterface())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    from vmkit.providers.sshhost import fingerprint

    try:
        yield fingerprint(f"{key.get_name()} {key.get_base64()}")
    finally:
        stop.set()
        thread.join(timeout=5)
        sock.close()


@pytest.mark.parametrize("sim", ["5.0.40r115130", "5.1.38r122592"], indirect=True)
def test_old_virtualbox_running_vm_attach_forward_then_refresh(
    sim: VBoxSim, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MACHINE_STORAGE_PATH", str(tmp_path / "machine"))
    users = tmp_path / "Users"
    users.mkdir()
    ssh_port = free_port()
    sim.make_docker_machine_vm("default", ssh_port, users)
    sim.vbm("startvm", "default", "--type", "headless")
    key = tmp_path / "id_rsa"
    key.write_text("not read by this test\n")

    r = cli("attach", "virtualbox:default", "--name", "dm", "--key", str(key), "--user", "docker")
    assert r.returncode == 0, r.stderr
    pending = [ln for ln in r.stdout.splitlines() if "no SSH yet" in ln]
    assert len(pending) == 1 and "no SSH server answers" in pending[0], r.stdout
    assert "vmkit attach --refresh dm" in pending[0]

    # Forwards need only VBoxManage: live at once, on the card that carries SSH.
    mark = sim.mark()
    port = free_port()
    r = cli("forward", f"{port}:8888", "--vm", "dm")
    assert r.returncode == 0, r.stderr
    assert sim.since(mark) == [
        ["controlvm", "default", "natpf1", f"vmkit-tcp-{port},tcp,127.0.0.1,{port},,8888"]
    ]
    r = cli("forwards", "--vm", "dm")
    assert f"127.0.0.1:{ssh_port}" in r.stdout and f"127.0.0.1:{port}" in r.stdout
    assert " ssh " in r.stdout and " vmkit " in r.stdout

    # Shares wait for SSH: one line that says how, and no transient share left behind.
    data = tmp_path / "data"
    data.mkdir()
    mark = sim.mark()
    r = cli("share", str(data), "--vm", "dm")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "vmkit attach --refresh dm" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not [c for c in sim.since(mark) if c[:2] == ["sharedfolder", "add"]]

    # Still no SSH server: refresh says so and pins nothing.
    r = cli("attach", "--refresh", "dm", "--yes")
    assert r.returncode == 1 and "no SSH server answers" in r.stderr

    with ssh_server(ssh_port) as fp:
        r = cli("attach", "--refresh", "dm", "--fingerprint", "SHA256:wrong")
        assert r.returncode == 1 and "not SHA256:wrong" in r.stderr
        r = cli("attach", "--refresh", "dm", "--yes")
        assert r.returncode == 0, r.stderr
        assert fp in r.stdout and "host key pinned" in r.stdout
    record = json.loads((Path(os.environ["VMKIT_HOME"]) / "vms" / "dm" / "vm.json").read_text())
    assert record["ssh"]["port"] == ssh_port and record["ssh"]["user"] == "docker"
    assert "ssh_pending" not in record["extra"]
    r = cli("status", "dm")
    assert "no SSH yet" not in r.stdout and "running" in r.stdout


@pytest.mark.parametrize("sim", ["5.0.40r115130"], indirect=True)
def test_stopped_vm_on_50_attaches_and_forwards_offline(
    sim: VBoxSim, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    machine = tmp_path / "machine" / "machines" / "default"
    machine.mkdir(parents=True)
    (machine / "id_rsa").write_text("docker-machine's key\n")
    monkeypatch.setenv("MACHINE_STORAGE_PATH", str(tmp_path / "machine"))
    sim.make_docker_machine_vm("default", free_port(), tmp_path)
    r = cli("attach", "virtualbox:default", "--name", "dm")
    assert r.returncode == 0, r.stderr
    assert (
        "is poweroff" in r.stdout and "start it, then run `vmkit attach --refresh dm`" in r.stdout
    )
    r = cli("status", "dm")
    assert "stopped" in r.stdout and "poweroff" in r.stdout
    mark = sim.mark()
    port = free_port()
    assert cli("forward", f"{port}:80", "--vm", "dm").returncode == 0
    assert sim.since(mark) == [
        ["modifyvm", "default", "--natpf1", f"vmkit-tcp-{port},tcp,127.0.0.1,{port},,80"]
    ]
