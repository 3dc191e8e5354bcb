"""make_seed for real: mkfs.ext4 -d makes the image, debugfs reads it back."""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
import traceback
from pathlib import Path

import pytest

from vmkit.errors import InvalidInput, NotFound
from vmkit.guest import keys
from vmkit.guest.seed import LABEL, make_seed

DEBUGFS = "/usr/sbin/debugfs"


def debugfs(image: Path, request: str) -> str:
    out = subprocess.run(
        [DEBUGFS, "-R", request, str(image)], capture_output=True, text=True, check=True
    )
    return out.stdout


def listing(image: Path) -> dict[str, tuple[str, int, int, int]]:
    """name -> (octal mode, uid, gid, size) from `debugfs -R 'ls -l /'`."""
    entries = {}
    for line in debugfs(image, "ls -l /").splitlines():
        parts = line.split()
        if len(parts) >= 9 and parts[-1] not in (".", ".."):
            _inode, mode, _paren, uid, gid, size = parts[:6]
            entries[parts[-1]] = (mode, int(uid), int(gid), int(size))
    return entries


@pytest.fixture()
def identity(tmp_path: Path) -> tuple[str, Path, str]:
    folder = tmp_path / "vm dir 'with' $(spaces) ü"
    folder.mkdir()
    client_pub = keys.generate(folder / "id_ed25519", "vmkit@test")
    host_pub = keys.generate(folder / "ssh_host_ed25519_key", "host@test")
    return client_pub, folder / "ssh_host_ed25519_key", host_pub


def test_seed_holds_identity_files_owned_by_root(identity: tuple[str, Path, str]) -> None:
    client_pub, host_key, host_pub = identity
    target = host_key.parent / "seed.img"
    started = time.monotonic()
    out = make_seed(target, authorized_key=client_pub, host_key=host_key, hostname="lab-01")
    elapsed = time.monotonic() - started

    assert out == target
    assert elapsed < 1.0
    assert 4 * 1024 * 1024 <= target.stat().st_size <= 8 * 1024 * 1024
    assert target.stat().st_mode & 0o777 == 0o600
    assert f"Filesystem volume name:   {LABEL}" in debugfs(target, "stats")

    files = listing(target)
    assert set(files) >= {
        "authorized_keys",
        "ssh_host_ed25519_key",
        "ssh_host_ed25519_key.pub",
        "hostname",
    }
    assert files["ssh_host_ed25519_key"][0] == "100600"
    assert files["authorized_keys"][0] == "100644"
    assert all(uid == 0 and gid == 0 for _m, uid, gid, _s in files.values())

    assert debugfs(target, "cat /authorized_keys").strip() == client_pub
    assert debugfs(target, "cat /ssh_host_ed25519_key.pub").strip() == host_pub
    assert debugfs(target, "cat /ssh_host_ed25519_key") == host_key.read_text()
    assert debugfs(target, "cat /hostname") == "lab-01\n"
    # No leftovers beside the image.
    assert sorted(p.name for p in target.parent.iterdir()) == sorted(
        [
            "id_ed25519",
            "id_ed25519.pub",
            "ssh_host_ed25519_key",
            "ssh_host_ed25519_key.pub",
            "seed.img",
        ]
    )


def test_reseeding_replaces_the_image(identity: tuple[str, Path, str]) -> None:
    client_pub, host_key, _ = identity
    target = host_key.parent / "seed.img"
    make_seed(target, authorized_key=client_pub, host_key=host_key, hostname="first")
    make_seed(target, authorized_key=client_pub, host_key=host_key, hostname="second")
    assert debugfs(target, "cat /hostname") == "second\n"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to an unprivileged user")
def test_files_are_root_owned_when_made_by_an_ordinary_user() -> None:
    # mkfs.ext4 -d copies the caller's uid; the seed must still hold root's files. Run
    # make_seed as "nobody" with a PATH that lacks /usr/sbin, as on Debian for users.
    # (pytest's tmp_path is under a root-only folder.)
    with tempfile.TemporaryDirectory() as tmp:
        _make_seed_as_nobody(Path(tmp))


def _make_seed_as_nobody(tmp_path: Path) -> None:
    tmp_path.chmod(0o777)
    keys.generate(tmp_path / "k", "c")
    keys.generate(tmp_path / "h", "h")
    for p in tmp_path.iterdir():
        os.chown(p, 65534, 65534)
    target = tmp_path / "seed.img"
    pid = os.fork()
    if pid == 0:  # the child becomes nobody, with Debian's PATH for ordinary users
        status = 1
        try:
            os.setgid(65534)
            os.setuid(65534)
            os.environ["PATH"] = "/usr/local/bin:/usr/bin:/bin"
            make_seed(
                target,
                authorized_key=(tmp_path / "k.pub").read_text(),
                host_key=tmp_path / "h",
                hostname="userseed",
            )
            status = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(status)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert target.stat().st_uid == 65534
    files = listing(target)
    assert files["ssh_host_ed25519_key"][1:3] == (0, 0)
    assert all(uid == 0 for _m, uid, _g, _s in files.values())


@pytest.mark.parametrize(
    "hostname", ["", "Bad_Name", "-lead", "trail-", "a" * 64, "x y", "a;rm -rf /", "ü"]
)
def test_bad_hostnames_are_refused(identity: tuple[str, Path, str], hostname: str) -> None:
    client_pub, host_key, _ = identity
    with pytest.raises(InvalidInput, match="hostname"):
        make_seed(
            host_key.parent / "s.img",
            authorized_key=client_pub,
            host_key=host_key,
            hostname=hostname,
        )
    assert not (host_key.parent / "s.img").exists()


@pytest.mark.parametrize("key", ["", "not a key", "ssh-ed25519", "ssh-ed25519 AAAA$(reboot)"])
def test_bad_authorized_keys_are_refused(identity: tuple[str, Path, str], key: str) -> None:
    _, host_key, _ = identity
    with pytest.raises(InvalidInput):
        make_seed(host_key.parent / "s.img", authorized_key=key, host_key=host_key, hostname="vm")


def test_missing_host_key_is_reported(identity: tuple[str, Path, str], tmp_path: Path) -> None:
    client_pub, _, _ = identity
    with pytest.raises(NotFound, match="does not exist"):
        make_seed(
            tmp_path / "s.img", authorized_key=client_pub, host_key=tmp_path / "nope", hostname="vm"
        )


def test_host_key_must_be_ed25519(identity: tuple[str, Path, str], tmp_path: Path) -> None:
    client_pub, _, _ = identity
    rsa = tmp_path / "rsa"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "rsa", "-b", "1024", "-N", "", "-f", str(rsa)], check=True
    )
    with pytest.raises(InvalidInput, match="ed25519"):
        make_seed(tmp_path / "s.img", authorized_key=client_pub, host_key=rsa, hostname="vm")
