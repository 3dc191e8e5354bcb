"""Workshop bundles end to end, with ratios against a baseline measured in the same run.

    python bench/bundle.py [--big-mib 510] [--small-mib 8] [--keep DIR]

One VM at a time, in a temporary VMKIT_HOME (the box cache is the usual one):

1. VM A gets two images (busybox + random filler: incompressible, the worst case for zstd);
   `bundle create` makes a bundle of the vmkit-mini box and both images, saved from A's Docker.
   A is destroyed.
2. The bundle is copied; one byte of the big image in the copy is flipped: `verify` must name
   that file. The byte is put back and `verify` passes.
3. A fresh VM B: `bundle load` (box skipped: same build in the cache) against the baseline
   `images.load` of the same .tar.zst archives, alternated twice; ratio = bundle / baseline
   (goal <= 1.2).
4. `vmkit bundle load` as a user runs it, stopped with SIGINT (Ctrl-C) while the big image
   streams; the rerun must skip the box and the small image and send only the big one.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# bench/docker.py must not shadow the docker package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
_spec = importlib.util.spec_from_file_location("_imagetar", HERE / "_imagetar.py")
assert _spec is not None and _spec.loader is not None
_imagetar = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_imagetar)

BIG, SMALL = "vmkit-bench-big:1", "vmkit-bench-small:1"


def say(line: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {line}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--big-mib", type=int, default=510)
    ap.add_argument("--small-mib", type=int, default=8)
    ap.add_argument("--keep", help="keep the bundle in this folder")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vmkit-bench-bundle-"))
    os.environ["VMKIT_HOME"] = str(work / "home")
    import vmkit.vm as api

    vms: list[api.VM] = []
    try:
        run(a, work, vms)
    finally:
        for vm in vms:
            try:
                vm.destroy()
            except Exception as e:  # the bench must not leave a VM behind
                print(f"destroy {vm.name}: {e}")
        if a.keep and (work / "usb" / "course").is_dir():
            shutil.move(str(work / "usb" / "course"), a.keep)
        shutil.rmtree(work, ignore_errors=True)


def _ids(vm: object) -> set[str]:
    client = vm.docker()  # type: ignore[attr-defined]
    try:
        return {str(i) for i in client.api.images(quiet=True, all=True)}
    finally:
        client.close()


def _rmi(vm: object) -> None:
    vm.run(["docker", "rmi", "-f", BIG, SMALL], check=False)  # type: ignore[attr-defined]


def run(a: argparse.Namespace, work: Path, vms: list[object]) -> None:
    import vmkit.vm as api
    from vmkit import bundles
    from vmkit.docker import images
    from vmkit.errors import FileDamaged

    say("booting VM A")
    t = time.perf_counter()
    vm_a = api.up("bundle-a", memory=1024, cpus=2)
    vms.append(vm_a)
    say(f"  up in {time.perf_counter() - t:.0f} s")
    chan = vm_a.ssh().open_channel(["cat", "/bin/busybox"])
    busybox = bytearray()
    while chunk := chan.recv(1 << 16):
        busybox += chunk
    src = work / "src"
    src.mkdir()
    for tag, mib in ((SMALL, a.small_mib), (BIG, a.big_mib)):
        tar = _imagetar.build(src / f"{mib}.tar", bytes(busybox), tag, filler_mib=mib)
        images.load(vm_a, tar)
        tar.unlink()

    say("bundle create (box + 2 images saved from VM A)")
    t = time.perf_counter()
    course = bundles.create(
        work / "usb" / "course", box="vmkit-mini", images_=[SMALL, BIG], vm=vm_a
    )
    t_create = time.perf_counter() - t
    say(
        f"  {course.size / 2**20:.0f} MiB in {t_create:.1f} s ({course.size / 2**20 / t_create:.1f} MiB/s)"
    )
    for item in course.items:
        say(
            f"    {item.kind:6} {item.file:32} {item.size / 2**20:8.1f} MiB  tar {item.tar_size / 2**20:6.1f} MiB"
        )
    vm_a.destroy()
    vms.remove(vm_a)

    say("copy, flip one byte of the big image, verify")
    copy = work / "copy"
    shutil.copytree(course.dir, copy)
    big_item = next(i for i in course.items if BIG in i.tags)
    target = copy / big_item.file
    with open(target, "r+b") as f:
        f.seek(big_item.size // 2)
        byte = f.read(1)
        f.seek(big_item.size // 2)
        f.write(bytes([byte[0] ^ 0x01]))
    t = time.perf_counter()
    try:
        bundles.verify(copy)
        raise SystemExit("FAIL: verify did not notice the flipped byte")
    except FileDamaged as e:
        say(f"  verify ({time.perf_counter() - t:.1f} s): error: {e}")
        assert big_item.file in str(e)
    with open(target, "r+b") as f:
        f.seek(big_item.size // 2)
        f.write(byte)
    t = time.perf_counter()
    bundles.verify(copy)
    t_verify = time.perf_counter() - t
    say(f"  restored: verify passes ({t_verify:.1f} s, {course.size / 2**20 / t_verify:.0f} MiB/s)")

    say("booting a fresh VM B")
    t = time.perf_counter()
    vm_b = api.up("bundle-b", memory=1024, cpus=2)
    vms.append(vm_b)
    say(f"  up in {time.perf_counter() - t:.0f} s")
    archives = [copy / i.file for i in course.items if i.kind == "image"]
    image_bytes = sum(p.stat().st_size for p in archives)
    ratios = []
    for rnd in (1, 2):
        _rmi(vm_b)
        t = time.perf_counter()
        report = bundles.load(copy, vm=vm_b)
        t_bundle = time.perf_counter() - t
        assert report.skipped == [course.items[0].label], report
        _rmi(vm_b)
        t = time.perf_counter()
        for p in archives:
            images.load(vm_b, p)
        t_base = time.perf_counter() - t
        ratios.append(t_bundle / t_base)
        say(
            f"  round {rnd}: bundle load {t_bundle:6.1f} s   image load {t_base:6.1f} s   "
            f"ratio {t_bundle / t_base:.2f} ({image_bytes / 2**20 / t_base:.1f} MiB/s baseline)"
        )

    say("vmkit bundle load, Ctrl-C while the big image streams, then again")
    _rmi(vm_b)
    small_ids = set(next(i for i in course.items if SMALL in i.tags).ids)
    env = dict(os.environ)
    proc = subprocess.Popen(
        [sys.executable, "-m", "vmkit", "bundle", "load", str(copy), "--vm", vm_b.name],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 300
    while not small_ids <= _ids(vm_b) and time.monotonic() < deadline:
        time.sleep(0.5)
    time.sleep(4)  # well into the big image
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    tail = out.decode(errors="replace").strip().splitlines()[-1:]
    have = _ids(vm_b)
    say(f"  interrupted: exit {proc.returncode} ({' '.join(tail)})")
    say(
        f"  small image present: {small_ids <= have}; big image present: {bool(set(big_item.ids) & have)}"
    )
    t = time.perf_counter()
    resumed = bundles.load(copy, vm=vm_b)
    t_resume = time.perf_counter() - t
    say(f"  resumed in {t_resume:.1f} s: loaded {resumed.loaded}, skipped {resumed.skipped}")
    say(
        f"  bytes sent on resume {resumed.bytes / 2**20:.1f} MiB = the big image's {big_item.size / 2**20:.1f} MiB: {resumed.bytes == big_item.size}"
    )
    vm_b.destroy()
    vms.remove(vm_b)

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print()
    print(f"bundle create, {course.size / 2**20:.0f} MiB           {t_create:7.1f} s")
    print(f"bundle verify                         {t_verify:7.1f} s")
    print(
        f"bundle load / image load (same run)   {ratios[0]:7.2f}x  {ratios[1]:.2f}x   (goal <= 1.2)"
    )
    print(
        f"resume re-sent only the big image     {resumed.bytes == big_item.size and resumed.skipped == [course.items[0].label, course.items[1].label]}"
    )
    print(
        f"peak RSS of this process             {rss:7.0f} MiB (for {course.size / 2**20:.0f} MiB moved)"
    )


if __name__ == "__main__":
    main()
