"""Bundles against the session's real VM: images saved from its Docker, loaded back, skipped by
id, an interrupted load resumed, a flipped byte refused, a too-small disk said up front.

Small images only (a few MiB); the 500 MB measurement is bench/bundle.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import vmkit.vm as api
from tests.imagetar import imagetar as _imagetar
from vmkit import bundles
from vmkit.errors import FileDamaged, NotEnoughSpace

pytestmark = pytest.mark.vm

TAGS = ("vmkit-bundle-a:1", "vmkit-bundle-b:1")


@pytest.fixture(scope="module")
def course(_session_vm: api.VM, tmp_path_factory: pytest.TempPathFactory) -> bundles.Bundle:
    vm = _session_vm
    chan = vm.ssh().open_channel(["cat", "/bin/busybox"])
    busybox = bytearray()
    while chunk := chan.recv(1 << 16):
        busybox += chunk
    src = tmp_path_factory.mktemp("src")
    for tag, mib in zip(TAGS, (2, 24), strict=True):
        tar = _imagetar.build(src / f"{mib}.tar", bytes(busybox), tag, filler_mib=mib)
        from vmkit.docker import images

        images.load(vm, tar)
    return bundles.create(tmp_path_factory.mktemp("usb") / "course", images_=TAGS, vm=vm)


def _ids(vm: api.VM) -> set[str]:
    client = vm.docker()
    try:
        return {str(i) for i in client.api.images(quiet=True, all=True)}
    finally:
        client.close()


def _remove(vm: api.VM) -> None:
    vm.run(["docker", "rmi", "-f", *TAGS], check=False)


def test_saved_from_the_vm_with_ids(vm: api.VM, course: bundles.Bundle) -> None:
    assert [i.tags for i in course.items] == [(TAGS[0],), (TAGS[1],)]
    assert all(set(i.ids) <= _ids(vm) for i in course.items)
    assert course.items[1].tar_size > 24 << 20
    bundles.verify(course.dir)


def test_load_skip_and_resume(vm: api.VM, course: bundles.Bundle) -> None:
    _remove(vm)
    assert not any(set(i.ids) & _ids(vm) for i in course.items)

    def pull_the_stick(done: int, total: int, what: str) -> None:
        if what == course.items[1].label and done > course.items[0].size + (4 << 20):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        bundles.load(course.dir, vm=vm, progress=pull_the_stick)
    have = _ids(vm)
    assert set(course.items[0].ids) <= have
    assert not set(course.items[1].ids) & have  # nothing half-loaded is tagged

    sent: list[str] = []
    report = bundles.load(course.dir, vm=vm, progress=lambda d, t, w: sent.append(w))
    assert report.skipped == [course.items[0].label]
    assert report.loaded == [course.items[1].label]
    assert set(sent) <= {course.items[1].label, "done"}  # the finished item is not sent again
    assert report.bytes == course.items[1].size

    # Only the tag gone (another tag keeps the image): skipped by id, the tag put back.
    vm.run(["docker", "tag", TAGS[0], "vmkit-bundle-keep:1"])
    vm.run(["docker", "rmi", TAGS[0]])
    again = bundles.load(course.dir, vm=vm)
    assert again.loaded == [] and again.bytes == 0
    listed = vm.run(["docker", "images", "--format", "{{.Repository}}:{{.Tag}}"]).stdout.split()
    assert TAGS[0] in listed
    vm.run(["docker", "rmi", "vmkit-bundle-keep:1"])


def test_a_flipped_byte_is_refused_and_nothing_is_tagged(
    vm: api.VM, course: bundles.Bundle, tmp_path: Path
) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(course.dir, copy)
    target = copy / course.items[1].file
    data = bytearray(target.read_bytes())
    data[len(data) // 3] ^= 0x40
    target.write_bytes(bytes(data))
    with pytest.raises(FileDamaged, match=course.items[1].file):
        bundles.verify(copy)
    _remove(vm)
    with pytest.raises(FileDamaged, match=f"^{course.items[1].file} has sha256"):
        bundles.load(copy, vm=vm)
    assert set(course.items[0].ids) <= _ids(vm)  # the good one before it went in
    assert not set(course.items[1].ids) & _ids(vm)


def test_a_full_vm_disk_is_said_before_starting(
    vm: api.VM, course: bundles.Bundle, tmp_path: Path
) -> None:
    import shutil

    copy = tmp_path / "big"
    shutil.copytree(course.dir, copy)
    data = json.loads((copy / "bundle.json").read_text())
    data["items"][1]["tar_size"] = 1 << 40
    (copy / "bundle.json").write_text(json.dumps(data))
    _remove(vm)
    with pytest.raises(NotEnoughSpace, match=r"the images need \d+ MiB in VM .* MiB are free"):
        bundles.load(copy, vm=vm)
    assert not any(set(i.ids) & _ids(vm) for i in course.items)  # nothing was sent
