"""Live shares and forwards, measured in one run on one VM, as ratios to baselines.

Shares, per mechanism (virtio-fs, reverse sshfs): time from `vmkit share` to usable in the
guest; then a sequential read of a large file and an `ls -l` of 2000 files through vmkit's share
and through the same share made by hand (virtiofsd as root; OpenSSH's sftp-server), in
alternating rounds (which goes first swaps each round), reported as medians and as vmkit's
speed relative to the hand-made share. Forwards: `vmkit forward` (its default mechanism) against a hand-made QMP
`hostfwd_add` and an OpenSSH `-L` tunnel, as throughput of one TCP stream.

Run: python bench/live.py [--mib 200] [--files 2000]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
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


def bench_shares(
    vm: api.VM, root: Path, mib: int, nfiles: int, rounds: int, sshfs_mib: int
) -> None:
    """Each vmkit share against the same share made by hand, read in alternating rounds."""
    big = root / "big.bin"
    small = root / "small.bin"
    for path, size in ((big, mib), (small, sshfs_mib)):
        with open(path, "wb") as f:
            for _ in range(size):
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
    for mech, hand_made, read_file, size in (
        ("virtiofs", hand_made_virtiofs, big, mib),
        ("sshfs", hand_made_sshfs, small, sshfs_mib),
    ):
        started = time.monotonic()
        cmd = cli("share", str(root), "--vm", NAME, "--mechanism", mech)
        while not vm.run(["test", "-f", f"{root}/marker"], check=False).ok:
            time.sleep(0.05)
        usable = time.monotonic() - started
        print(
            f"vmkit share ({mech}): command {cmd:.2f} s, usable after {usable:.2f} s "
            f"({usable - cmd:.2f} s after it returned)",
            flush=True,
        )
        try:
            with hand_made(vm, root) as hand:
                compare(vm, mech, root, hand, read_file.name, size, rounds)
        finally:
            cli("unshare", str(root), "--vm", NAME)


def compare(
    vm: api.VM, mech: str, vmkit_dir: Path, hand_dir: Path, name: str, mib: int, rounds: int
) -> None:
    """Read ``name`` and list ``many`` through both shares, alternating which goes first each
    round (the guest's caches dropped before every read); report each one's median."""
    times: dict[tuple[str, str], list[float]] = {}
    for r in range(rounds):
        order = [("vmkit", vmkit_dir), ("hand-made", hand_dir)]
        for who, where in order if r % 2 == 0 else order[::-1]:
            drop_caches(vm)
            times.setdefault((who, "read"), []).append(guest_read(vm, where / name))
            drop_caches(vm)
            times.setdefault((who, "ls"), []).append(guest_ls(vm, where / "many"))
    med = {k: statistics.median(v) for k, v in times.items()}
    for who in ("vmkit", "hand-made"):
        print(
            f"{mech} {who:9s}: read {mib} MiB {mib / med[(who, 'read')]:.1f} MiB/s, "
            f"ls -l {med[(who, 'ls')] * 1000:.0f} ms (median of {rounds} rounds)",
            flush=True,
        )
    print(
        f"{mech} vmkit / hand-made: read speed {med[('hand-made', 'read')] / med[('vmkit', 'read')]:.2f}x, "
        f"listing speed {med[('hand-made', 'ls')] / med[('vmkit', 'ls')]:.2f}x",
        flush=True,
    )


def drop_caches(vm: api.VM) -> None:
    vm.run(["sh", "-c", "sync; echo 3 > /proc/sys/vm/drop_caches"], sudo=True)


def guest_read(vm: api.VM, path: Path) -> float:
    # The data must stay in the guest: reading it back over SSH would measure SSH.
    return timed(vm, ["dd", f"if={path}", "of=/dev/null", "bs=1M"])


def guest_ls(vm: api.VM, path: Path) -> float:
    return timed(vm, ["sh", "-c", 'ls -l "$1" > /dev/null', "sh", str(path)])


@contextlib.contextmanager
def hand_made_virtiofs(vm: api.VM, root: Path) -> Iterator[Path]:
    """virtio-fs set up by hand (virtiofsd as root, raw QMP, mount), the baseline for vmkit's."""
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
        yield Path("/mnt/hand")
        vm.run(["umount", "/mnt/hand"], sudo=True)
        qmp(vm, [{"execute": "device_del", "arguments": {"id": "handdev"}}])
        time.sleep(2)
        qmp(vm, [{"execute": "chardev-remove", "arguments": {"id": "handchr"}}])
    finally:
        daemon.terminate()
        daemon.wait()


@contextlib.contextmanager
def hand_made_sshfs(vm: api.VM, root: Path) -> Iterator[Path]:
    """Reverse sshfs as vmkit made it before issue 15 (and as the recipes on the web do): the
    host's OpenSSH sftp-server piped over one SSH channel to `sshfs -o passive`."""
    target = "/mnt/hand-sshfs"
    vm.run(["mkdir", "-p", target], sudo=True)
    server = subprocess.Popen(
        ["/usr/lib/openssh/sftp-server"], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    argv = ["sudo", "-n", "sshfs", "-f", "-o", "passive,allow_other", f":{root}", target]
    chan = vm.ssh().open_channel(argv)
    assert server.stdin is not None and server.stdout is not None
    to_guest, from_guest = server.stdout, server.stdin

    def up() -> None:
        while data := to_guest.read1(65536):
            chan.sendall(data)

    def down() -> None:
        while data := chan.recv(65536):
            from_guest.write(data)
            from_guest.flush()

    threads = [threading.Thread(target=f, daemon=True) for f in (up, down)]
    for t in threads:
        t.start()
    try:
        while not vm.run(["test", "-f", f"{target}/marker"], check=False).ok:
            time.sleep(0.1)
        yield Path(target)
    finally:
        vm.run(["umount", "-l", target], sudo=True, check=False)
        chan.close()
        server.kill()
        server.wait()


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
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds per comparison")
    ap.add_argument("--sshfs-mib", type=int, default=16, help="sshfs reads (2-3 MiB/s under TCG)")
    ap.add_argument("--shares-only", action="store_true", help="skip the forwards")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["VMKIT_HOME"] = str(Path(tmp) / "home")
        vm = api.up(NAME)
        try:
            root = Path(tmp) / "shared dir"
            root.mkdir()
            root.chmod(0o755)
            bench_shares(vm, root, args.mib, args.files, args.rounds, args.sshfs_mib)
            if not args.shares_only:
                bench_forwards(vm, args.mib)
        finally:
            vm.destroy()


if __name__ == "__main__":
    main()
