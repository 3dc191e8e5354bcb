"""Issue 15 on a real QEMU VM: a share cannot hurt the host, whatever root in the guest does.

docs/security.md names these tests line by line.
"""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.vmfixtures import BUSYBOX_IMAGE, SESSION_VM, vmkit_cli
from vmkit.errors import InvalidInput, VmkitError

pytestmark = pytest.mark.vm

#: What a container (root in it) tries, to plant a setuid-root program on the host.
PLANT = "cp /bin/busybox {d}/x && chmod 4755 {d}/x && chown 0:0 {d}/x; mknod {d}/mem c 1 3"


@pytest.fixture
def share_dir(tmp_path: Path) -> Path:
    d = tmp_path / "d"
    d.mkdir()
    tmp_path.chmod(0o755)
    return d


def _assert_nothing_planted(d: Path) -> None:
    """What PLANT left on the host is the sharing user's, with no set-id bit and no device."""
    for p in d.iterdir():
        st = p.lstat()
        assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid()), f"{p} is {st}"
        assert not st.st_mode & (stat.S_ISUID | stat.S_ISGID), f"{p} is {oct(st.st_mode)}"
        assert stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode), f"{p} is {oct(st.st_mode)}"


def test_virtiofs_container_cannot_plant_setuid_root_or_devices(
    vm: Any, vm_home: Path, share_dir: Path
) -> None:
    r = vmkit_cli(
        "run", BUSYBOX_IMAGE, "--share", str(share_dir), "--vm", SESSION_VM, "--",
        "sh", "-c", PLANT.format(d=share_dir), home=vm_home, check=False,
    )  # fmt: skip
    try:
        assert (share_dir / "x").exists(), r.stdout + r.stderr
        _assert_nothing_planted(share_dir)
        assert not (share_dir / "mem").exists()
        # The same through a hand-made bind mount of the share in the VM.
        plant = PLANT.format(d=share_dir).replace("/x", "/y").replace("/mem", "/mem2")
        vm.run(
            ["docker", "run", "--rm", "-v", f"{share_dir}:{share_dir}", BUSYBOX_IMAGE,
             "sh", "-c", plant],
            sudo=True, check=False,
        )  # fmt: skip
        assert (share_dir / "y").exists()
        _assert_nothing_planted(share_dir)
        # The guest's login user reads and writes a read-write share, whatever the host uid.
        vm.run(["sh", "-c", 'echo mine > "$1/z" && cat "$1/x" > /dev/null', "sh", str(share_dir)])
        assert (share_dir / "z").read_text() == "mine\n"
        _assert_nothing_planted(share_dir)
    finally:
        vmkit_cli("unshare", str(share_dir), "--vm", SESSION_VM, home=vm_home, check=False)


@pytest.mark.parametrize("mechanism", ["virtiofs", "sshfs"])
def test_guest_root_remounting_a_readonly_share_rw_cannot_write_the_host(
    vm: Any, share_dir: Path, mechanism: str
) -> None:
    (share_dir / "keep").write_text("host")
    vm.share(share_dir, readonly=True, mechanism=mechanism)
    try:
        vm.run(["mount", "-o", "remount,rw", str(share_dir)], sudo=True, check=False)
        for argv in (
            ["sh", "-c", 'echo guest > "$1/keep"', "sh", str(share_dir)],
            ["touch", f"{share_dir}/new"],
            ["rm", "-f", f"{share_dir}/keep"],
            ["chmod", "777", f"{share_dir}/keep"],
        ):
            vm.run(argv, sudo=True, check=False)
        assert sorted(os.listdir(share_dir)) == ["keep"]
        assert (share_dir / "keep").read_text() == "host"
        assert stat.S_IMODE((share_dir / "keep").stat().st_mode) != 0o777
    finally:
        vm.unshare(share_dir)


def _sftp_open(req_id: int, path: str, pflags: int) -> bytes:
    """An SSH_FXP_OPEN packet (SFTP v3) for ``path``, no attributes."""
    raw = path.encode()
    body = struct.pack(">BII", 3, req_id, len(raw)) + raw + struct.pack(">II", pflags, 0)
    return struct.pack(">I", len(body)) + body


