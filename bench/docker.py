"""Docker over the VM's SSH: per-call latency, the Docker endpoint, image-load throughput.

    VMKIT_HOME=... python bench/docker.py [VM] [--calls 30] [--rounds 3] [--load-mib 100]

Prints the median latency of a docker-py call over the kept connection, a raw exec of
`true` on the same SSH connection, and a new `ssh` process per call. Then the Docker endpoint
(the agent's Docker API proxy): the time from `docker run -d -p P:80` returning to port P
answering on the host (goal <= 1 s), and the docker CLI's `ps` and `version` through the
proxy against a plain byte forward of a socket to dockerd over SSH, alternating rounds, the
median of each round's median (goal <= 1.1x). Last the throughput of `vmkit image load`
against `cat FILE | ssh VM docker load` for the same archive.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import vmkit.vm as api
from vmkit.agent.pump import pump_both
from vmkit.docker import client as dockerhost
from vmkit.docker import images
from vmkit.host.netutil import free_port
from vmkit.host.transport import SocketStream

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
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--load-mib", type=int, default=100)
    a = ap.parse_args()
    vm = api.resolve(a.vm)
    vm.require_running()
    client = dockerhost.docker_client(vm)
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

    if shutil.which("docker"):
        endpoint(vm, a.rounds)
    else:
        print("no docker CLI on the host: the Docker endpoint figures are skipped")

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


IMAGE = "vmkit-bench/busybox"
_MAKE_IMAGE = (
    "set -e; docker image inspect " + IMAGE + " >/dev/null 2>&1 && exit 0; d=$(mktemp -d); "
    "mkdir -p $d/bin; cp /bin/busybox $d/bin/; ln -s busybox $d/bin/httpd; "
    "tar -C $d -c . | docker import - " + IMAGE + "; rm -rf $d"
)


def plain_forward(vm: api.VM, path: str) -> None:
    """Serve ``path`` as a plain byte forward to dockerd over SSH: no HTTP parsing (the
    baseline, what vmkit's docker socket helper did before the proxy)."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)

    def serve(conn: socket.socket) -> None:
        pump_both(SocketStream(conn), dockerhost.open_docker_channel(vm))

    def loop() -> None:
        while True:
            conn, _ = listener.accept()
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=loop, daemon=True).start()


def answering(port: int, timeout: float = 30) -> float:
    """Seconds until 127.0.0.1:port answers HTTP."""
    t = time.perf_counter()
    while time.perf_counter() - t < timeout:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5):
                return time.perf_counter() - t
        except OSError as e:
            if getattr(e, "code", None):  # an HTTP error status is an answer
                return time.perf_counter() - t
            time.sleep(0.01)
    raise TimeoutError(f"port {port} did not answer in {timeout} s")


def endpoint(vm: api.VM, rounds: int) -> None:
    vm.run(["sh", "-c", _MAKE_IMAGE], timeout=120)
    proxy = dockerhost.ensure_socket(vm).docker_host
    cli = shutil.which("docker") or "docker"

    def docker(host: str, *args: str) -> str:
        env = dict(os.environ, DOCKER_HOST=host)
        r = subprocess.run([cli, *args], env=env, capture_output=True, text=True, check=True)
        return r.stdout

    waits = []
    for _ in range(rounds):
        port = free_port()
        cid = docker(proxy, "run", "-d", "-p", f"{port}:80", IMAGE, "httpd", "-f", "-p", "80")
        waits.append(answering(port))
        docker(proxy, "rm", "-f", cid.strip())
    print("Docker endpoint (the agent's proxy):")
    print(
        f"  `docker run -d -p` returned → port answers  {statistics.median(waits):6.2f} s "
        f"(median of {rounds}; goal <= 1 s)"
    )

    with tempfile.TemporaryDirectory(prefix="vmkit-bench-") as d:
        plain = "unix://" + os.path.join(d, "plain.sock")
        plain_forward(vm, plain[len("unix://") :])
        for what in (["ps"], ["version"]):
            ratios = []
            for _ in range(rounds):
                via_proxy = median_ms(lambda: docker(proxy, *what), 5)  # noqa: B023
                via_plain = median_ms(lambda: docker(plain, *what), 5)  # noqa: B023
                ratios.append(via_proxy / via_plain)
            print(
                f"  docker {what[0]:8s} proxy {via_proxy:6.0f} ms, plain forward "
                f"{via_plain:6.0f} ms (last round); proxy / plain {statistics.median(ratios):5.2f}x "
                f"(median of {rounds} alternating rounds; goal <= 1.1)"
            )


if __name__ == "__main__":
    main()
