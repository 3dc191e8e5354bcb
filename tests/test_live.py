"""Issue 4 on a real QEMU VM: live shares and forwards, every mechanism, restarts, concurrency."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.vmfixtures import BUSYBOX_IMAGE, SESSION_VM, vmkit_cli
from vmkit.host import procs
from vmkit.host.netutil import free_port

pytestmark = pytest.mark.vm

WEIRD = "dir with space/ünïcødé 'q' $(x) `y`"


@pytest.fixture
def tmp_path(tmp_path: Path) -> Path:
    """Shared folders keep host permissions: let the guest's unprivileged user read them."""
    tmp_path.chmod(0o755)
    return tmp_path


def _guest_http_server(vm: Any, port: int, body: str) -> None:
    """busybox httpd in the guest serving ``body`` as /index.html on ``port``."""
    root = f"/tmp/www-{port}"
    vm.run(["mkdir", "-p", root])
    vm.run(["sh", "-c", 'cat > "$1"', "sh", f"{root}/index.html"], input=body)
    vm.run(["busybox", "httpd", "-p", str(port), "-h", root])


def _fetch(port: int, timeout: float = 10) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/index.html", timeout=timeout) as r:
        return str(r.read().decode())


def _listening(port: int) -> list[str]:
    out = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True).stdout
    return [line.split()[3] for line in out.splitlines() if line.strip()]


def test_share_with_space_and_unicode_both_ways_and_docker_sees_it(
    vm: Any, vm_home: Path, tmp_path: Path
) -> None:
    host = tmp_path / WEIRD
    host.mkdir(parents=True)
    (host / "from-host ü.txt").write_text("hello from the host\n")
    vmkit_cli("share", str(host), "--vm", SESSION_VM, home=vm_home)
    try:
        assert vm.run(["cat", f"{host}/from-host ü.txt"]).stdout == "hello from the host\n"
        vm.run(
            ["sh", "-c", 'echo "from the guest" > "$1"', "sh", f"{host}/from-guest.txt"], sudo=True
        )
        assert (host / "from-guest.txt").read_text() == "from the guest\n"
        seen = vm.run(
            [
                "docker",
                "run",
                "--rm",
                "-v",
                f"{host}:/data",
                BUSYBOX_IMAGE,
                "cat",
                "/data/from-host ü.txt",
                "/data/from-guest.txt",
            ]
        ).stdout
        assert seen == "hello from the host\nfrom the guest\n"
        assert "virtiofs" in vmkit_cli("shares", "--vm", SESSION_VM, home=vm_home).stdout
    finally:
        vmkit_cli("unshare", str(host), "--vm", SESSION_VM, home=vm_home)
    assert vm.run(["cat", f"{host}/from-host ü.txt"], check=False).exit_code != 0
    time.sleep(0.5)
    assert not procs.find(str(vm.record.files.dir / "virtiofs-")), "a virtiofsd is left running"


