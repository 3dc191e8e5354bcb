"""`vmkit attach ssh://...` pins a host key only from known_hosts, a fingerprint, or an
explicit --trust-new-host-key (vmkit/providers/sshhost.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from vmkit.errors import HostKeyMismatch, HostKeyUnknown
from vmkit.providers import sshhost


def _public_key() -> str:
    raw = (
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    )
    return raw.decode()


OFFERED, OTHER = _public_key(), _public_key()
URL = "ssh://ann@127.0.0.1:2222"


@pytest.fixture
def key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(sshhost, "fetch_host_key", lambda host, port: OFFERED)
    k = tmp_path / "id"
    k.write_text("private")
    return k


def test_an_unknown_host_is_refused_showing_its_fingerprint(key: Path, tmp_path: Path) -> None:
    with pytest.raises(HostKeyUnknown) as e:
        sshhost.endpoint_for(URL, key, known_hosts=tmp_path / "none")
    assert sshhost.fingerprint(OFFERED) in str(e.value)
    assert "--fingerprint" in (e.value.hint or "") and "--trust-new-host-key" in (
        e.value.hint or ""
    )


def test_a_fingerprint_or_explicit_trust_pins_the_offered_key(key: Path, tmp_path: Path) -> None:
    none = tmp_path / "none"
    ep = sshhost.endpoint_for(
        URL, key, known_hosts=none, expected_fingerprint=sshhost.fingerprint(OFFERED)
    )
    assert ep.host_key == OFFERED
    with pytest.raises(HostKeyMismatch):
        sshhost.endpoint_for(
            URL, key, known_hosts=none, expected_fingerprint=sshhost.fingerprint(OTHER)
        )
    assert sshhost.endpoint_for(URL, key, known_hosts=none, trust_new_host_key=True).host_key == (
        OFFERED
    )


def test_a_known_hosts_entry_pins_without_flags(key: Path, tmp_path: Path) -> None:
    kh = tmp_path / "known_hosts"
    kh.write_text(f"[127.0.0.1]:2222 {OFFERED}\n")
    assert sshhost.endpoint_for(URL, key, known_hosts=kh).host_key == OFFERED
    kh.write_text(f"[127.0.0.1]:2222 {OTHER}\n")
    with pytest.raises(HostKeyMismatch):
        sshhost.endpoint_for(URL, key, known_hosts=kh, trust_new_host_key=True)
