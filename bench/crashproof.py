"""Issue 18, measured: kill -9 of `vmkit share` and `vmkit forward` at random moments, then
the next commands must converge. Ten rounds per mechanism pair, on one running QEMU VM.

A round: `vmkit share DIR` killed with SIGKILL after a random delay (0 .. the time an
uninterrupted share takes), `vmkit forward P:22` killed the same way; then `vmkit share DIR`,
the guest reads a file of DIR, `vmkit unshare DIR`, no virtiofsd is left, `vmkit forward P:22`
and SSH's banner comes through it, `vmkit unforward P`, and `vmkit ssh -- true` still works;
`vmkit shares`/`forwards` show no leftovers. The round converges if every step does.

    python bench/crashproof.py [--rounds 10] [--vm NAME]

With ``--vm`` it uses that running VM (in ``$VMKIT_HOME``), else it boots its own in a
temporary VMKIT_HOME and destroys it at the end.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PAIRS = {"default (virtiofs + hostfwd)": [], "sshfs + ssh-tunnel": ["sshfs", "ssh-tunnel"]}


def vmkit(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(
        [sys.executable, "-m", "vmkit", *args], capture_output=True, text=True, timeout=300
    )
    if check and r.returncode != 0:
        raise RuntimeError(f"vmkit {' '.join(args)} exited {r.returncode}: {r.stderr.strip()}")
    return r


def killed_after(delay: float, *args: str) -> str:
    """Start `vmkit ARGS`, SIGKILL it after ``delay`` s; say how it ended."""
    p = subprocess.Popen(
        [sys.executable, "-m", "vmkit", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        p.wait(delay)
        return f"finished ({p.returncode}) before the kill"
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGKILL)
        p.wait()
        return f"killed at {delay:.2f} s"


def banner(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
            s.settimeout(15)
            return s.recv(64).startswith(b"SSH-")
    except OSError:
        return False


def leftovers(name: str, folder: Path) -> list[str]:
    """Everything that says a round did not converge."""
    from vmkit.host import procs

    found = []
    for what in ("shares", "forwards"):
        out = vmkit(what, "--vm", name)
        found += [line for line in out.stderr.splitlines() if line.startswith("orphaned:")]
    found += [f"virtiofsd pid {p}" for p in procs.find(str(folder / "virtiofs-"))]
    status = vmkit("status", name).stdout
    found += [line.strip() for line in status.splitlines() if "unfinished" in line]
    return found


def one_round(name: str, data: Path, port: int, mechs: list[str], times: dict[str, float]) -> str:
    share_opt = ["--mechanism", mechs[0]] if mechs else []
    fwd_opt = ["--mechanism", mechs[1]] if mechs else []
    how_s = killed_after(
        random.uniform(0, times["share"]), "share", str(data), "--vm", name, *share_opt
    )
    how_f = killed_after(
        random.uniform(0, times["forward"]), "forward", f"{port}:22", "--vm", name, *fwd_opt
    )
    vmkit("share", str(data), "--vm", name, *share_opt)
    seen = vmkit("ssh", name, "--", "cat", str(data / "hello.txt")).stdout
    if seen != "hello\n":
        raise RuntimeError(f"the guest read {seen!r}")
    vmkit("unshare", str(data), "--vm", name)
    vmkit("forward", f"{port}:22", "--vm", name, *fwd_opt)
    if not banner(port):
        raise RuntimeError(f"no SSH banner through the forward of port {port}")
    vmkit("unforward", str(port), "--vm", name)
    if vmkit("ssh", name, "--", "true", check=False).returncode != 0:
        raise RuntimeError("SSH does not answer any more")
    return f"share {how_s}, forward {how_f}"


def calibrate(name: str, data: Path, port: int, mechs: list[str]) -> dict[str, float]:
    """How long an uninterrupted share and forward take here (the window the kills fall in)."""
    share_opt = ["--mechanism", mechs[0]] if mechs else []
    fwd_opt = ["--mechanism", mechs[1]] if mechs else []
    t0 = time.monotonic()
    vmkit("share", str(data), "--vm", name, *share_opt)
    t1 = time.monotonic()
    vmkit("unshare", str(data), "--vm", name)
    t2 = time.monotonic()
    vmkit("forward", f"{port}:22", "--vm", name, *fwd_opt)
    t3 = time.monotonic()
    vmkit("unforward", str(port), "--vm", name)
    return {"share": t1 - t0, "unshare": t2 - t1, "forward": t3 - t2}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--vm", help="a running VM to use (else one is booted and destroyed)")
    ap.add_argument("--seed", type=int, default=None)
    args = ap.parse_args()
    random.seed(args.seed)
    own = args.vm is None
    if own:
        os.environ["VMKIT_HOME"] = tempfile.mkdtemp(prefix="vmkit-crashbench-")
    name = args.vm or "crashbench"
    from vmkit.home import InstanceFiles
    from vmkit.host.netutil import free_port

    try:
        if own:
            print("booting a VM ...", flush=True)
            vmkit("up", name)
        folder = InstanceFiles.of(name).dir
        with tempfile.TemporaryDirectory(prefix="crash share ") as tmp:
            data = Path(tmp)
            data.chmod(0o755)
            (data / "hello.txt").write_text("hello\n")
            results = {}
            for label, mechs in PAIRS.items():
                port = free_port()
                times = calibrate(name, data, port, mechs)
                print(
                    f"{label}: an uninterrupted share takes {times['share']:.1f} s, "
                    f"a forward {times['forward']:.1f} s",
                    flush=True,
                )
                ok = 0
                for i in range(1, args.rounds + 1):
                    try:
                        how = one_round(name, data, port, mechs, times)
                        left = leftovers(name, folder)
                        if left:
                            raise RuntimeError("left behind: " + "; ".join(left))
                        ok += 1
                        print(f"  round {i}: converged ({how})", flush=True)
                    except Exception as e:  # a round that fails is counted, the next one runs
                        print(f"  round {i}: FAILED: {e}", flush=True)
                        vmkit("repair", name, check=False)
                results[label] = ok
            print()
            for label, ok in results.items():
                print(f"{label}: {ok}/{args.rounds} rounds converged")
    finally:
        if own:
            vmkit("destroy", "-f", name, check=False)


if __name__ == "__main__":
    main()
