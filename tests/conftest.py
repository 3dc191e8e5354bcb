"""Shared fixtures. Real-VM fixtures live in tests/vmfixtures.py (one booted VM per session)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

pytest_plugins = ["tests.vmfixtures", "tests.conftest_vbox"]


@pytest.fixture
def vmkit_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty VMKIT_HOME for one test."""
    home = tmp_path / "vmkit-home"
    home.mkdir()
    monkeypatch.setenv("VMKIT_HOME", str(home))
    yield home
