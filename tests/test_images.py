"""Image archive streaming on the host: format detection, tar checks, truncation, flat memory."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import lzma
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vmkit.docker import client as docker_client_module
from vmkit.docker import images
from vmkit.errors import FileDamaged, InvalidInput


@pytest.fixture(autouse=True)
def _fake_dockerd(monkeypatch: pytest.MonkeyPatch) -> None:
    # images.load talks to dockerd over the VM's SSH channels (docker_client); the fake VM's
    # client stands in for it.
    monkeypatch.setattr(docker_client_module, "docker_client", lambda vm, **_: vm.client)


def image_tar(path: Path, payload: bytes = b"x" * 5000, name: str = "demo:1") -> bytes:
    """A small archive in `docker save` layout: layer tar, config, manifest.json, repositories."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as t:

        def add(member: str, data: bytes) -> None:
            info = tarfile.TarInfo(member)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))

        add("abc/layer.tar", payload)
        add("cfg.json", b"{}")
        repo, tag = name.split(":")
        add(
            "manifest.json",
            json.dumps(
                [{"Config": "cfg.json", "RepoTags": [name], "Layers": ["abc/layer.tar"]}]
            ).encode(),
        )
        add("repositories", json.dumps({repo: {tag: "abc"}}).encode())
    data = buf.getvalue()
    path.write_bytes(data)
    return data


class FakeAPI:
    """Consumes the body like dockerd would; records what arrived."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.complete = False
        self.timeout = 120.0

    def load_image(self, body: Iterator[bytes]) -> Iterator[dict[str, Any]]:
        for chunk in body:
            self.received += chunk
        self.complete = True
        yield {"stream": "Loaded image: demo:1\n"}


class FakeClient:
    def __init__(self) -> None:
        self.api = FakeAPI()

    def close(self) -> None:
        pass


class FakeVM:
    name = "fake"

    def __init__(self) -> None:
        self.client = FakeClient()

    def docker(self) -> FakeClient:
        return self.client


def load(path: Path) -> tuple[images.LoadResult, FakeVM]:
    vm = FakeVM()
    return images.load(vm, path), vm  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["tar", "gzip", "xz", "zstd"])
def test_every_format_arrives_as_the_same_tar(tmp_path: Path, kind: str) -> None:
    plain = tmp_path / "img.tar"
    data = image_tar(plain, payload=bytes(range(256)) * 4000)
    src = {
        "tar": plain,
        "gzip": tmp_path / "img.tar.gz",
        "xz": tmp_path / "img.tar.xz",
        "zstd": tmp_path / "img.tar.zst",
    }[kind]
    if kind == "gzip":
        src.write_bytes(gzip.compress(data))
    elif kind == "xz":
        src.write_bytes(lzma.compress(data))
    elif kind == "zstd":
        subprocess.run(["zstd", "-q", "-o", str(src), str(plain)], check=True)
    seen: list[tuple[int, int]] = []
    vm = FakeVM()
    result = images.load(vm, src, progress=lambda d, t: seen.append((d, t)))  # type: ignore[arg-type]
    assert bytes(vm.client.api.received) == data
    assert result.images == ["demo:1"]
    assert seen[-1] == (src.stat().st_size, src.stat().st_size)


def test_detect_compression_by_content_not_name(tmp_path: Path) -> None:
    p = tmp_path / "looks-plain.tar"
    p.write_bytes(gzip.compress(image_tar(tmp_path / "x.tar")))
    assert images.detect_compression(p.read_bytes()[:512]) == "gzip"
    with pytest.raises(InvalidInput, match="neither a tar"):
        images.detect_compression(b"PK\x03\x04 a zip file" + bytes(600))


def test_not_a_docker_image_is_refused_before_the_end(tmp_path: Path) -> None:
    p = tmp_path / "photos.tar"
    with tarfile.open(p, "w") as t:
        f = tmp_path / "cat.jpg"
        f.write_bytes(b"\xff\xd8" * 100)
        t.add(f, "cat.jpg")
    with pytest.raises(InvalidInput, match="not a Docker image"):
        load(p)


@pytest.mark.parametrize("cut", [512 * 3, 4000, None])
def test_truncated_tar_never_completes_the_upload(tmp_path: Path, cut: int | None) -> None:
    data = image_tar(tmp_path / "full.tar")
    if cut is None:
        # Cut cleanly after the last member: every header is whole, only the end marker is gone.
        cut = (len(data.rstrip(b"\0")) + 511) // 512 * 512
    p = tmp_path / "cut.tar"
    p.write_bytes(data[:cut])
    vm = FakeVM()
    with pytest.raises(InvalidInput, match=r"cut short|not a Docker image"):
        images.load(vm, p)  # type: ignore[arg-type]
    assert not vm.client.api.complete


@pytest.mark.parametrize("kind", ["gzip", "xz", "zstd"])
def test_truncated_compressed_file_is_refused(tmp_path: Path, kind: str) -> None:
    data = image_tar(tmp_path / "full.tar", payload=bytes(range(256)) * 2000)
    if kind == "gzip":
        packed = gzip.compress(data)
    elif kind == "xz":
        packed = lzma.compress(data)
    else:
        packed = subprocess.run(
            ["zstd", "-q", "-c"], input=data, capture_output=True, check=True
        ).stdout
    p = tmp_path / "cut.bin"
    p.write_bytes(packed[: len(packed) - 20])
    vm = FakeVM()
    with pytest.raises(InvalidInput):
        images.load(vm, p)  # type: ignore[arg-type]
    assert not vm.client.api.complete


def test_missing_file_and_folder_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="does not exist"):
        load(tmp_path / "nope.tar")
    with pytest.raises(InvalidInput, match="folder"):
        load(tmp_path)


def test_tar_check_reads_base256_sizes() -> None:
    field = bytes([0x80]) + (9 << 30).to_bytes(11, "big")
    assert images._tar_size(field) == 9 << 30
    assert images._tar_size(b"00000001750\0") == 1000


def test_memory_stays_flat_for_a_big_stream(tmp_path: Path) -> None:
    """600 MB through gzip decompression and the tar check: peak RSS grows by far less."""
    script = tmp_path / "probe.py"
    script.write_text(
        f"""
