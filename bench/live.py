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
from vmkit.host.netutil import free_port

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
        report(
            f"vmkit share ({mech})",
            vm,
            big,
            many,
            mib,
            host_read,
            host_ls,
            f"command {cmd:.2f} s, "
            f"usable after {usable:.2f} s ({usable - cmd:.2f} s after it returned)",
        )
        cli("unshare", str(root), "--vm", NAME)
    hand_made_virtiofs(vm, root, big, many, mib, host_read, host_ls)


def guest_read(vm: api.VM, path: Path) -> float:
    # The data must stay in the guest: reading it back over SSH would measure SSH.
    return timed(vm, ["dd", f"if={path}", "of=/dev/null", "bs=1M"])


def guest_ls(vm: api.VM, path: Path) -> float:
    return timed(vm, ["sh", "-c", 'ls -l "$1" > /dev/null', "sh", str(path)])


def report(
    what: str,
    vm: api.VM,
    big: Path,
    many: Path,
    mib: int,
    host_read: float,
    host_ls: float,
    extra: str = "",
) -> None:
    vm.run(["sh", "-c", "sync; echo 3 > /proc/sys/vm/drop_caches"], sudo=True)
    read = guest_read(vm, big)
    ls = guest_ls(vm, many)
    print(
        f"{what:24s}: {extra + '; ' if extra else ''}read {mib / read:.1f} MiB/s = 1/{read / host_read:.0f} of the "
        f"host's cached read; ls -l {ls * 1000:.0f} ms = {ls / host_ls:.0f}x the host's",
        flush=True,
    )


def hand_made_virtiofs(
    vm: api.VM, root: Path, big: Path, many: Path, mib: int, host_read: float, host_ls: float
) -> None:
    """virtio-fs set up by hand (virtiofsd, raw QMP, mount), the baseline for vmkit's default."""
    sock = Path(tempfile.mkdtemp()) / "vfs.sock"
    daemon = subprocess.Popen(
        [
            "/usr/lib/qemu/virtiofsd",
            "-f",
            f"--socket-path={sock}",
            "-o",
            f"source={root}",
            "-o",
            "cache=auto",
        ],
        stderr=subprocess.DEVNULL,
    )
    try:
        while not sock.exists():
            time.sleep(0.02)
        qmp(
            vm,
            [
                {
                    "execute": "chardev-add",
                    "arguments": {
                        "id": "handchr",
                        "backend": {
                            "type": "socket",
                            "data": {
                                "addr": {"type": "unix", "data": {"path": str(sock)}},
                                "server": False,
                            },
                        },
                    },
                },
                {
                    "execute": "device_add",
                    "arguments": {
                        "driver": "vhost-user-fs-pci",
                        "chardev": "handchr",
                        "tag": "hand",
                        "id": "handdev",
                    },
                },
            ],
        )
        vm.run(["mkdir", "-p", "/mnt/hand"], sudo=True)
        while not vm.run(
            ["mount", "-t", "virtiofs", "hand", "/mnt/hand"], sudo=True, check=False
        ).ok:
            time.sleep(0.1)
        report(
            "hand-made virtio-fs",
            vm,
            Path("/mnt/hand") / big.name,
            Path("/mnt/hand") / many.name,
            mib,
            host_read,
            host_ls,
        )
        vm.run(["umount", "/mnt/hand"], sudo=True)
        qmp(vm, [{"execute": "device_del", "arguments": {"id": "handdev"}}])
        time.sleep(2)
        qmp(vm, [{"execute": "chardev-remove", "arguments": {"id": "handchr"}}])
    finally:
        daemon.terminate()
        daemon.wait()


def guest_server(vm: api.VM, port: int, mib: int) -> None:
    """busybox httpd serving a file from the guest's RAM: a sender that keeps up better under
    TCG than a shell pipe into nc, so the forward is what gets measured."""
    vm.run(
        [
            "sh",
            "-c",
            f"test -f /dev/shm/blob || dd if=/dev/zero of=/dev/shm/blob bs=1M count={mib} 2>/dev/null; "
            f"busybox httpd -p {port} -h /dev/shm",
        ],
        sudo=True,
    )


def receive(port: int) -> float:
    """MiB/s of one HTTP download of the blob through 127.0.0.1:port."""
    total = 0
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        started = time.monotonic()
        s.sendall(b"GET /blob HTTP/1.0\r\n\r\n")
        while True:
            data = s.recv(1 << 20)
            if not data:
                break
            total += len(data)
    return total / (1 << 20) / (time.monotonic() - started)


def qmp(vm: api.VM, commands: list[dict[str, object]]) -> None:
    """The hand-made way: raw QMP JSON on the monitor socket, no vmkit code."""
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(vm.record.files.qmp))
        f = s.makefile("rw")
        f.readline()
        for cmd in [{"execute": "qmp_capabilities"}, *commands]:
            f.write(json.dumps(cmd) + "\n")
            f.flush()
            while "event" in json.loads(f.readline()):
                pass


def qmp_hostfwd(vm: api.VM, rule: str, remove: bool = False) -> None:
    line = f"hostfwd_{'remove' if remove else 'add'} net0 {rule}"
    qmp(vm, [{"execute": "human-monitor-command", "arguments": {"command-line": line}}])


def bench_forwards(vm: api.VM, mib: int) -> None:
    gport = 9000
    results: dict[str, float] = {}
    guest_server(vm, gport, mib)
    hp = free_port()
    started = time.monotonic()
    cli("forward", f"{hp}:{gport}", "--vm", NAME)
    usable = time.monotonic() - started
    results["vmkit forward (hostfwd)"] = receive(hp)
    cli("unforward", str(hp), "--vm", NAME)

    hp = free_port()
    cli("forward", f"{hp}:{gport}", "--vm", NAME, "--mechanism", "ssh-tunnel")
    results["vmkit ssh-tunnel"] = receive(hp)
    cli("unforward", str(hp), "--vm", NAME)
    print(f"vmkit forward: usable {usable:.2f} s after the command started")

    hp = free_port()
    qmp_hostfwd(vm, f"tcp:127.0.0.1:{hp}-:{gport}")
    results["hand-made hostfwd_add"] = receive(hp)
    qmp_hostfwd(vm, f"tcp:127.0.0.1:{hp}", remove=True)

    hp = free_port()
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
