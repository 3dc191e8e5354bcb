"""Build `docker save`-format image archives on the host, with no registry and no dockerd."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

APPLETS = ["sh", "ls", "cat", "echo", "httpd", "sleep", "true", "wc", "sha256sum", "head"]


class _Hashing(io.RawIOBase):
    def __init__(self, f: io.BufferedWriter) -> None:
        self.f = f
        self.sha = hashlib.sha256()

    def writable(self) -> bool:
        return True

    def write(self, b: bytes) -> int:  # type: ignore[override]
        self.sha.update(b)
        return self.f.write(b)


def build(out: Path, busybox: bytes, name: str, *, filler_mib: int = 0) -> Path:
    """Write image ``name`` (busybox + applet links + ``/filler.bin`` random MiB) to ``out``."""
    work = out.with_suffix(".layer.tar")
    with open(work, "wb") as raw:
        h = _Hashing(raw)  # type: ignore[arg-type]
        with tarfile.open(fileobj=h, mode="w|", format=tarfile.PAX_FORMAT) as t:  # type: ignore[call-overload]
            for d in ("bin", "tmp", "www"):
                info = tarfile.TarInfo(d)
                info.type = tarfile.DIRTYPE
                info.mode = 0o1777 if d == "tmp" else 0o755
                t.addfile(info)
            info = tarfile.TarInfo("bin/busybox")
            info.size = len(busybox)
            info.mode = 0o755
            t.addfile(info, io.BytesIO(busybox))
            for a in APPLETS:
                link = tarfile.TarInfo(f"bin/{a}")
                link.type = tarfile.SYMTYPE
                link.linkname = "busybox"
                t.addfile(link)
            if filler_mib:
                info = tarfile.TarInfo("filler.bin")
                info.size = filler_mib << 20
                t.addfile(info, _Random(info.size))
        diff_id = "sha256:" + h.sha.hexdigest()
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Cmd": ["sh"], "Env": ["PATH=/bin"]},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            "history": [{"created_by": "vmkit test image"}],
        }
    ).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    layer_dir = diff_id.split(":")[1]
    repo, tag = name.rsplit(":", 1)
    with tarfile.open(out, "w", format=tarfile.USTAR_FORMAT) as t:
        t.add(work, f"{layer_dir}/layer.tar")
        for member, data in (
            (config_name, config),
            (
                "manifest.json",
                json.dumps(
                    [
                        {
                            "Config": config_name,
                            "RepoTags": [name],
                            "Layers": [f"{layer_dir}/layer.tar"],
                        }
                    ]
                ).encode(),
            ),
            ("repositories", json.dumps({repo: {tag: layer_dir}}).encode()),
        ):
            info = tarfile.TarInfo(member)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    work.unlink()
    return out


class _Random(io.RawIOBase):
    """Incompressible bytes, made fast: a 1 MiB random block re-hashed per MiB."""

    def __init__(self, size: int) -> None:
        self.left = size
        self.seed = os.urandom(32)
        self.n = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray) -> int:  # type: ignore[override]
        n = min(len(b), self.left, 1 << 16)
        if n <= 0:
            return 0
        block = hashlib.shake_256(self.seed + self.n.to_bytes(8, "big")).digest(n)
        self.n += 1
        b[:n] = block
        self.left -= n
        return n
