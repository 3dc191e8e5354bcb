"""What vmkit/host/fsguard.py lets a file server do to the host folder, tried without a VM:
the "server" is a Python script run under fsguard exactly as virtiofsd is."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from vmkit.host import fsguard

#: Everything a hostile guest could ask virtiofsd to do, done directly; prints what happened.
ATTEMPTS = r"""
import errno, json, os, sys
d = sys.argv[-2]  # then fsguard's --fd=N
out = {}
def attempt(name, fn):
    try:
        fn()
        out[name] = "ok"
    except OSError as e:
        out[name] = errno.errorcode[e.errno]
# virtiofsd switches to the guest caller's uid to create a file: it must stay ours.
attempt("setresuid", lambda: os.setresuid(-1, 4242, -1))
attempt("create", lambda: open(os.path.join(d, "x"), "w").close())
attempt("create-setuid", lambda: os.close(os.open(os.path.join(d, "s"), os.O_CREAT | os.O_WRONLY, 0o4755)))
attempt("chmod-setuid", lambda: os.chmod(os.path.join(d, "x"), 0o4755))
attempt("chmod-setgid", lambda: os.chmod(os.path.join(d, "x"), 0o2755))
attempt("chmod-plain", lambda: os.chmod(os.path.join(d, "x"), 0o755))
attempt("chown-root", lambda: os.chown(os.path.join(d, "x"), 0, 0))
attempt("mknod-mem", lambda: os.mknod(os.path.join(d, "mem"), 0o600 | 0o020000, os.makedev(1, 3)))
attempt("mkfifo", lambda: os.mkfifo(os.path.join(d, "fifo")))
print(json.dumps(out))
"""


def _guard(d: Path, server: list[str], *, readonly: bool) -> list[str]:
    """``server`` under fsguard with ``d`` bind-mounted on ``d.root`` (what it serves)."""
    root = d.with_suffix(".root")
    root.mkdir(exist_ok=True)
    listen = str(d.with_suffix(".sock"))
    return fsguard.command(
        str(d), root=str(root), listen=listen, readonly=readonly, uid=1000, gid=1000,
        server=[*server, str(root)],
    )  # fmt: skip


def _run(d: Path, *, readonly: bool) -> dict[str, str]:
    argv = _guard(d, ["python3", "-c", ATTEMPTS], readonly=readonly)
    r = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    result: dict[str, str] = json.loads(r.stdout.strip().splitlines()[-1])
    return result


def test_nothing_set_id_no_device_no_foreign_owner(tmp_path: Path) -> None:
    tmp_path = tmp_path / "share"
    tmp_path.mkdir()
    got = _run(tmp_path, readonly=False)
    assert got == {
        "setresuid": "ok",  # ... and nothing changed: the file below is still ours
        "create": "ok",
        "create-setuid": "EPERM",
        "chmod-setuid": "EPERM",
        "chmod-setgid": "EPERM",
        "chmod-plain": "ok",
        "chown-root": "EPERM",
        "mknod-mem": "EPERM",
        "mkfifo": "ok",
    }
    for p in tmp_path.iterdir():
        st = p.lstat()
        assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid()), p
        assert not st.st_mode & (stat.S_ISUID | stat.S_ISGID), p
        assert not (stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)), p
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo", "x"]


def test_readonly_is_a_readonly_mount_on_the_host_side(tmp_path: Path) -> None:
    tmp_path = tmp_path / "share"
    tmp_path.mkdir()
    (tmp_path / "keep").write_text("host")
    got = _run(tmp_path, readonly=True)
    assert got["create"] == "EROFS" and got["mkfifo"] == "EROFS"
    assert os.listdir(tmp_path) == ["keep"]
    # Only the server's namespace sees it read-only: the host user still writes it.
    (tmp_path / "after").write_text("mine")


def test_the_server_runs_as_the_guest_login_user_over_the_host_users_files(tmp_path: Path) -> None:
    share = tmp_path / "share"
    share.mkdir()
    (share / "f").write_text("x")
    script = "import os,sys; print(os.getuid(), os.stat(sys.argv[-2] + '/f').st_uid, sys.argv[-1])"
    argv = _guard(share, ["python3", "-c", script], readonly=False)
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True).stdout
    uid, owner, fd = out.split()
    assert (uid, owner) == ("1000", "1000")  # the host user's file, seen as the login user's
    assert fd.startswith("--fd=")  # the listening socket, handed over


@pytest.mark.parametrize("readonly", [False, True])
def test_the_host_mount_table_is_untouched(tmp_path: Path, readonly: bool) -> None:
    before = Path("/proc/self/mountinfo").read_text()
    (tmp_path / "share").mkdir()
    _run(tmp_path / "share", readonly=readonly)
    assert os.listdir(tmp_path / "share.root") == []  # bound only inside the namespace
    assert Path("/proc/self/mountinfo").read_text() == before