import io, resource, tarfile, json, os, gzip, sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from test_images import FakeVM
from vmkit.docker import client, images
client.docker_client = lambda vm, **_: vm.client
src = {str(tmp_path / "big.tar.gz")!r}
# Write the archive streaming: 600 MB of zeros compresses to ~600 KB.
with gzip.open(src, "wb", compresslevel=1) as g, tarfile.open(fileobj=g, mode="w|") as t:
    info = tarfile.TarInfo("layer/layer.tar"); info.size = 600 << 20
    class Zeros(io.RawIOBase):
        left = info.size
        def readable(self): return True
        def readinto(self, b):
            n = min(len(b), self.left); b[:n] = bytes(n); self.left -= n; return n
    t.addfile(info, io.BufferedReader(Zeros(), 1 << 20))
    m = json.dumps([{{"Config": "c", "RepoTags": ["big:1"], "Layers": ["layer/layer.tar"]}}]).encode()
    info = tarfile.TarInfo("manifest.json"); info.size = len(m); t.addfile(info, io.BytesIO(m))
class Count(FakeVM):
    pass
vm = Count()
vm.client.api.load_image = lambda body: ([sum(len(c) for c in body)], [{{"stream": "Loaded image: big:1"}}])[1]
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
r = images.load(vm, src)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"grew_kib": after - before, "tar": r.tar_bytes}}))
"""
    )
    import sys

    out = subprocess.run([sys.executable, str(script)], capture_output=True, check=True, text=True)
    info = json.loads(out.stdout)
    assert info["tar"] > 600 << 20
    assert info["grew_kib"] < 40 * 1024, info


def test_save_refuses_an_unknown_suffix(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match=r"\.tar\.gz"):
        images.save(FakeVM(), "demo:1", tmp_path / "out.rar")  # type: ignore[arg-type]


assert shutil.which("zstd"), "the zstd program is needed for these tests"


def _packed(tmp_path: Path, kind: str) -> Path:
    data = image_tar(tmp_path / "full.tar", payload=bytes(range(256)) * 2000)
    out = tmp_path / f"img.{kind}"
    if kind == "gzip":
        out.write_bytes(gzip.compress(data))
    elif kind == "xz":
        out.write_bytes(lzma.compress(data))
    elif kind == "zstd":
        subprocess.run(["zstd", "-q", "-o", str(out), str(tmp_path / "full.tar")], check=True)
    else:
        out.write_bytes(data)
    return out


@pytest.mark.parametrize("module", [True, False], ids=["zstandard", "zstd-program"])
@pytest.mark.parametrize("kind", ["tar", "gzip", "xz", "zstd"])
def test_expected_digest_is_checked_as_the_file_streams(
    tmp_path: Path, kind: str, module: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not module:
        monkeypatch.setattr(images, "_zstandard", lambda: None)
    p = _packed(tmp_path, kind)
    good = images.Expected("img", p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest())
    vm = FakeVM()
    images.load(vm, p, expect=good)  # type: ignore[arg-type]
    assert vm.client.api.complete
    # Same size, another digest (the file changed after the manifest was written).
    bad = images.Expected("images/img", good.size, "0" * 64)
    vm = FakeVM()
    with pytest.raises(FileDamaged, match=r"^images/img has sha256 \w+…, the manifest says 0000"):
        images.load(vm, p, expect=bad)  # type: ignore[arg-type]
    assert not vm.client.api.complete  # dockerd never got the whole archive


def test_a_flipped_byte_in_compressed_data_names_the_file(tmp_path: Path) -> None:
    p = _packed(tmp_path, "xz")
    expect = images.Expected(
        "images/img.xz", p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest()
    )
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x10
    p.write_bytes(bytes(data))
    vm = FakeVM()
    with pytest.raises(FileDamaged, match=r"^images/img\.xz has sha256"):
        images.load(vm, p, expect=expect)  # type: ignore[arg-type]
    assert not vm.client.api.complete


def test_write_archive_compresses_hashes_and_reads_ids(tmp_path: Path) -> None:
    plain = tmp_path / "img.tar"
    image_tar(plain)
    out = tmp_path / "out.tar.zst"
    p, _, kind = images.open_archive(plain)
    archive = images.write_archive(images.read_archive(p, kind, images.TarCheck()), out)
    assert archive.size == out.stat().st_size
    assert archive.sha256 == hashlib.sha256(out.read_bytes()).hexdigest()
    assert archive.tar_bytes == plain.stat().st_size
    assert archive.info.tags == ["demo:1"]
    vm = FakeVM()
    images.load(vm, out)  # type: ignore[arg-type]
    assert bytes(vm.client.api.received) == plain.read_bytes()


def test_the_load_waits_for_dockerd_longer_for_bigger_files(tmp_path: Path) -> None:
    """dockerd answers after unpacking the layers: minutes under TCG for a 500 MB image."""
    p = _packed(tmp_path, "tar")
    vm = FakeVM()
    images.load(vm, p)  # type: ignore[arg-type]
    assert vm.client.api.timeout >= 300
    assert images._load_timeout(510 << 20) > images._load_timeout(10 << 20) + 900
