"""The box builder with the expensive programs faked: recipe, manifest, verify, atomic build."""

from __future__ import annotations

import json
import os
import re
import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from vmkit import resources
from vmkit.boxes import store as boxes
from vmkit.errors import BoxBuildFailed, BoxCorrupt, BoxNotFound, InvalidInput, ToolMissing
from vmkit.host.runner import Result, classify

KVER = "6.1.0-99-amd64"
RECIPE = boxes.recipes_dir() / "vmkit-mini"

# A tiny module tree: virtio_blk needs virtio_ring; fuse needs nothing; the sound and drm
# modules are not in the recipe's keep list and must go.
MODULES = {
    "kernel/drivers/block/virtio_blk.ko": ["kernel/drivers/virtio/virtio_ring.ko"],
    "kernel/drivers/virtio/virtio_ring.ko": [],
    "kernel/fs/fuse/fuse.ko": [],
    "kernel/sound/core/snd.ko": ["kernel/sound/core/snd-timer.ko"],
    "kernel/sound/core/snd-timer.ko": [],
    "kernel/drivers/gpu/drm/drm.ko": [],
}


class FakeTools:
    """Stands in for mmdebstrap, chroot, mkfs.ext4 and qemu-img; records every argv."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.fail_on: str | None = None
        self.interrupt_on: str | None = None

    def run(self, argv: Sequence[str], **_: Any) -> Result:
        args = [os.fspath(a) for a in argv]
        assert not isinstance(argv, str)
        self.calls.append(args)
        tool = Path(args[0]).name
        if tool == self.interrupt_on:
            raise KeyboardInterrupt
        if tool == self.fail_on:
            raise BoxBuildFailed(f"{tool} failed (fake)")
        if tool == "mmdebstrap":
            make_fake_tree(Path(args[-4]))
        elif tool == "mkfs.ext4":
            rootfs = Path(args[args.index("-d") + 1])
            Path(args[-2]).write_bytes(b"ext4:" + str(sorted(rootfs.rglob("*"))).encode())
        elif tool == "qemu-img":
            Path(args[-1]).write_bytes(b"qcow2:" + Path(args[-2]).read_bytes())
        return Result(argv=args, exit_code=0, stdout="", stderr="", duration=0.0)

    def tool_calls(self, name: str) -> list[list[str]]:
        return [c for c in self.calls if Path(c[0]).name == name]


def make_fake_tree(root: Path) -> None:
    (root / "boot").mkdir(parents=True)
    (root / "boot" / f"vmlinuz-{KVER}").write_bytes(b"kernel")
    (root / "boot" / f"initrd.img-{KVER}").write_bytes(b"initrd")
    moddir = root / "lib" / "modules" / KVER
    for rel in MODULES:
        (moddir / rel).parent.mkdir(parents=True, exist_ok=True)
        (moddir / rel).write_bytes(b"\x7fELF")
    (moddir / "modules.dep").write_text(
        "".join(f"{m}: {' '.join(d)}\n" for m, d in MODULES.items())
    )
    status = root / "var" / "lib" / "dpkg" / "status"
    status.parent.mkdir(parents=True)
    status.write_text(
        "Package: docker.io\nStatus: install ok installed\nArchitecture: amd64\n"
        "Version: 20.10.24+dfsg1-1+b3\n\n"
        "Package: gone\nStatus: deinstall ok config-files\nVersion: 1\n\n"
        "Package: busybox-static\nStatus: install ok installed\nVersion: 1:1.35.0-4+b3\n"
        "Description: x\n continued: line\n"
    )


@pytest.fixture()
def fake(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeTools:
    tools = FakeTools()
    monkeypatch.setenv("VMKIT_CACHE", str(tmp_path / "cache dir ü"))
    monkeypatch.setattr(boxes, "run", tools.run)
    monkeypatch.setattr(boxes, "which", lambda program, package=None: f"/usr/bin/{program}")
    monkeypatch.setattr(boxes.os, "geteuid", lambda: 0)
    monkeypatch.setattr(boxes.time, "sleep", lambda s: None)
    return tools


def progress_log() -> tuple[list[str], Callable[[str], None]]:
    lines: list[str] = []
    return lines, lines.append


# --- recipe ---------------------------------------------------------------------------------


def test_vmkit_mini_recipe_parses() -> None:
    recipe = boxes.load_recipe("vmkit-mini")
    assert recipe.name == "vmkit-mini"
    assert "root=LABEL=vmkit-root" in recipe.cmdline.split()
    assert "apparmor=0" in recipe.cmdline.split()
    assert recipe.root_label == "vmkit-root"
    for pkg in ("openssh-server", "docker.io", "containerd", "sshfs", "fuse3", "busybox-static"):
        assert pkg in recipe.packages
    assert recipe.packages_for("amd64")[-1] == "linux-image-amd64"
    assert recipe.packages_for("i386")[-1] == "linux-image-686"
    assert any("bookworm-security" in m for m in recipe.mirrors_for("amd64"))
    assert recipe.mirrors_for("i386") and recipe.mirrors_for("i386") != recipe.mirrors
    assert len(recipe.sha256) == 64


def test_recipe_hooks_are_executable_and_guest_files_keep_the_contract() -> None:
    hooks = sorted(p.name for p in (RECIPE / "hooks").iterdir())
    assert hooks and all(os.access(RECIPE / "hooks" / h, os.X_OK) for h in hooks)
    assert all(h.startswith(("setup", "extract", "essential", "customize")) for h in hooks)
    rootfs = RECIPE / "rootfs"
    sshd = (rootfs / "etc/ssh/sshd_config.d/vmkit.conf").read_text()
    assert "PasswordAuthentication no" in sshd
    assert "KbdInteractiveAuthentication no" in sshd
    assert "NOPASSWD: ALL" in (rootfs / "etc/sudoers.d/vmkit").read_text()
    assert "LABEL=vmkit-root" in (rootfs / "etc/fstab").read_text()
    assert "Name=eth* en*" in (rootfs / "etc/systemd/network/80-vmkit-dhcp.network").read_text()
    # The initrd installs the seed's identity; the unit only makes a key when there was none.
    seed_unit = (rootfs / "etc/systemd/system/vmkit-seed.service").read_text()
    assert "Before=ssh.service" in seed_unit and "ssh-keygen -A" in seed_unit
    assert os.access(RECIPE / "initrd" / "seed", os.X_OK)
    # No host keys or authorized keys are ever part of the recipe.
    assert not list(rootfs.rglob("ssh_host_*")) and not list(rootfs.rglob("authorized_keys"))


def test_recipe_digest_changes_with_content(tmp_path: Path) -> None:
    (tmp_path / "a").write_text("one")
    first = boxes.recipe_digest(tmp_path)
    (tmp_path / "a").write_text("two")
    assert boxes.recipe_digest(tmp_path) != first


def _minimal(**over: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "demo",
        "description": "d",
        "version": 1,
        "suite": "bookworm",
        "mirrors": ["deb http://deb.debian.org/debian bookworm main"],
        "variant": "minbase",
        "image_size_mib": 1024,
        "root_label": "vmkit-root",
        "cmdline": "root=LABEL=vmkit-root rw",
        "packages": ["systemd-sysv"],
        "keep_modules": ["fs/ext4"],
        "arch": {"amd64": {"kernel_package": "linux-image-amd64"}},
    }
    data.update(over)
    return {k: v for k, v in data.items() if v is not None}


def test_parse_recipe_accepts_a_minimal_recipe(tmp_path: Path) -> None:
    folder = tmp_path / "demo"
    folder.mkdir()
    recipe = boxes.parse_recipe(_minimal(), folder)
    assert recipe.disk_compression == "zstd"
    assert recipe.path_exclude == ()
    with pytest.raises(InvalidInput, match="i386"):
        recipe.packages_for("i386")


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ({"name": "other"}, "name"),
        ({"cmdline": "root=/dev/vda rw"}, "cmdline"),
        ({"root_label": "x" * 17}, "root_label"),
        ({"image_size_mib": -1}, "image_size_mib"),
        ({"image_size_mib": "8G"}, "image_size_mib"),
        ({"packages": []}, "packages"),
        ({"packages": ["a,b"]}, "packages"),
        ({"suite": None}, "suite"),
        ({"arch": {"arm7": {"kernel_package": "k"}}}, "arch.arm7"),
        ({"arch": {"amd64": {}}}, "arch.amd64.kernel_package"),
        ({"disk_compression": "lz4"}, "disk_compression"),
        ({"arch": {"amd64": {"kernel_package": "k", "mirrors": []}}}, "arch.amd64.mirrors"),
    ],
)
def test_parse_recipe_names_the_bad_key(tmp_path: Path, override: dict[str, Any], key: str) -> None:
    folder = tmp_path / "demo"
    folder.mkdir()
    with pytest.raises(InvalidInput, match=f"'{key}'"):
        boxes.parse_recipe(_minimal(**override), folder)


def test_unknown_recipe_lists_known_ones() -> None:
    with pytest.raises(BoxNotFound, match="no box recipe named 'nope'") as info:
        boxes.load_recipe("nope")
    assert "vmkit-mini" in (info.value.hint or "")


def test_bad_names_and_arches_are_refused() -> None:
    with pytest.raises(InvalidInput):
        boxes.box_dir("../etc", "amd64")
    with pytest.raises(InvalidInput, match="s390x"):
        boxes.box_dir("vmkit-mini", "s390x")


# --- helpers ---------------------------------------------------------------------------------


def test_trim_modules_keeps_prefixes_and_their_dependencies(tmp_path: Path) -> None:
    make_fake_tree(tmp_path)
    moddir = tmp_path / "lib" / "modules" / KVER
    kept, dropped = boxes.trim_modules(moddir, ["drivers/block", "fs/fuse/fuse.ko"])
    left = sorted(p.relative_to(moddir).as_posix() for p in moddir.rglob("*.ko"))
    assert left == [
        "kernel/drivers/block/virtio_blk.ko",
        "kernel/drivers/virtio/virtio_ring.ko",
        "kernel/fs/fuse/fuse.ko",
    ]
    assert (kept, dropped) == (3, 3)
    assert not (moddir / "kernel" / "sound").exists()


def test_installed_packages_reads_dpkg_status(tmp_path: Path) -> None:
    make_fake_tree(tmp_path)
    pkgs = boxes.installed_packages(tmp_path / "var/lib/dpkg/status")
    assert pkgs == {"busybox-static": "1:1.35.0-4+b3", "docker.io": "20.10.24+dfsg1-1+b3"}


# --- build, find, verify, remove -------------------------------------------------------------


def test_build_makes_a_verified_box(fake: FakeTools) -> None:
    lines, progress = progress_log()
    box = boxes.build("vmkit-mini", "amd64", progress=progress)

    assert box.dir == boxes.box_dir("vmkit-mini", "amd64")
    assert box.kernel.read_bytes() == b"kernel" and box.initrd.read_bytes() == b"initrd"
    assert box.cmdline == boxes.load_recipe("vmkit-mini").cmdline
    m = box.manifest
    assert m["kernel_version"] == KVER and m["arch"] == "amd64"
    assert m["packages"]["docker.io"] == "20.10.24+dfsg1-1+b3"
    assert m["files"]["disk.qcow2"]["sha256"] == boxes.sha256_file(box.disk)
    assert m["files"]["disk.qcow2"]["virtual_size"] == 8192 * 1024 * 1024
    assert m["recipe_sha256"] == boxes.load_recipe("vmkit-mini").sha256
    boxes.verify(box)
    # Only the finished box is left: no rootfs, no raw image, no build folder.
    assert sorted(p.name for p in box.dir.iterdir()) == sorted(
        ["disk.qcow2", "initrd.img", "manifest.json", "vmlinuz"]
    )
    assert [p.name for p in box.dir.parent.iterdir() if not p.name.endswith(".lock")] == ["amd64"]
    assert len(lines) >= 4 and all(line for line in lines)

    (mmdebstrap,) = fake.tool_calls("mmdebstrap")
    assert "--mode=root" in mmdebstrap and "--arch=amd64" in mmdebstrap
    assert f"--hook-dir={RECIPE / 'hooks'}" in mmdebstrap
    include = next(a for a in mmdebstrap if a.startswith("--include="))
    assert "docker.io" in include and "linux-image-amd64" in include
    recipe = boxes.load_recipe("vmkit-mini")
    assert mmdebstrap[-len(recipe.mirrors) :] == list(recipe.mirrors_for("amd64"))
    assert mmdebstrap[-len(recipe.mirrors) - 2] == recipe.suite
    (mkfs,) = fake.tool_calls("mkfs.ext4")
    assert mkfs[mkfs.index("-L") + 1] == "vmkit-root"
    (depmod,) = fake.tool_calls("chroot")
    assert depmod[2:] == ["depmod", "-a", KVER]


def test_build_is_cached_unless_forced(fake: FakeTools) -> None:
    first = boxes.build()
    calls = len(fake.calls)
    assert boxes.build() == first
    assert boxes.ensure() == first
    assert len(fake.calls) == calls
    again = boxes.build(force=True)
    assert len(fake.tool_calls("mmdebstrap")) == 2
    assert again.manifest["built_at"] and again.dir == first.dir


def test_verify_detects_a_corrupt_file(fake: FakeTools) -> None:
    box = boxes.build()
    data = bytearray(box.disk.read_bytes())
    data[-1] ^= 0xFF
    box.disk.write_bytes(bytes(data))
    with pytest.raises(BoxCorrupt, match=r"disk\.qcow2"):
        boxes.verify(box)
    box.initrd.unlink()
    with pytest.raises(BoxCorrupt, match=r"initrd\.img"):
        boxes.find()


def test_unreadable_or_old_manifest_is_corrupt(fake: FakeTools) -> None:
    box = boxes.build()
    manifest = box.dir / boxes.MANIFEST
    data = json.loads(manifest.read_text())
    data["format"] = 0
    manifest.write_text(json.dumps(data))
    with pytest.raises(BoxCorrupt, match="another vmkit version"):
        boxes.find()
    manifest.write_text("{not json")
    with pytest.raises(BoxCorrupt, match="unreadable"):
        boxes.find()
    assert boxes.list_boxes() == []


@pytest.mark.parametrize("step", ["mmdebstrap", "chroot", "mkfs.ext4", "qemu-img"])
def test_interrupted_build_leaves_no_box(fake: FakeTools, step: str) -> None:
    fake.interrupt_on = step
    with pytest.raises(KeyboardInterrupt):
        boxes.build()
    with pytest.raises(BoxNotFound, match="not built"):
        boxes.find()
    parent = boxes.box_dir("vmkit-mini", "amd64").parent
    assert [p.name for p in parent.iterdir() if not p.name.endswith(".lock")] == []


def test_failed_forced_rebuild_keeps_the_old_box(fake: FakeTools) -> None:
    old = boxes.build()
    fake.fail_on = "qemu-img"
    with pytest.raises(BoxBuildFailed):
        boxes.build(force=True)
    assert boxes.find() == old
    boxes.verify(boxes.find())


def test_crash_leftovers_are_ignored_then_cleaned(fake: FakeTools) -> None:
    parent = boxes.box_dir("vmkit-mini", "amd64").parent
    leftover = parent / ".amd64.build-dead"
    leftover.mkdir(parents=True)
    (leftover / boxes.MANIFEST).write_text("{}")
    with pytest.raises(BoxNotFound):
        boxes.find()
    assert boxes.list_boxes() == []
    boxes.build()
    assert not leftover.exists()


def test_list_and_remove(fake: FakeTools) -> None:
    assert boxes.list_boxes() == []
    box = boxes.build()
    assert boxes.list_boxes() == [box]
    boxes.remove("vmkit-mini", "amd64")
    assert boxes.list_boxes() == []
    with pytest.raises(BoxNotFound):
        boxes.remove("vmkit-mini", "amd64")


def test_building_needs_root(fake: FakeTools, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(boxes.os, "geteuid", lambda: 1000)
    with pytest.raises(BoxBuildFailed, match="needs root") as info:
        boxes.build()
    assert "sudo" in (info.value.hint or "")
    assert fake.calls == []


def test_missing_tool_names_the_package(
    fake: FakeTools, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.undo()
    monkeypatch.setenv("VMKIT_CACHE", str(tmp_path))
    monkeypatch.setattr(
        "vmkit.host.runner.shutil.which",
        lambda program, *a, **k: None if program == "mmdebstrap" else f"/usr/bin/{program}",
    )
    with pytest.raises(ToolMissing, match="mmdebstrap") as info:
        boxes.build()
    assert "apt-get install mmdebstrap" in str(info.value)


def test_i386_needs_arch_test(fake: FakeTools, monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[str] = []

    def which(program: str, package: str | None = None) -> str:
        asked.append(program)
        if program == "arch-test":
            raise ToolMissing("arch-test", package="arch-test")
        return f"/usr/bin/{program}"

    monkeypatch.setattr(boxes, "which", which)
    monkeypatch.setattr(boxes, "host_arch", lambda: "amd64")
    with pytest.raises(ToolMissing, match="arch-test"):
        boxes.build("vmkit-mini", "i386")
    assert "arch-test" in asked


def test_mirror_hiccup_is_retried_once(fake: FakeTools, monkeypatch: pytest.MonkeyPatch) -> None:
    real = fake.run
    failures = [1]

    def flaky(argv: Sequence[str], **kw: Any) -> Result:
        if Path(argv[0]).name == "mmdebstrap" and failures:
            failures.pop()
            err = classify(
                Result(list(argv), 1, "", "E: File has unexpected size (123 != 456)", 0.0),
                boxes._MMDEBSTRAP_RULES,
            )
            assert err is not None
            raise err
        return real(argv, **kw)

    monkeypatch.setattr(boxes, "run", flaky)
    boxes.build()
    boxes.verify(boxes.find())


def test_recipes_dir_missing_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # An installation with neither package data nor a checkout around it.
    site = tmp_path / "site" / "vmkit"
    site.mkdir(parents=True)
    monkeypatch.setattr(resources, "__file__", str(site / "resources.py"))
    monkeypatch.setattr(resources.resources, "files", lambda _pkg: site)
    with pytest.raises(BoxNotFound, match=r"recipes folder is missing.*reinstall"):
        boxes.recipes_dir()


def test_ensure_builds_a_missing_box(fake: FakeTools) -> None:
    with pytest.raises(BoxNotFound, match="vmkit box build vmkit-mini --arch amd64"):
        boxes.find()
    box = boxes.ensure()
    assert len(fake.tool_calls("mmdebstrap")) == 1
    assert boxes.find() == box


def test_a_box_of_an_older_recipe_version_still_boots_and_up_says_to_rebuild(
    fake: FakeTools, caplog: pytest.LogCaptureFixture
) -> None:
    box = boxes.build()
    assert boxes.stale_notice(box) is None
    manifest = box.dir / boxes.MANIFEST
    data = json.loads(manifest.read_text())
    data["recipe_version"] = boxes.load_recipe("vmkit-mini").version - 1
    manifest.write_text(json.dumps(data))
    with caplog.at_level("WARNING", logger="vmkit"):
        assert boxes.ensure().dir == box.dir
        assert boxes.ensure().dir == box.dir
    assert "vmkit box build vmkit-mini --arch amd64 --force" in caplog.text
    assert caplog.text.count("was built by recipe version") == 1
    assert len(fake.tool_calls("mmdebstrap")) == 1


def test_the_initrd_and_the_boot_time_units_are_in_the_recipe() -> None:
    init = RECIPE / "initrd" / "init"
    assert os.access(init, os.X_OK)
    text = init.read_text()
    # The words vmkit's boot diagnosis quotes when the root disk is missing.
    assert "ALERT! $root does not exist" in text and "switch_root /root /sbin/init" in text
    hook = (RECIPE / "hooks" / "customize10-initrd").read_text()
    assert all(f"group {g} " in hook for g in ("virtio", "net", "mmio", "ahci", "ide", "ext4"))
    customize = (RECIPE / "hooks" / "customize00-vmkit").read_text()
    assert "systemctl enable docker.service containerd.service docker.socket" in customize
    # dockerd and containerd start with the first units, yielding the CPU while the system boots;
    # dockerd still stops before containerd.
    units = RECIPE / "rootfs" / "etc" / "systemd" / "system"
    for unit in ("docker.service", "containerd.service", "docker.socket"):
        text = (units / unit).read_text()
        assert "DefaultDependencies=no" in text and "Conflicts=shutdown.target" in text
        deps = [ln for ln in text.splitlines() if ln.startswith(("After=", "Wants=", "Requires="))]
        assert not any("network" in ln for ln in deps)
    for unit in ("docker.service", "containerd.service"):
        assert "StartupCPUWeight=10" in (units / unit).read_text()
    assert (
        "After=local-fs.target docker.socket containerd.service"
        in (units / "docker.service").read_text()
    )
    # growfs resizes whatever is mounted at /, not a udev link that may not exist yet.
    growfs = (units / "vmkit-growfs.service").read_text()
    assert "findmnt -no SOURCE /" in growfs and "ConditionPathExists" not in growfs
    sshd = (RECIPE / "rootfs" / "etc" / "ssh" / "sshd_config.d" / "vmkit.conf").read_text()
    assert "UsePAM no" in sshd.splitlines()
    assert "set-default multi-user.target" in customize
    # Recipe 5: a coldplug of the devices the box acts on, dockerd on iptables-legacy, no CRI.
    trigger = (units / "systemd-udev-trigger.service.d" / "vmkit.conf").read_text()
    kept = set(re.findall(r"--subsystem-match=(\S+)", trigger))
    assert {"block", "net", "pci", "virtio"} <= kept and "/sys/module/fuse" in trigger
    assert "update-alternatives --set iptables /usr/sbin/iptables-legacy" in customize
    containerd = tomllib.loads(
        (RECIPE / "rootfs" / "etc" / "containerd" / "config.toml").read_text()
    )
    assert "io.containerd.grpc.v1.cri" in containerd["disabled_plugins"]
    assert not {"overlayfs", "native"} & {
        p.rsplit(".", 1)[-1] for p in containerd["disabled_plugins"]
    }