def test_readonly_share(vm: Any, tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("x")
    vm.share(tmp_path, readonly=True)
    try:
        assert vm.run(["cat", f"{tmp_path}/a.txt"]).stdout == "x"
        r = vm.run(["touch", f"{tmp_path}/b.txt"], sudo=True, check=False)
        assert r.exit_code != 0 and not (tmp_path / "b.txt").exists()
    finally:
        vm.unshare(tmp_path)


def test_share_is_idempotent_and_conflicts_are_refused(vm: Any, tmp_path: Path) -> None:
    from vmkit.errors import ShareExists

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    first = vm.share(a)
    try:
        assert vm.share(a) == first
        with pytest.raises(ShareExists):
            vm.share(a, target="/elsewhere")
        with pytest.raises(ShareExists):
            vm.share(b, target=str(a))
        assert [s.source for s in vm.shares()].count(str(a)) == 1
    finally:
        vm.unshare(a)


def test_sshfs_mechanism(vm: Any, vm_home: Path, tmp_path: Path) -> None:
    (tmp_path / "s.txt").write_text("over sshfs")
    spec = vm.share(tmp_path, mechanism="sshfs")
    try:
        assert spec.mechanism == "sshfs"
        status = vmkit_cli("status", SESSION_VM, home=vm_home).stdout
        assert "helper: agent" in status and f"share {tmp_path}" in status
        assert vm.run(["cat", f"{tmp_path}/s.txt"]).stdout == "over sshfs"
        assert (str(tmp_path), str(tmp_path)) in {(s.source, s.target) for s in vm.active_shares()}
    finally:
        vm.unshare(tmp_path)
    assert vm.run(["cat", f"{tmp_path}/s.txt"], check=False).exit_code != 0


def test_forward_reaches_a_guest_server_and_unforward_ends_it(vm: Any, vm_home: Path) -> None:
    gport = 8081
    _guest_http_server(vm, gport, "hostfwd works")
    hport = free_port()
    out = vmkit_cli("forward", f"{hport}:{gport}", "--vm", SESSION_VM, home=vm_home).stdout
    assert "hostfwd" in out
    try:
        assert _fetch(hport) == "hostfwd works"
        assert _listening(hport) == [f"127.0.0.1:{hport}"], "must bind 127.0.0.1 only"
    finally:
        vmkit_cli("unforward", str(hport), "--vm", SESSION_VM, home=vm_home)
    with pytest.raises(OSError):
        _fetch(hport, timeout=3)
    assert _listening(hport) == []


def test_ssh_tunnel_mechanism(vm: Any) -> None:
    gport = 8082
    _guest_http_server(vm, gport, "tunnel works")
    hport = free_port()
    spec = vm.forward(hport, gport, mechanism="ssh-tunnel")
    try:
        assert spec.mechanism == "ssh-tunnel"
        assert _fetch(hport) == "tunnel works"
    finally:
        vm.unforward(hport)
    with pytest.raises(OSError):
        _fetch(hport, timeout=3)


def test_port_in_use_is_named_before_anything_changes(vm: Any, vm_home: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        r = vmkit_cli("forward", str(port), "--vm", SESSION_VM, home=vm_home, check=False)
    assert r.returncode == 1 and str(port) in r.stderr and "already in use" in r.stderr
    assert all(f.host_port != port for f in vm.forwards())


def test_public_forward_warns(vm: Any, vm_home: Path) -> None:
    hport = free_port()
    r = vmkit_cli("forward", f"{hport}:22", "--public", "--vm", SESSION_VM, home=vm_home)
    try:
        assert "warning" in r.stderr
        assert _listening(hport) == [f"0.0.0.0:{hport}"]
    finally:
        vmkit_cli("unforward", str(hport), "--vm", SESSION_VM, home=vm_home)


def test_attach_ssh_host_share_and_forward(vm: Any, vm_home: Path, tmp_path: Path) -> None:
    """The SSH provider against a real sshd: the vmkit-mini guest's."""
    from vmkit.providers.sshhost import fingerprint

    ep = vm.record.ssh
    argv = ["attach", f"ssh://{ep.user}@127.0.0.1:{ep.port}", "--name", "sshhost"]
    argv += ["--key", ep.key_file]
    # Not in known_hosts, no fingerprint: refused, showing the key to check.
    r = vmkit_cli(*argv, home=vm_home, check=False)
    assert r.returncode == 1 and fingerprint(ep.host_key) in r.stderr, r.stderr
    assert "--trust-new-host-key" in r.stderr
    out = vmkit_cli(*argv, "--trust-new-host-key", home=vm_home).stdout
    assert fingerprint(ep.host_key) in out
    try:
        (tmp_path / "h.txt").write_text("to an ssh host")
        out = vmkit_cli("share", str(tmp_path), "--vm", "sshhost", home=vm_home).stdout
        assert "sshfs" in out
        assert vm.run(["cat", f"{tmp_path}/h.txt"]).stdout == "to an ssh host"
        _guest_http_server(vm, 8083, "ssh host forward")
        hport = free_port()
        vmkit_cli("forward", f"{hport}:8083", "--vm", "sshhost", home=vm_home)
        assert _fetch(hport) == "ssh host forward"
        vmkit_cli("unshare", str(tmp_path), "--vm", "sshhost", home=vm_home)
        vmkit_cli("unforward", str(hport), "--vm", "sshhost", home=vm_home)
        assert vm.run(["cat", f"{tmp_path}/h.txt"], check=False).exit_code != 0
        r = vmkit_cli("stop", "sshhost", home=vm_home, check=False)
        assert r.returncode == 1 and "does not power off" in r.stderr
        assert vm.run(["true"]).ok  # and nothing was sent to the machine
    finally:
        out = vmkit_cli("destroy", "sshhost", "-f", home=vm_home).stdout
    assert "forgot" in out  # an attached SSH host is forgotten, never powered off
    time.sleep(0.5)
    assert not procs.find(str(vm_home / "vms" / "sshhost")), "the agent is left running"


def test_twenty_concurrent_cli_calls_end_consistent(vm: Any, vm_home: Path, tmp_path: Path) -> None:
    dirs = [tmp_path / f"c{i}" for i in range(6)]
    for d in dirs:
        d.mkdir()
    ports = [free_port() for _ in range(8)]
    calls = [["share", str(d), "--vm", SESSION_VM] for d in dirs]
    calls += [["forward", f"{p}:22", "--vm", SESSION_VM] for p in ports]
    calls += [["unshare", str(d), "--vm", SESSION_VM] for d in dirs[:3]]
    calls += [["unforward", str(p), "--vm", SESSION_VM] for p in ports[:3]]
    env = dict(os.environ, VMKIT_HOME=str(vm_home))

    def call(args: list[str]) -> int:
        return subprocess.run(
            [sys.executable, "-m", "vmkit", *args], env=env, capture_output=True, timeout=600
        ).returncode

    with ThreadPoolExecutor(max_workers=20) as pool:
        list(pool.map(call, calls))
    # Unshare/unforward may have run before their share/forward: whatever the order, the
    # record must match what the guest and QEMU really have.
    desired_s = {(s.source, s.target) for s in vm.shares()}
    active_s = {(s.source, s.target) for s in vm.active_shares()}
    desired_f = {f.key for f in vm.forwards()}
    active_f = {f.key for f in vm.active_forwards()}
    try:
        assert desired_s == active_s
        assert desired_f == active_f
        mounted = vm.run(["cat", "/proc/self/mounts"]).stdout
        for d in dirs:
            assert (str(d) in mounted) == ((str(d), str(d)) in desired_s)
    finally:
        for s in vm.shares():
            vm.unshare(s.source)
        for f in vm.forwards():
            vm.unforward(f.host_port)


def test_stop_and_start_bring_shares_and_forwards_back(
    vm: Any, vm_home: Path, tmp_path: Path
) -> None:
    (tmp_path / "keep.txt").write_text("still here")
    gone = tmp_path.parent / f"{tmp_path.name}-gone"
    gone.mkdir()
    hport = free_port()
    vm.share(tmp_path)
    vm.share(gone)
    vm.forward(hport, 22)
    vmkit_cli("stop", SESSION_VM, home=vm_home)
    assert "stopped" in vmkit_cli("status", SESSION_VM, home=vm_home).stdout
    assert not procs.find(str(vm.record.files.dir / "virtiofs-"))
    gone.rmdir()  # a share that cannot come back: start must say so, not print a plain ✓
    started = vmkit_cli("start", SESSION_VM, home=vm_home, check=False)
    assert started.returncode == 1, started.stdout + started.stderr
    assert f"did not come back: share {gone}" in started.stderr
    vm.reload()
    try:
        assert vm.run(["cat", f"{tmp_path}/keep.txt"]).stdout == "still here"
        with socket.create_connection(("127.0.0.1", hport), timeout=10) as s:
            assert s.recv(64).startswith(b"SSH-")
    finally:
        gone.mkdir(exist_ok=True)
        vm.unshare(gone)
        vm.unshare(tmp_path)
        vm.unforward(hport)


def test_a_vm_whose_ssh_stops_answering_fails_fast(vm: Any, vm_home: Path, tmp_path: Path) -> None:
    """Not booting, so not waited on: the boot timeout is minutes, this must be seconds."""
    from vmkit.providers.qemu.qmp import QMP

    port = vm.record.ssh.port
    with QMP.for_vm(vm.record) as q:  # SSH's only way in, gone; the VM itself runs on
        q.hmp(f"hostfwd_remove net0 tcp:127.0.0.1:{port}")
    try:
        began = time.monotonic()
        r = vmkit_cli("share", str(tmp_path), "--vm", SESSION_VM, home=vm_home, check=False)
        took = time.monotonic() - began
        assert r.returncode == 1, r.stdout + r.stderr
        assert "was up, but its SSH does not answer now" in r.stderr
        assert "vmkit stop --force" in r.stderr
        assert took < 60, f"took {took:.0f} s"  # the 300 s boot wait would blow this
        assert "unreachable" in vmkit_cli("status", SESSION_VM, home=vm_home).stdout
    finally:
        with QMP.for_vm(vm.record) as q:
            q.hmp(f"hostfwd_add net0 tcp:127.0.0.1:{port}-:22")
    assert vmkit_cli("ssh", SESSION_VM, "--", "echo", "back", home=vm_home).stdout.strip() == "back"
