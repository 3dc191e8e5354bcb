"""Workshop bundles without a VM: create from files and the box cache, verify, load the box.

Image archives are built on the host (bench/_imagetar.py); the box is a small fake one in a
test cache with a valid manifest. Loading images into a VM is in tests/test_bundles_vm.py.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from tests.imagetar import imagetar as _imagetar
from vmkit import bundles
from vmkit.boxes import store
from vmkit.bundles import manifest
from vmkit.docker import client as docker_client_module
from vmkit.errors import ArchMismatch, FileDamaged, FormatTooNew, InvalidInput, NotEnoughSpace


def make_box(cache: Path, name: str = "mini", arch: str = "amd64", seed: bytes = b"") -> store.Box:
    """A fake built box: three files and a manifest that lists their sha256 and size."""
    folder = cache / "boxes" / name / arch
    folder.mkdir(parents=True)
    files = {}
    for key, size in ((store.KERNEL, 3000), (store.INITRD, 2000), (store.DISK, 300_000)):
        data = hashlib.shake_256(seed + key.encode()).digest(size)
        (folder / key).write_bytes(data)
        files[key] = {"sha256": hashlib.sha256(data).hexdigest(), "size": size}
    (folder / store.MANIFEST).write_text(
        json.dumps({"format": store.FORMAT, "files": files, "cmdline": "root=LABEL=r"})
    )
    return store.find(name, arch)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    c = tmp_path / "cache"
    monkeypatch.setenv("VMKIT_CACHE", str(c))
    monkeypatch.setenv("VMKIT_HOME", str(tmp_path / "home"))
    return c


@pytest.fixture
def sources(tmp_path: Path) -> list[Path]:
    src = tmp_path / "src"
    src.mkdir()
    plain = _imagetar.build(src / "gap.tar", b"\x7fELF fake busybox", "gap:4", filler_mib=2)
    xz = src / "sage.tar.xz"
    tar = _imagetar.build(src / "sage.tar", b"\x7fELF other", "sagemath:10.4", filler_mib=1)
    xz.write_bytes(lzma.compress(tar.read_bytes(), preset=0))
    tar.unlink()
    return [plain, xz]


@pytest.fixture
def made(cache: Path, sources: list[Path], tmp_path: Path) -> bundles.Bundle:
    make_box(cache)
    return bundles.create(
        tmp_path / "usb" / "course", box="mini", images_=[str(p) for p in sources]
    )


def test_create_writes_items_manifest_and_readme(made: bundles.Bundle) -> None:
    data = json.loads((made.dir / "bundle.json").read_text())
    assert data["format"] == manifest.FORMAT and data["arch"] == "amd64"
    kinds = [(i["kind"], i["file"]) for i in data["items"]]
    assert kinds == [
        ("box", "boxes/mini-amd64.tar"),
        ("image", "images/gap.tar.zst"),
        ("image", "images/sage.tar.zst"),
    ]
    for entry in data["items"]:
        path = made.dir / entry["file"]
        assert path.stat().st_size == entry["size"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"]
    images = data["items"][1:]
    assert [i["tags"] for i in images] == [["gap:4"], ["sagemath:10.4"]]
    assert all(len(i["ids"]) == 1 and i["ids"][0].startswith("sha256:") for i in images)
    assert all(i["arch"] == "amd64" and i["tar_size"] > i["size"] // 2 for i in images)
    assert (made.dir / "images" / "gap.tar.zst").read_bytes()[:4] == b"\x28\xb5\x2f\xfd"
    readme = (made.dir / "README.txt").read_text()
    assert "vmkit bundle load" in readme and "image sagemath:10.4" in readme
    assert bundles.verify(made.dir).items == made.items


def test_the_image_id_is_the_config_digest(made: bundles.Bundle, sources: list[Path]) -> None:
    import tarfile

    with tarfile.open(sources[0]) as t:
        entry = json.loads(t.extractfile("manifest.json").read())[0]  # type: ignore[union-attr]
        config = t.extractfile(entry["Config"]).read()  # type: ignore[union-attr]
    assert made.items[1].ids == (f"sha256:{hashlib.sha256(config).hexdigest()}",)


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_verify_names_the_flipped_file(made: bundles.Bundle) -> None:
    target = made.dir / "images" / "sage.tar.zst"
    _flip(target, target.stat().st_size // 2)
    with pytest.raises(FileDamaged, match=r"^images/sage\.tar\.zst has sha256 \w+…, the manifest"):
        bundles.verify(made.dir)


def test_verify_names_missing_and_truncated_files_with_sizes(made: bundles.Bundle) -> None:
    gap = made.dir / "images" / "gap.tar.zst"
    size = gap.stat().st_size
    with open(gap, "r+b") as f:
        f.truncate(size - 100)
    (made.dir / "boxes" / "mini-amd64.tar").unlink()
    with pytest.raises(FileDamaged) as err:
        bundles.verify(made.dir)
    text = str(err.value)
    assert "2 files do not match" in text
    assert "boxes/mini-amd64.tar is missing from the bundle" in text
    assert f"images/gap.tar.zst is {size - 100} bytes, the manifest says {size} (cut short)" in text


def test_a_newer_format_is_refused(made: bundles.Bundle) -> None:
    path = made.dir / "bundle.json"
    data = json.loads(path.read_text())
    data["format"] = manifest.FORMAT + 1
    path.write_text(json.dumps(data))
    with pytest.raises(FormatTooNew, match=f"bundle format {manifest.FORMAT + 1}; this vmkit"):
        bundles.verify(made.dir)
    with pytest.raises(FormatTooNew):
        bundles.load(made.dir)


def test_arch_rules() -> None:
    manifest.require_runnable("i386", "bundle b", runs_on="amd64")
    manifest.require_runnable("amd64", "bundle b", runs_on="amd64")
    with pytest.raises(ArchMismatch, match="is for amd64 and this VM is i386"):
        manifest.require_runnable("amd64", "bundle b", runs_on="i386")
    assert manifest.host_arch("x86_64") == "amd64" and manifest.host_arch("i686") == "i386"
    assert manifest.host_arch("aarch64") == manifest.host_arch("arm64") == "arm64"


def test_an_amd64_bundle_is_refused_on_an_i386_host(
    made: bundles.Bundle, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(platform, "machine", lambda: "i686")
    with pytest.raises(ArchMismatch, match="this host is i386"):
        bundles.load(made.dir)


def test_load_puts_the_box_into_an_empty_cache_then_skips_it(
    made: bundles.Bundle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    only_box = bundles.Bundle(made.dir, 1, "amd64", "", made.items[:1])
    manifest.write(only_box)
    monkeypatch.setenv("VMKIT_CACHE", str(tmp_path / "other cache"))
    seen: list[tuple[int, int, str]] = []
    report = bundles.load(made.dir, progress=lambda d, t, w: seen.append((d, t, w)))
    assert report.loaded == ["box mini (amd64)"] and report.skipped == []
    box = store.find("mini", "amd64")
    store.verify(box)
    assert seen[-1][0] == seen[-1][1] == made.items[0].size
    again = bundles.load(made.dir)
    assert again.loaded == [] and again.skipped == ["box mini (amd64)"]


@pytest.mark.parametrize("where", ["header", "disk", "padding"])
def test_a_damaged_box_archive_leaves_no_box(
    made: bundles.Bundle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    manifest.write(bundles.Bundle(made.dir, 1, "amd64", "", made.items[:1]))
    monkeypatch.setenv("VMKIT_CACHE", str(tmp_path / "other cache"))
    archive = made.dir / "boxes" / "mini-amd64.tar"
    # A tar header, the disk's data, or the zero blocks after the last member, which only
    # the whole file's digest covers.
    offset = {"header": 100, "disk": archive.stat().st_size // 2, "padding": -10}[where]
    _flip(archive, offset)
    with pytest.raises(FileDamaged, match=r"boxes/mini-amd64\.tar has sha256"):
        bundles.load(made.dir)
    assert not (tmp_path / "other cache" / "boxes" / "mini" / "amd64").exists()
    assert list((tmp_path / "other cache" / "boxes" / "mini").iterdir()) == [
        tmp_path / "other cache" / "boxes" / "mini" / ".amd64.lock"
    ]


def test_load_says_how_much_space_is_needed(
    made: bundles.Bundle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vmkit.bundles import loading as load_mod

    manifest.write(bundles.Bundle(made.dir, 1, "amd64", "", made.items[:1]))
    monkeypatch.setenv("VMKIT_CACHE", str(tmp_path / "other cache"))
    monkeypatch.setattr(load_mod.shutil, "disk_usage", lambda p: type("U", (), {"free": 1000})())
    with pytest.raises(NotEnoughSpace, match=r"the box cache .* need 0 MiB and 0 MiB are free"):
        bundles.load(made.dir)


def test_create_refuses_a_used_folder_and_leaves_nothing_on_failure(
    cache: Path, sources: list[Path], tmp_path: Path
) -> None:
    used = tmp_path / "used"
    used.mkdir()
    (used / "x").write_text("mine")
    with pytest.raises(InvalidInput, match="is not an empty folder"):
        bundles.create(used, images_=[str(sources[0])])
    assert [p.name for p in used.iterdir()] == ["x"]
    bad = tmp_path / "bad.tar"
    bad.write_bytes(
        sources[0].read_bytes()[: sources[0].stat().st_size // 2]
    )  # cut short: no end-of-archive
    with pytest.raises(InvalidInput, match="cut short"):
        bundles.create(tmp_path / "new", images_=[str(sources[0]), str(bad)])
    assert not (tmp_path / "new").exists()


def test_image_names_and_files_are_told_apart() -> None:
    from vmkit.bundles.make import is_image_file

    assert not is_image_file("ghcr.io/sagemath/sage:10.4")
    assert not is_image_file("sagemath:10.4")
    assert is_image_file("./gap.tar.xz") and is_image_file("gap.tar.zst")
    assert is_image_file("/media/usb/x") and is_image_file("~/img.tgz")


def test_an_image_name_needs_a_vm(cache: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match=r"image sagemath:10\.4 is not a file, and no VM"):
        bundles.create(tmp_path / "b", images_=["sagemath:10.4"])


def test_cli_verify_prints_one_line_error(made: bundles.Bundle) -> None:
    _flip(made.dir / "images" / "gap.tar.zst", 1000)
    r = subprocess.run(
        [sys.executable, "-m", "vmkit", "bundle", "verify", str(made.dir)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 1
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "images/gap.tar.zst has sha256" in lines[0], r.stderr


class _FakeAPI:
    """dockerd as the bundle load sees it: image ids, tags, info, load_image."""

    def __init__(self, ids: set[str]) -> None:
        self.ids = ids
        self.tags: list[tuple[str, str, str]] = []
        self.loaded: list[int] = []
        self.timeout = 120.0

    def images(self, quiet: bool, all: bool) -> list[str]:
        return sorted(self.ids)

    def tag(self, image: str, repo: str, tag: str) -> None:
        self.tags.append((image, repo, tag))

    def load_image(self, body: object) -> list[dict[str, str]]:
        self.loaded.append(sum(len(c) for c in body))  # type: ignore[attr-defined]
        return [{"stream": "Loaded image: x:1\n"}]


class _FakeClient:
    def __init__(self, api: _FakeAPI) -> None:
        self.api = api

    def info(self) -> dict[str, str]:
        return {"DockerRootDir": "/var/lib/docker"}

    def close(self) -> None:
        pass


class _FakeVM:
    name = "lab"

    def __init__(self, ids: set[str], free_kib: int) -> None:
        self.api = _FakeAPI(ids)
        self.record = type("R", (), {"arch": "amd64"})()
        self.free_kib = free_kib

    def docker(self) -> _FakeClient:
        return _FakeClient(self.api)

    def require_running(self) -> None:
        pass

    def run(self, argv: list[str]) -> object:
        out = f"Filesystem 1024-blocks Used Available Capacity Mounted\n/dev/vda 1 1 {self.free_kib} 1% /\n"
        return type("Res", (), {"stdout": out})()


@pytest.fixture(autouse=True)
def _fake_dockerd(monkeypatch: pytest.MonkeyPatch) -> None:
    # Loads talk to dockerd over the VM's SSH channels (docker_client), not vm.docker().
    monkeypatch.setattr(docker_client_module, "docker_client", lambda vm, **_: vm.docker())


def test_load_sends_absent_images_and_retags_present_ones(made: bundles.Bundle) -> None:
    small, big = made.items[1], made.items[2]
    vm = _FakeVM(set(small.ids), free_kib=1 << 30)
    report = bundles.load(made.dir, vm=vm)  # type: ignore[arg-type]
    assert report.skipped == ["box mini (amd64)", small.label]
    assert report.loaded == [big.label]
    assert report.bytes == big.size
    assert len(vm.api.loaded) == 1 and vm.api.loaded[0] == big.tar_size
    assert vm.api.tags == [(small.ids[0], "gap", "4")]


def test_load_says_how_much_the_vm_disk_lacks_before_sending(made: bundles.Bundle) -> None:
    vm = _FakeVM(set(), free_kib=64)
    with pytest.raises(
        NotEnoughSpace,
        match=r"the images need \d+ MiB in VM 'lab' \(/var/lib/docker\) and 0 MiB are free",
    ):
        bundles.load(made.dir, vm=vm)  # type: ignore[arg-type]
    assert vm.api.loaded == []
