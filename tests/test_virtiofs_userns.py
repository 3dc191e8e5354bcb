"""virtio-fs without root: its check probes user namespaces and says why it cannot be used
(then `vmkit share` takes sshfs, printing that reason)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from vmkit.errors import NotSupported
from vmkit.host import fsguard
from vmkit.host.runner import Result
from vmkit.providers.qemu import virtiofs
from vmkit.state import VMRecord


def test_a_host_without_user_namespaces_is_named_as_the_reason(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def refused(argv: list[str], **kw: Any) -> Result:
        assert argv[:2] == ["unshare", "--user"]
        return Result(argv, 1, "", "unshare: unshare failed: Operation not permitted\n", 0.01)

    monkeypatch.setattr(fsguard, "run", refused)
    mech = virtiofs.VirtioFS(VMRecord(name="v", provider="qemu"), ssh=lambda: None)  # type: ignore[arg-type,return-value]
    with pytest.raises(NotSupported, match="does not allow user namespaces") as e:
        mech.check()
    assert "Operation not permitted" in str(e.value) and "sshfs" in (e.value.hint or "")


def test_a_plain_user_may_make_the_namespaces_virtiofsd_runs_in() -> None:
    probe = ["unshare", "--user", "--map-root-user", "--mount", "true"]
    r = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--", *probe],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr


def test_a_plain_users_virtiofsd_starts_confined(tmp_path: Path) -> None:
    """Debian 12's virtiofsd as uid 65534 under fsguard gets as far as waiting for QEMU
    (given a socket path of its own it would need root's /run/virtiofsd)."""
    base = Path(tempfile.mkdtemp(prefix="vmkit-plain-"))
    try:
        base.chmod(0o755)
        src, root = base / "data", base / "virtiofs-x.root"
        for d in (src, root):
            d.mkdir()
            os.chown(d, 65534, 65534)
        os.chown(base, 65534, 65534)
        sock = base / "virtiofs-x.sock"
        server = [virtiofs.find_virtiofsd(), "-f", "-o", f"source={root}", "--rlimit-nofile=0"]
        argv = fsguard.command(
            str(src), root=str(root), listen=str(sock), readonly=True, uid=1000, gid=1000,
            server=server,
        )  # fmt: skip
        plain = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]
        daemon = subprocess.Popen([*plain, *argv], stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 20
            while not (
                sock.exists() and "virtiofsd" in Path(f"/proc/{daemon.pid}/cmdline").read_text()
            ):
                assert daemon.poll() is None, daemon.communicate()[1]
                assert time.monotonic() < deadline
                time.sleep(0.05)
            time.sleep(0.5)
            assert daemon.poll() is None, daemon.communicate()[1]
            assert stat.S_IMODE(sock.stat().st_mode) == 0o600 and sock.stat().st_uid == 65534
        finally:
            daemon.terminate()
            daemon.wait(10)
    finally:
        shutil.rmtree(base, ignore_errors=True)
