"""Live shares and forwards, measured in one run on one VM, as ratios to baselines.

Shares, per mechanism (virtio-fs, reverse sshfs): time from `vmkit share` to usable in the
guest, sequential read of a large file and an `ls -l` of 2000 files, both as ratios to the
same on the host. Forwards: `vmkit forward` (its default mechanism) against a hand-made QMP
`hostfwd_add` and an OpenSSH `-L` tunnel, as throughput of one TCP stream.

Run: python bench/live.py [--mib 200] [--files 2000]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import vmkit.vm as api
from vmkit.netutil import free_port

NAME = "benchlive"


def cli(*args: str) -> float:
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "vmkit", *args], check=True, capture_output=True)
    return time.monotonic() - started


def timed(vm: api.VM, argv: list[str]) -> float:
    """Wall time of a guest command, less one SSH round trip."""
    started = time.monotonic()
    vm.run(argv, timeout=900)
    took = time.monotonic() - started
    started = time.monotonic()
    vm.run(["true"])
    return max(took - (time.monotonic() - started), 1e-6)


def host_time(argv: list[str]) -> float:
    started = time.monotonic()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    return time.monotonic() - started


def bench_shares(vm: api.VM, root: Path, mib: int, nfiles: int) -> None:
    big = root / "big.bin"
    with open(big, "wb") as f:
        for _ in range(mib):
            f.write(os.urandom(1 << 20))
    many = root / "many"
    many.mkdir()
    for i in range(nfiles):
        (many / f"f{i:05d}.txt").write_text(str(i))
    (root / "marker").write_text("ok")
    host_read = host_time(["cat", str(big)])
    host_ls = host_time(["ls", "-l", str(many)])
    print(
        f"host: read {mib} MiB {mib / host_read:.0f} MiB/s, ls -l {nfiles} files {host_ls * 1000:.0f} ms"
    )
    for mech in ("virtiofs", "sshfs"):
        started = time.monotonic()
        cmd = cli("share", str(root), "--vm", NAME, "--mechanism", mech)
        while not vm.run(["test", "-f", f"{root}/marker"], check=False).ok:
            time.sleep(0.05)
        usable = time.monotonic() - started
        read = timed(vm, ["cat", str(big)])
        ls = timed(vm, ["ls", "-l", str(many)])
        print(
            f"share {mech:8s}: command {cmd:.2f} s, usable after {usable:.2f} s "
            f"({usable - cmd:.2f} s after it returned); read {mib / read:.1f} MiB/s "
            f"= {host_read / read:.3f}x host; ls -l {ls * 1000:.0f} ms = {host_ls / ls:.3f}x host",
            flush=True,
        )
        cli("unshare", str(root), "--vm", NAME)


def guest_sender(vm: api.VM, port: int, mib: int) -> None:
    vm.run(
        [
            "sh",
            "-c",
            f"(dd if=/dev/zero bs=1M count={mib} 2>/dev/null | busybox nc -l -p {port}) "
            ">/dev/null 2>&1 &",
        ]
    )
    time.sleep(0.5)


def receive(port: int) -> float:
    """MiB/s of one stream read from 127.0.0.1:port to its end."""
    total = 0
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        started = time.monotonic()
        while True:
            data = s.recv(1 << 20)
            if not data:
                break
            total += len(data)
    return total / (1 << 20) / (time.monotonic() - started)


def qmp_hostfwd(vm: api.VM, rule: str, remove: bool = False) -> None:
    """The hand-made way: raw QMP JSON on the monitor socket, no vmkit code."""
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(vm.record.files.qmp))
        f = s.makefile("rw")
        f.readline()
        for cmd in (
            {"execute": "qmp_capabilities"},
            {
                "execute": "human-monitor-command",
                "arguments": {
                    "command-line": f"hostfwd_{'remove' if remove else 'add'} net0 {rule}"
                },
            },
        ):
            f.write(json.dumps(cmd) + "\n")
            f.flush()
            f.readline()


def bench_forwards(vm: api.VM, mib: int) -> None:
    gport = 9000
    results: dict[str, float] = {}
    hp = free_port()
    guest_sender(vm, gport, mib)
    started = time.monotonic()
    cli("forward", f"{hp}:{gport}", "--vm", NAME)
    usable = time.monotonic() - started
    results["vmkit forward (hostfwd)"] = receive(hp)
    cli("unforward", str(hp), "--vm", NAME)
    print(f"vmkit forward: usable {usable:.2f} s after the command started")

    hp = free_port()
    guest_sender(vm, gport, mib)
    qmp_hostfwd(vm, f"tcp:127.0.0.1:{hp}-:{gport}")
    results["hand-made hostfwd_add"] = receive(hp)
    qmp_hostfwd(vm, f"tcp:127.0.0.1:{hp}", remove=True)

    hp = free_port()
    guest_sender(vm, gport, mib)
    argv = vm.ssh_command()
    tunnel = subprocess.Popen(
        [*argv[:-1], "-N", "-L", f"127.0.0.1:{hp}:127.0.0.1:{gport}", argv[-1]]
    )
    try:
        time.sleep(2)
        results["OpenSSH -L tunnel"] = receive(hp)
    finally:
        tunnel.terminate()
        tunnel.wait()

    best = results["hand-made hostfwd_add"]
    for what, rate in results.items():
        print(
            f"forward {what:24s}: {rate:7.1f} MiB/s = {rate / best:.2f}x hand-made hostfwd",
            flush=True,
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--mib", type=int, default=200)
    ap.add_argument("--files", type=int, default=2000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["VMKIT_HOME"] = str(Path(tmp) / "home")
        vm = api.up(NAME)
        try:
            root = Path(tmp) / "shared dir"
            root.mkdir()
            root.chmod(0o755)
            bench_shares(vm, root, args.mib, args.files)
            bench_forwards(vm, args.mib)
        finally:
            vm.destroy()


if __name__ == "__main__":
    main()