#: Guest root controls what answers at the guest end of a share's channel: here a fake
#: ``sshfs`` (first on sudo's secure_path) that speaks SFTP itself, sends the requests in
#: $1 (octal escapes) and keeps what the host answers.
_FAKE_SSHFS = """#!/bin/sh
printf '%b' "$(cat /run/sftp-requests)"
timeout 8 cat > /run/sftp-replies
"""


def _status_codes(replies: bytes) -> dict[int, int]:
    """Request id → status code of every SSH_FXP_STATUS packet; others are kept as -type."""
    out: dict[int, int] = {}
    while len(replies) >= 9:
        (length,) = struct.unpack(">I", replies[:4])
        kind = replies[4]
        if kind == 2:  # SSH_FXP_VERSION: no request id
            replies = replies[4 + length :]
            continue
        (req_id,) = struct.unpack(">I", replies[5:9])
        out[req_id] = struct.unpack(">I", replies[9:13])[0] if kind == 101 else -kind
        replies = replies[4 + length :]
    return out


def test_sshfs_channel_refuses_host_paths_outside_the_share_and_readonly_writes(
    vm: Any, tmp_path: Path, share_dir: Path
) -> None:
    from vmkit.errors import ProviderError

    secret = tmp_path / "secret"
    secret.write_text("host secret")
    read, write_creat = 0x01, 0x02 | 0x08
    asks = {
        0x7F000001: (str(secret), read),
        0x7F000002: (f"{share_dir}/../secret", read),
        0x7F000003: ("/etc/shadow", read),
        0x7F000004: (f"{share_dir}/planted", write_creat),
    }
    packets = struct.pack(">IBI", 5, 1, 3)  # SSH_FXP_INIT, version 3
    for req_id, (path, flags) in asks.items():
        packets += _sftp_open(req_id, path, flags)
    octal = "".join(f"\\0{b:03o}" for b in packets)
    vm.run(["sh", "-c", 'printf %s "$1" > /run/sftp-requests', "sh", octal], sudo=True)
    vm.run(["sh", "-c", 'cat > /usr/local/sbin/sshfs && chmod 755 /usr/local/sbin/sshfs'],
           sudo=True, input=_FAKE_SSHFS)  # fmt: skip
    try:
        with pytest.raises(ProviderError):  # the fake never mounts anything
            vm.share(share_dir, readonly=True, mechanism="sshfs")
        out = vm.run(["od", "-An", "-tu1", "-v", "/run/sftp-replies"], sudo=True).stdout
        codes = _status_codes(bytes(int(x) for x in out.split()))
        # SSH_FX_PERMISSION_DENIED for every one of them
        assert codes == dict.fromkeys(asks, 3), codes
        assert os.listdir(share_dir) == []
    finally:
        vm.run(["rm", "-f", "/usr/local/sbin/sshfs", "/run/sftp-requests", "/run/sftp-replies"],
               sudo=True)  # fmt: skip
        assert vm.shares() == []


def test_system_targets_are_refused_before_anything_changes(
    vm: Any, vm_home: Path, share_dir: Path
) -> None:
    vm.run(["ln", "-sfn", "/etc", "/tmp/etc-link"])
    for to, force in (
        ("/etc", False),
        ("/", True),
        ("/tmp/etc-link", False),
        ("/srv/../usr", False),
    ):
        with pytest.raises(InvalidInput):
            vm.share(share_dir, target=to, force=force)
    home = vm.run(["sh", "-c", "echo $HOME"]).stdout.strip()
    r = vmkit_cli(
        "share", str(share_dir), "--to", home, "--vm", SESSION_VM, home=vm_home, check=False
    )
    assert r.returncode == 1 and "home folder of the login user" in r.stderr, r.stderr
    assert vm.shares() == [] and vm.active_shares() == []


@pytest.fixture
def other_user() -> Iterator[pwd.struct_passwd]:
    """A plain host user made for the test (CI runs as root)."""
    name = f"vmkit-t{os.getpid() % 100000}"
    subprocess.run(["useradd", "--no-create-home", "--shell", "/bin/sh", name], check=True)
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", name], check=False)


