"""The reverse-sshfs SFTP server stays inside its share (vmkit/agent/sftpjail.py).

A real paramiko SSH connection over a socket pair; the client is paramiko's SFTPClient standing
in for the guest's sshfs (root in the guest can send any request it likes).
"""

from __future__ import annotations

import io
import os
import socket
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from vmkit.agent import sftpjail


class _Server(paramiko.ServerInterface):
    def get_allowed_auths(self, username: str) -> str:
        return "none"

    def check_auth_none(self, username: str) -> int:
        return paramiko.AUTH_SUCCESSFUL

    def check_channel_request(self, kind: str, chanid: int) -> int:
        return paramiko.OPEN_SUCCEEDED


def _connect(root: Path, readonly: bool, walk_by_fd: bool) -> Iterator[paramiko.SFTPClient]:
    a, b = socket.socketpair()
    server = paramiko.Transport(a)
    server.add_server_key(_key())
    server.start_server(threading.Event(), server=_Server())
    client = paramiko.Transport(b)
    client.start_client(timeout=10)
    client.auth_none("guest")
    chan = client.open_session()
    thread = sftpjail.serve(server.accept(10), str(root), readonly=readonly, walk_by_fd=walk_by_fd)
    sftp = paramiko.SFTPClient(chan)
    try:
        yield sftp
    finally:
        sftp.close()
        client.close()
        server.close()
        thread.join(5)


def _key() -> paramiko.PKey:
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    return paramiko.Ed25519Key(file_obj=io.StringIO(pem.decode()))


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "secret").write_text("host secret")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "f").write_text("outside")
    share = tmp_path / "share"
    share.mkdir()
    (share / "a.txt").write_text("hello")
    (share / "sub").mkdir()
    (share / "to-secret").symlink_to(tmp_path / "secret")
    (share / "to-outside").symlink_to(tmp_path / "outside")
    (share / "up").symlink_to("..")
    return share


