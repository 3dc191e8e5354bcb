"""Real-VM fixtures: one vmkit-mini VM booted per test session, shared by every ``vm`` test.

The session gets its own VMKIT_HOME; the box cache is the user's (or ``$VMKIT_CACHE``) so a
box built once is reused. The VM is destroyed at the end, and the tests check that nothing
(qemu, virtiofsd, agent) is left running.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

SESSION_VM = "vmtest"
SESSION_DISK_GIB = 10

# Makes a tiny Docker image from the guest's static busybox: no registry needed.
BUSYBOX_IMAGE = "vmkit-test/busybox"
_MAKE_BUSYBOX = (
    "set -e; d=$(mktemp -d); mkdir -p $d/bin $d/tmp; cp /bin/busybox $d/bin/; "
    "for a in sh ls cat echo httpd sleep wc mkdir; do ln -s busybox $d/bin/$a; done; "
    "tar -C $d -c . | docker import -c 'CMD [\"/bin/sh\"]' - " + BUSYBOX_IMAGE + "; rm -rf $d"
)


@pytest.fixture(scope="session")
def vm_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("vmkit-vm-home")


@pytest.fixture(scope="session")
def _session_vm(vm_home: Path) -> Iterator[object]:
    import vmkit.vm as api

    old = os.environ.get("VMKIT_HOME")
    os.environ["VMKIT_HOME"] = str(vm_home)
    try:
        # A disk larger than the box's 8 GiB image: the guest grows its root file system.
        vm = api.up(SESSION_VM, memory=1024, cpus=2, disk=SESSION_DISK_GIB)
        vm.run(["sh", "-c", _MAKE_BUSYBOX], timeout=120)
        yield vm
        vm.destroy()
    finally:
        if old is None:
            os.environ.pop("VMKIT_HOME", None)
        else:
            os.environ["VMKIT_HOME"] = old


@pytest.fixture
def vm(_session_vm: object, vm_home: Path, monkeypatch: pytest.MonkeyPatch) -> object:
    """The session's running VM, with VMKIT_HOME pointing at its home for this test."""
    monkeypatch.setenv("VMKIT_HOME", str(vm_home))
    return _session_vm


def vmkit_cli(
    *args: str, home: Path, check: bool = True, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m vmkit ARGS`` as a user would, with the test's VMKIT_HOME."""
    env = dict(os.environ, VMKIT_HOME=str(home))
    r = subprocess.run(
        [sys.executable, "-m", "vmkit", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    if check and r.returncode != 0:
        raise AssertionError(
            f"vmkit {' '.join(args)} exited {r.returncode}:\n{r.stdout}\n{r.stderr}"
        )
    return r


def guest_busybox_image(tag: str) -> str:
    """A guest shell script that imports a tiny image ``tag`` from the guest's own busybox:
    no registry, and an image of another architecture would fail with "exec format error"."""
    return (
        "set -e; d=$(mktemp -d); mkdir -p $d/bin; cp /bin/busybox $d/bin/; ln -s busybox $d/bin/sh; "
        f"ln -s busybox $d/bin/uname; tar -C $d -c . | docker import - {tag} >/dev/null"
    )
