"""Files read and written once, with their sha256 and size counted on the way.

A 2 GB archive on a USB stick is read exactly once: whatever consumes it (a decompressor,
``tarfile``, dockerd's load) reads through a ``HashingReader``, and the digest is compared
when the last byte has passed. Memory stays flat: nothing is kept but the hash state.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from pathlib import Path
from typing import IO

from vmkit.errors import FileDamaged

CHUNK = 1 << 20


class HashingReader(io.RawIOBase):
    """Reads ``raw``, hashing every byte that passes; ``count`` is the bytes read so far."""

    def __init__(self, raw: IO[bytes], *, on_read: Callable[[int], None] | None = None) -> None:
        self.raw = raw
        self.sha = hashlib.sha256()
        self.count = 0
        self.on_read = on_read

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.raw.read(len(b))
        n = len(data)
        b[:n] = data
        self.sha.update(data)
        self.count += n
        if self.on_read is not None and n:
            self.on_read(n)
        return n

    def drain(self) -> None:
        """Read (and hash) whatever the consumer left unread, up to the end of the file."""
        while self.read(CHUNK):
            pass

    def hexdigest(self) -> str:
        return self.sha.hexdigest()

    def finish(self, name: str, *, size: int, sha256: str) -> None:
        """Read to the end, then ``FileDamaged`` (naming ``name``) unless size and sha256 match."""
        self.drain()
        check_digest(
            name, size=size, sha256=sha256, found_size=self.count, found_sha256=self.hexdigest()
        )


class HashingWriter(io.RawIOBase):
    """Writes to ``raw``, hashing every byte; ``count`` is the bytes written so far."""

    def __init__(self, raw: IO[bytes], *, on_write: Callable[[int], None] | None = None) -> None:
        self.raw = raw
        self.sha = hashlib.sha256()
        self.count = 0
        self.on_write = on_write

    def writable(self) -> bool:
        return True

    def write(self, b: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        n = self.raw.write(b)
        self.sha.update(b)
        self.count += len(b)
        if self.on_write is not None:
            self.on_write(len(b))
        return n if n is not None else len(b)

    def hexdigest(self) -> str:
        return self.sha.hexdigest()


def sha256_file(path: Path, *, on_read: Callable[[int], None] | None = None) -> str:
    """The sha256 of ``path``, read in 1 MiB chunks; ``on_read(n)`` after each chunk."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
            if on_read is not None:
                on_read(len(chunk))
    return h.hexdigest()


def check_digest(name: str, *, size: int, sha256: str, found_size: int, found_sha256: str) -> None:
    """``FileDamaged`` naming ``name`` with expected vs found, unless size and sha256 match."""
    if found_size != size:
        raise FileDamaged(
            f"{name} is {found_size} bytes, the manifest says {size}"
            + (" (cut short)" if found_size < size else "")
        )
    if found_sha256 != sha256:
        raise FileDamaged(
            f"{name} has sha256 {found_sha256[:16]}…, the manifest says {sha256[:16]}… "
            "(same size, different content)"
        )