# Every case runs with both walks: by descriptor (Linux, macOS) and by path (what Windows
# hosts use, which run here too).
@pytest.fixture(params=[True, False], ids=["walk-by-fd", "walk-by-path"])
def walk_by_fd(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


@pytest.fixture
def rw(tree: Path, walk_by_fd: bool) -> Iterator[paramiko.SFTPClient]:
    yield from _connect(tree, readonly=False, walk_by_fd=walk_by_fd)


@pytest.fixture
def ro(tree: Path, walk_by_fd: bool) -> Iterator[paramiko.SFTPClient]:
    yield from _connect(tree, readonly=True, walk_by_fd=walk_by_fd)


def test_the_share_reads_and_lists(rw: paramiko.SFTPClient, tree: Path) -> None:
    assert sorted(rw.listdir(str(tree))) == ["a.txt", "sub", "to-outside", "to-secret", "up"]
    with rw.open(f"{tree}/a.txt") as f:
        assert f.read() == b"hello"
    assert rw.readlink(f"{tree}/to-secret") == str(tree.parent / "secret")


@pytest.mark.parametrize(
    "path",
    [
        "/etc/passwd",
        "{tree}/../secret",
        "{tree}/to-secret",
        "{tree}/to-outside/f",
        "{tree}/up/secret",
        "{tree}/../outside/f",
        "/",
    ],
)
def test_nothing_outside_the_share_can_be_read(
    rw: paramiko.SFTPClient, tree: Path, path: str
) -> None:
    with pytest.raises(PermissionError):
        rw.open(path.format(tree=tree)).read()


@pytest.mark.parametrize("path", ["{tree}/..", "{tree}/to-outside", "{tree}/up", "/root"])
def test_no_folder_outside_the_share_can_be_listed(
    rw: paramiko.SFTPClient, tree: Path, path: str
) -> None:
    with pytest.raises(PermissionError):
        rw.listdir(path.format(tree=tree))


def test_nothing_outside_the_share_can_be_written(rw: paramiko.SFTPClient, tree: Path) -> None:
    for path in (f"{tree}/../new", f"{tree}/to-outside/new", f"{tree}/up/new"):
        with pytest.raises(PermissionError):
            rw.open(path, "w").write(b"x")
    with pytest.raises(PermissionError):
        rw.rename(f"{tree}/a.txt", f"{tree}/../stolen")
    with pytest.raises(PermissionError):
        rw.remove(f"{tree}/../secret")
    with pytest.raises(PermissionError):
        rw.chmod(f"{tree}/to-secret", 0o777)
    assert (tree.parent / "secret").read_text() == "host secret"
    assert sorted(p.name for p in tree.parent.iterdir()) == ["outside", "secret", "share"]
    assert os.listdir(tree.parent / "outside") == ["f"]


def test_a_readonly_share_refuses_every_change(ro: paramiko.SFTPClient, tree: Path) -> None:
    with ro.open(f"{tree}/a.txt") as f:
        assert f.read() == b"hello"
    changes = [
        lambda: ro.open(f"{tree}/new", "w"),
        lambda: ro.open(f"{tree}/a.txt", "r+"),
        lambda: ro.open(f"{tree}/a.txt", "a"),
        lambda: ro.mkdir(f"{tree}/d"),
        lambda: ro.rmdir(f"{tree}/sub"),
        lambda: ro.remove(f"{tree}/a.txt"),
        lambda: ro.rename(f"{tree}/a.txt", f"{tree}/b.txt"),
        lambda: ro.posix_rename(f"{tree}/a.txt", f"{tree}/b.txt"),
        lambda: ro.chmod(f"{tree}/a.txt", 0o777),
        lambda: ro.truncate(f"{tree}/a.txt", 0),
        lambda: ro.symlink("/etc", f"{tree}/l"),
    ]
    for change in changes:
        with pytest.raises(PermissionError):
            change()
    assert sorted(os.listdir(tree)) == ["a.txt", "sub", "to-outside", "to-secret", "up"]
    assert (tree / "a.txt").read_text() == "hello"
    assert stat.S_IMODE((tree / "a.txt").stat().st_mode) != 0o777


def test_writes_are_the_host_users_and_never_setuid(rw: paramiko.SFTPClient, tree: Path) -> None:
    with rw.open(f"{tree}/x", "w") as f:
        f.write(b"#!/bin/sh\n")
    rw.chmod(f"{tree}/x", 0o6755)
    with pytest.raises(PermissionError):
        rw.chown(f"{tree}/x", 0 if os.getuid() else 1, 0 if os.getgid() else 1)
    rw.mkdir(f"{tree}/d", 0o2777)
    rw.posix_rename(f"{tree}/a.txt", f"{tree}/d/b.txt")
    st = (tree / "x").stat()
    assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid())
    assert stat.S_IMODE(st.st_mode) == 0o755
    assert not (tree / "d").stat().st_mode & (stat.S_ISUID | stat.S_ISGID)
    assert (tree / "d" / "b.txt").read_text() == "hello"
    assert rw.stat(f"{tree}/x").st_size == 10


@pytest.mark.parametrize(
    "name", ["a\\..\\..\\secret", "x:stream", "C:", "NUL", "com1.txt", "dot.", "space ", ".."]
)
def test_names_another_host_os_reads_otherwise_are_refused(name: str) -> None:
    """Walking by path (Windows), a name must mean one entry of its folder, nothing else."""
    assert not sftpjail._plain_name(name)


def test_plain_names_pass() -> None:
    assert all(sftpjail._plain_name(n) for n in ["a.txt", ".hidden", "nullable", "con-fig", "x y"])


def test_a_file_swapped_for_a_symlink_is_refused(rw: paramiko.SFTPClient, tree: Path) -> None:
    """Both walks refuse a link that is there when the request is checked."""
    (tree / "sub" / "f").write_text("in share")
    with rw.open(f"{tree}/sub/f") as f:
        assert f.read() == b"in share"
    (tree / "sub" / "f").unlink()
    (tree / "sub" / "f").symlink_to(tree.parent / "secret")
    with pytest.raises(PermissionError):
        rw.open(f"{tree}/sub/f").read()
    with pytest.raises(PermissionError):
        rw.open(f"{tree}/sub/f", "w").write(b"x")
    assert (tree.parent / "secret").read_text() == "host secret"
