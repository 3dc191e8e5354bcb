"""Test doubles other tools (and vmkit's own tests) can import: no VM, no network needed."""

from __future__ import annotations

from vmkit.testing.fake_ssh import Call, FakeSSHSession

__all__ = ["Call", "FakeSSHSession"]
