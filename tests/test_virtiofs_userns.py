"""virtio-fs without root: its check probes user namespaces and says why it cannot be used
(then `vmkit share` takes sshfs, printing that reason)."""

from __future__ import annotations

import subprocess
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
