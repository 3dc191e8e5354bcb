"""The share path policy (vmkit/sharepolicy.py): what may be shared, and where in the guest."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmkit import sharepolicy
from vmkit.errors import InvalidInput, NotSupported

SYSTEM = [
    "/etc",
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib64",
    "/libx32",
    "/boot",
    "/dev",
    "/proc",
    "/sys",
    "/run",
    "/var/lib/docker",
    "/proc/sys",
    "/sys/fs/cgroup",
    "/dev/shm",
]


@pytest.mark.parametrize("target", SYSTEM)
def test_a_system_folder_is_refused_unless_forced(target: str) -> None:
    with pytest.raises(InvalidInput, match="would hide the guest's"):
        sharepolicy.check_target(target, resolved=target, home="/home/vmkit", force=False)
    sharepolicy.check_target(target, resolved=target, home="/home/vmkit", force=True)


@pytest.mark.parametrize("force", [False, True])
@pytest.mark.parametrize("target", ["/", "//", "/etc/..", "/mnt/../.."])
def test_the_root_is_refused_even_when_forced(target: str, force: bool) -> None:
    with pytest.raises(InvalidInput, match="over the guest's /"):
        sharepolicy.check_target(target, resolved=None, home=None, force=force)


def test_dotdot_and_guest_symlinks_are_followed() -> None:
    with pytest.raises(InvalidInput, match="resolves to /etc in the guest"):
        sharepolicy.check_target("/mnt/link", resolved="/etc", home=None, force=False)
    with pytest.raises(InvalidInput, match="/usr"):
        sharepolicy.check_target("/srv/../usr", resolved=None, home=None, force=False)
    with pytest.raises(InvalidInput, match="over the guest's /"):
        sharepolicy.check_target("/mnt/up", resolved="/", home=None, force=True)


def test_the_login_home_itself_is_refused_but_not_a_folder_in_it() -> None:
    with pytest.raises(InvalidInput, match="home folder of the login user"):
        sharepolicy.check_target("/home/vmkit", resolved=None, home="/home/vmkit/", force=False)
    sharepolicy.check_target("/home/vmkit/src", resolved=None, home="/home/vmkit", force=False)


@pytest.mark.parametrize(
    "target",
    [
        "/mnt/data",
        "/srv",
        "/home/ann/project",
        "/usr2",
        "/var/lib/dockerfiles",
        "/opt/etc",
    ],
)
def test_ordinary_folders_are_accepted(target: str) -> None:
    sharepolicy.check_target(target, resolved=target, home="/home/vmkit", force=False)


def test_a_symlinked_source_is_resolved_and_said(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    got = sharepolicy.host_source(tmp_path / "link", force=False)
    assert got.path == real
    assert got.notes and "is a symlink" in got.notes[0] and str(real) in got.notes[0]
    assert sharepolicy.host_source(real, force=False).notes == ()


def test_missing_file_and_home_sources_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="does not exist"):
        sharepolicy.host_source(tmp_path / "nope", force=False)
    (tmp_path / "f").write_text("x")
    with pytest.raises(InvalidInput, match="is not a folder"):
        sharepolicy.host_source(tmp_path / "f", force=False)
    with pytest.raises(InvalidInput, match="expose everything"):
        sharepolicy.host_source("/", force=False)
    assert sharepolicy.host_source("/", force=True).path == Path("/")


def test_an_unreadable_source_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Root reads everything, so the permission check is made to answer as for a plain user.
    monkeypatch.setattr(sharepolicy.os, "access", lambda p, mode: False)
    with pytest.raises(InvalidInput, match="you cannot read"):
        sharepolicy.host_source(tmp_path, force=False)


def test_readonly_on_a_mechanism_that_cannot_enforce_it_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("virtiofs", "sshfs", "vboxsf"):
        sharepolicy.check_readonly(name, True)
    monkeypatch.setitem(sharepolicy.ENFORCES_READONLY, "9p", False)
    with pytest.raises(NotSupported, match="cannot enforce --readonly") as e:
        sharepolicy.check_readonly("9p", True)
    assert "virtiofs" in (e.value.hint or "")
    sharepolicy.check_readonly("9p", False)
