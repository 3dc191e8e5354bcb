"""Per-VM SSH identities: a client key for vmkit and a host key for the guest, both made here.

Making the guest's host key on the host means it is known before the first connection, so it
is pinned from the start: no trust-on-first-use, no AutoAddPolicy, no shared insecure key.
"""

from __future__ import annotations

import os
from pathlib import Path

from vmkit.host.runner import run, which


def generate(path: Path, comment: str) -> str:
    """Write a new ed25519 key pair at ``path`` (0600) and ``path.pub``; return the public line."""
    if path.exists():
        path.unlink()
    pub = path.with_name(path.name + ".pub")
    if pub.exists():
        pub.unlink()
    run(
        [which("ssh-keygen"), "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        timeout=30,
    )
    os.chmod(path, 0o600)
    return public_line(path)


def public_line(path: Path) -> str:
    """``"ssh-ed25519 AAAA... comment"`` of the key at ``path``."""
    return path.with_name(path.name + ".pub").read_text(encoding="utf-8").strip()


def key_type_and_blob(public: str) -> str:
    """The ``type base64`` part of a public key line, as pinned in known_hosts."""
    parts = public.split()
    return f"{parts[0]} {parts[1]}"
