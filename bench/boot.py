"""Boot → SSH-ready: `vmkit up` against a bare qemu-system boot of the same kernel and disk.

Both boots go to the same point (an SSH login with the pinned host key succeeds), on the same
box, alternating, in one run; the result is a ratio. The first `vmkit up` proves the
accelerator from scratch (its verdict cache dropped), later ones use the cached verdict; the
proof's own cost, uncached and cached, is reported against the bare boot too.
Run: python bench/boot.py [--rounds N]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import vmkit.vm as api
from vmkit import boxes
from vmkit.guest import keys
from vmkit.guest.seed import make_seed
from vmkit.guest.ssh import SSHSession
from vmkit.host import accel
from vmkit.host.netutil import free_port, read_banner
from vmkit.host.virt import detect
from vmkit.state import SSHEndpoint


def wait_login(endpoint: SSHEndpoint, deadline: float) -> None:
    """The same two steps vmkit's readiness probes take: an SSH banner, then a login."""
    while read_banner(endpoint.host, endpoint.port, timeout=3) is None:
        if time.monotonic() > deadline:
            raise SystemExit("no SSH banner")
        time.sleep(0.1)
    while time.monotonic() < deadline:
        try:
            with SSHSession(endpoint, connect_timeout=5) as s:
                s.run(["true"], timeout=10)
                return
        except Exception:  # not up yet: retry until the deadline
            time.sleep(0.2)
    raise SystemExit("SSH never came up")


def bare_boot(box: boxes.Box, work: Path) -> float:
    """qemu-system by hand: the least a boot to SSH needs, nothing of vmkit's around it."""
    key = work / "id"
    host = work / "host"
    for p in (key, host, work / "disk.qcow2", work / "seed.img"):
        p.unlink(missing_ok=True)
    keys.generate(key, "bench")
    host_pub = keys.generate(host, "bench-host")
    make_seed(
        work / "seed.img", authorized_key=keys.public_line(key), host_key=host, hostname="bench"
    )
    subprocess.run(
        [
            "qemu-img",
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "qcow2",
            "-b",
            str(box.disk),
            str(work / "disk.qcow2"),
            "8G",
        ],
        check=True,
    )
    port = free_port()
    argv = [
        "qemu-system-x86_64",
        "-accel",
        "tcg,thread=multi,tb-size=256",
        "-cpu",
        "max",
        "-m",
        "1024",
        "-smp",
        "2",
        "-nodefaults",
        "-display",
        "none",
        "-kernel",
        str(box.kernel),
        "-initrd",
        str(box.initrd),
        "-append",
        box.cmdline,
        "-drive",
        f"file={work / 'disk.qcow2'},if=virtio,format=qcow2",
        "-drive",
        f"file={work / 'seed.img'},if=virtio,format=raw,readonly=on",
        "-netdev",
        f"user,id=n,hostfwd=tcp:127.0.0.1:{port}-:22",
        "-device",
        "virtio-net-pci,netdev=n",
        "-serial",
        f"file:{work / 'serial.log'}",
    ]
    ep = SSHEndpoint("127.0.0.1", port, "vmkit", str(key), keys.key_type_and_blob(host_pub))
    started = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
    try:
        wait_login(ep, started + 300)
        return time.monotonic() - started
    finally:
        proc.terminate()
        proc.wait(30)


def vmkit_boot(name: str) -> float:
    """`vmkit up` through the CLI, to the same point (SSH login; dockerd is not waited for here)."""
    started = time.monotonic()
    vm = api.create(name)
    vm.start(wait=False)
    vm.wait_ready(docker=False)
    took = time.monotonic() - started
    vm.destroy()
    return took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    box = boxes.ensure()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["VMKIT_HOME"] = str(Path(tmp) / "home")
        work = Path(tmp) / "bare"
        work.mkdir()
        accel.forget()
        started = time.monotonic()
        hav = detect(kernel=box.kernel)
        proof_uncached = time.monotonic() - started
        started = time.monotonic()
        detect(kernel=box.kernel)
        proof_cached = time.monotonic() - started
        print(
            f"accelerator: {hav.accel} ({'proven' if hav.usable else 'TCG'}); decided in "
            f"{proof_uncached:.2f} s uncached, {proof_cached:.2f} s cached",
            flush=True,
        )
        accel.forget()
        bare, ours = [], []
        for i in range(args.rounds):
            bare.append(bare_boot(box, work))
            ours.append(vmkit_boot(f"bench{i}"))
            kind = "uncached proof" if i == 0 else "cached proof"
            print(
                f"round {i + 1}: bare {bare[-1]:.1f} s, vmkit {ours[-1]:.1f} s ({kind})", flush=True
            )
    b = min(bare)
    first, later = ours[0], min(ours[1:] or ours)
    print(f"boot → SSH ready, bare qemu best of {args.rounds}: {b:.1f} s")
    print(f"  vmkit up, accelerator proven from scratch: {first:.1f} s, ratio {first / b:.2f}x")
    print(f"  vmkit up, cached verdict: {later:.1f} s, ratio {later / b:.2f}x (goal ≤ 1.3x)")
    print(
        f"  the accelerator decision alone: {proof_uncached / b:.3f}x of a bare boot uncached, "
        f"{proof_cached / b:.3f}x cached"
    )


if __name__ == "__main__":
    sys.exit(main())
