"""Docker over the VM's SSH: per-call latency and image-load throughput, in one run.

    VMKIT_HOME=... python bench/docker.py [VM] [--calls 30] [--load-mib 100]

Prints the median latency of a docker-py call over the kept connection, a raw exec of
`true` on the same SSH connection, and a new `ssh` process per call; then the throughput of
`vmkit image load` against `cat FILE | ssh VM docker load` for the same archive.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import vmkit.vm as api
from vmkit.docker import images

# This file is named docker.py: its folder must not shadow the docker package on sys.path.
HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
_spec = importlib.util.spec_from_file_location("_imagetar", HERE / "_imagetar.py")
assert _spec is not None and _spec.loader is not None
_imagetar = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_imagetar)


def median_ms(fn: Callable[[], object], n: int) -> float:
    fn()  # warm: connections and channels opened, caches filled
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("vm", nargs="?")
    ap.add_argument("--calls", type=int, default=30)
    ap.add_argument("--load-mib", type=int, default=100)
    a = ap.parse_args()
    vm = api.resolve(a.vm)
    vm.require_running()
    client = vm.docker()
    ssh_argv = vm.ssh_command(["true"])

    docker_py = median_ms(lambda: client.version(), a.calls)
    listing = median_ms(lambda: client.containers.list(), a.calls)
    raw = median_ms(lambda: vm.run(["true"]), a.calls)
    new_ssh = median_ms(
        lambda: subprocess.run(ssh_argv, check=True, capture_output=True), max(a.calls // 5, 3)
    )
    print(f"docker-py version()           {docker_py:8.1f} ms")
    print(f"docker-py containers.list()   {listing:8.1f} ms")
    print(f"raw exec `true`, same conn    {raw:8.1f} ms")
    print(f"new ssh process per call      {new_ssh:8.1f} ms")
    print(f"  docker-py / raw exec        {docker_py / raw:8.2f}x   (goal <= 1.2)")
    print(f"  new ssh / docker-py         {new_ssh / docker_py:8.1f}x   (goal >= 5)")

    if a.load_mib <= 0:
        return
    chan = vm.ssh().open_channel(["cat", "/bin/busybox"])
    busybox = bytearray()
    while chunk := chan.recv(1 << 16):
        busybox += chunk
    with tempfile.TemporaryDirectory() as d:
        tag = "vmkit-bench:1"
        tar = _imagetar.build(Path(d) / "bench.tar", bytes(busybox), tag, filler_mib=a.load_mib)
        mib = tar.stat().st_size / (1 << 20)
        vm.run(["docker", "rmi", "-f", tag], check=False)
        t = time.perf_counter()
        with open(tar, "rb") as f:
            subprocess.run(
                vm.ssh_command(["docker", "load"]), stdin=f, check=True, capture_output=True
            )
        raw_s = time.perf_counter() - t
        vm.run(["docker", "rmi", "-f", tag])
        res = images.load(vm, tar)
        vm.run(["docker", "rmi", "-f", tag])
    print(f"image load, {mib:.0f} MiB tar:")
    print(f"  cat FILE | ssh VM docker load  {mib / raw_s:6.2f} MiB/s  ({raw_s:.1f} s)")
    print(f"  vmkit image load               {res.mib_per_s:6.2f} MiB/s  ({res.seconds:.1f} s)")
    print(f"  vmkit / raw                    {res.mib_per_s / (mib / raw_s):6.2f}x   (goal >= 0.9)")


if __name__ == "__main__":
    main()