def test_virtiofs_as_a_plain_host_user(vm: Any, other_user: Any) -> None:
    """A plain user's virtiofsd, confined by vmkit's fsguard with no root, serves the guest;
    what the guest's login user and root write is that user's (QEMU runs as root here)."""
    from vmkit.host import fsguard
    from vmkit.providers.qemu.qmp import QMP

    uid, gid = other_user.pw_uid, other_user.pw_gid
    # pytest's tmp_path is under a 0700 folder of root's: the plain user could not reach it.
    base = Path(tempfile.mkdtemp(prefix="vmkit-plain-"))
    base.chmod(0o755)
    run_dir, src = base / "run", base / "data"
    for d in (run_dir, src):
        d.mkdir()
        shutil.chown(d, uid, gid)
    sock, root = run_dir / "vfs.sock", run_dir / "root"
    root.mkdir()
    shutil.chown(root, uid, gid)
    login = [int(x) for x in vm.run(["sh", "-c", "id -u; id -g"]).stdout.split()]
    server = ["/usr/lib/qemu/virtiofsd", "-f", "-o", f"source={root}", "-o", "cache=auto",
              "--rlimit-nofile=0"]  # fmt: skip
    argv = fsguard.command(
        str(src), root=str(root), listen=str(sock), readonly=False, uid=login[0],
        gid=login[1], server=server,
    )  # fmt: skip
    daemon = subprocess.Popen(
        ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--", *argv],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while not sock.exists():
            assert daemon.poll() is None, daemon.communicate()[0]
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert _uid_of(daemon.pid) == uid
        with QMP.for_vm(vm.record) as q:
            q.execute(
                "chardev-add",
                {
                    "id": "chr-plain",
                    "backend": {
                        "type": "socket",
                        "data": {
                            "addr": {"type": "unix", "data": {"path": str(sock)}},
                            "server": False,
                        },
                    },
                },
            )
            q.execute("device_add", {"driver": "vhost-user-fs-pci", "chardev": "chr-plain",
                                     "tag": "plain", "id": "dev-plain"})  # fmt: skip
        vm.run(["mkdir", "-p", "/mnt/plain"], sudo=True)
        deadline = time.monotonic() + 10
        while not vm.run(["mount", "-t", "virtiofs", "plain", "/mnt/plain"], sudo=True,
                         check=False).ok:  # fmt: skip
            assert time.monotonic() < deadline
            time.sleep(0.1)
        vm.run(["sh", "-c", "echo hi > /mnt/plain/f && mkdir /mnt/plain/sub"])
        vm.run(["sh", "-c", "echo root > /mnt/plain/g"], sudo=True)
        for name in ("f", "sub", "g"):
            st = (src / name).stat()
            assert (st.st_uid, st.st_gid) == (uid, gid), name
    finally:
        vm.run(["umount", "/mnt/plain"], sudo=True, check=False)
        with QMP.for_vm(vm.record) as q:
            for cmd, args in (("device_del", {"id": "dev-plain"}),
                              ("chardev-remove", {"id": "chr-plain"})):  # fmt: skip
                deadline = time.monotonic() + 15
                while True:
                    try:
                        q.execute(cmd, args)
                        break
                    except VmkitError:
                        if cmd == "device_del" or time.monotonic() > deadline:
                            break
                        time.sleep(0.2)
        daemon.terminate()
        daemon.wait(10)
        shutil.rmtree(base, ignore_errors=True)


def _uid_of(pid: int) -> int:
    return os.stat(f"/proc/{pid}").st_uid


def test_vm_folder_and_sockets_are_the_owners_only(vm: Any, share_dir: Path) -> None:
    """Whoever connects to one of these sockets controls the VM or its shares."""
    from vmkit.docker.client import ensure_socket

    other = share_dir.parent / "other"
    other.mkdir()
    vm.share(share_dir, mechanism="virtiofs")
    vm.share(other, mechanism="sshfs")  # the agent holds it
    try:
        ensure_socket(vm)
        folder = vm.record.files.dir
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        socks = {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.glob("*.sock")}
        assert {"qmp.sock", "agent.sock", "docker.sock"} <= set(socks), socks
        assert any(n.startswith("virtiofs-") for n in socks), socks
        assert all(mode == 0o600 for mode in socks.values()), socks
    finally:
        vm.unshare(share_dir)
        vm.unshare(other)
