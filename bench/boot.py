"""Boot → a usable Docker host, against the kernel's own start and against peers, in one run.

Each round starts the same box four ways, alternating: a bare ``qemu-system`` boot by hand,
``vmkit up`` through the API as a user gets it (under TCG: a quick start, resumed from the box's
saved boot), ``vmkit up --no-quick-start`` (a boot), and ``vagrant up`` (vagrant-libvirt, the
libvirt box ``vmkit box package`` makes, in a private network + mount namespace:
tests/vagrant_env.py). The saved boot is made before the rounds, and what that took (once per
box and VM size) is printed. Every ratio's baseline comes from the same run:

- the **kernel floor**: QEMU start → the kernel runs init, read (host-timestamped) from the
  serial console; the round's floor is the lower of the bare boot's and the vmkit boot's (a
  quick start runs no kernel start to read); nothing that boots can be usable sooner;
- **ssh-ready**: ``vmkit up`` called → an SSH login with the pinned host key works;
- **docker-ready**: → ``docker version`` answers in the guest (dockerd may start on demand);
- **first docker run**: → the first ``docker run --rm`` of a local image has finished (the
  image is imported into the new dockerd first, untimed: a fresh VM has no images);
- **vmkit/bare**: ssh-ready of ``vmkit up`` over that of the bare boot;
- **vmkit/vagrant**: ``vmkit up`` until it returns (dockerd answering) over ``vagrant up``
  until it returns.

The machine-readable lines at the end are the default ``vmkit up``'s, in the median round (by
its ssh-ready ratio); the booted one's ratios are printed beside them, with its per-phase
timeline (vmkit.guest.boottime). Hold the VM lock while it runs; ~4 minutes a round with
Vagrant.

Run: python bench/boot.py [--rounds 3] [--no-vagrant]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import attrs

import vmkit.vm as api
from vmkit import boxes
from vmkit.boxes import packaging
from vmkit.guest import boottime, keys
from vmkit.guest.seed import make_seed
from vmkit.guest.ssh import SSHSession
from vmkit.host import accel, procs
from vmkit.host.netutil import free_port, read_banner
from vmkit.host.virt import detect
from vmkit.providers.base import RESUMED_KEY
from vmkit.state import SSHEndpoint

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.vagrant_env import LibvirtNamespace

INIT = re.compile(r"Run \S+ as init process")
IMAGE = "bench/busybox"
MAKE_IMAGE = (
    "set -e; d=$(mktemp -d); mkdir -p $d/bin; cp /bin/busybox $d/bin/; ln -s busybox $d/bin/true; "
    f"tar -C $d -c . | docker import - {IMAGE} >/dev/null; rm -rf $d"
)


def now() -> float:
    """The host clock /proc's process start times count on."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


class ConsoleWatch:
    """Tails a serial console log, noting the host time each line first appeared."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ConsoleWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        offset, pending = 0, b""
        while not self._stop.is_set():
            with contextlib.suppress(OSError), self.path.open("rb") as f:
                f.seek(offset)
                data = f.read()
                offset += len(data)
                pending += data
                t = now()
                *done, pending = pending.split(b"\n")
                self.lines += [(t, line.decode(errors="replace")) for line in done]
            self._stop.wait(0.02)

    def first(self, pattern: re.Pattern[str]) -> float | None:
        return next((t for t, line in self.lines if pattern.search(line)), None)


@attrs.frozen
class Boot:
    """One boot's figures, in seconds (None: not measured for this kind of boot)."""

    floor: float | None = None
    ssh: float | None = None
    docker: float | None = None
    run: float | None = None
    up: float | None = None  # until the `up` command returned
    timeline: boottime.Timeline | None = None


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


def bare_boot(box: boxes.Box, work: Path) -> Boot:
    """qemu-system by hand: the least a boot to SSH needs, nothing of vmkit's around it."""
    key = work / "id"
    host = work / "host"
    for p in (key, host, work / "disk.qcow2", work / "seed.img", work / "serial.log"):
        p.unlink(missing_ok=True)
    keys.generate(key, "bench")
    host_pub = keys.generate(host, "bench-host")
    make_seed(
        work / "seed.img", authorized_key=keys.public_line(key), host_key=host, hostname="bench"
    )
    subprocess.run(
        [
            *("qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2"),
            *("-b", str(box.disk), str(work / "disk.qcow2"), "8G"),
        ],
        check=True,
    )
    port = free_port()
    argv = [
        "qemu-system-x86_64",
        *("-accel", "tcg,thread=multi,tb-size=256", "-cpu", "max", "-m", "1024", "-smp", "2"),
        *("-nodefaults", "-display", "none"),
        *("-kernel", str(box.kernel), "-initrd", str(box.initrd), "-append", box.cmdline),
        *("-drive", f"file={work / 'disk.qcow2'},if=virtio,format=qcow2"),
        *("-drive", f"file={work / 'seed.img'},if=virtio,format=raw,readonly=on"),
        *("-netdev", f"user,id=n,hostfwd=tcp:127.0.0.1:{port}-:22"),
        *("-device", "virtio-net-pci,netdev=n", "-device", "virtio-rng-pci"),
        *("-serial", f"file:{work / 'serial.log'}"),
    ]
    ep = SSHEndpoint("127.0.0.1", port, "vmkit", str(key), keys.key_type_and_blob(host_pub))
    with ConsoleWatch(work / "serial.log") as watch:
        started = now()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
        try:
            wait_login(ep, time.monotonic() + 300)
            ssh = now() - started
        finally:
            proc.terminate()
            proc.wait(30)
    init = watch.first(INIT)
    return Boot(floor=None if init is None else init - started, ssh=ssh)


def vmkit_boot(name: str, *, quick_start: bool) -> Boot:
    """`vmkit up`, timed from the call: SSH login, then docker version, then a first run."""
    started = now()
    vm = api.create(name, memory=1024, cpus=2, quick_start=quick_start)
    try:
        with ConsoleWatch(vm.record.files.serial_log) as watch:
            vm.start(wait=False)
            pid = vm.status().pid
            assert pid is not None
            qemu_started = now() - procs.age(pid)
            vm.wait_ready(docker=False)
            ssh = now() - started
            while not vm.run(
                ["docker", "version", "--format", "{{.Server.Version}}"], check=False, timeout=60
            ).ok:
                time.sleep(0.2)
            docker = now() - started
            # The rest of `vmkit up`: its dockerd probe (answers at once now) and reapply.
            vm.wait_ready(docker=True)
            vm.reapply()
            up = now() - started
        resumed = bool(vm.record.extra.get(RESUMED_KEY))
        if resumed != quick_start:
            raise SystemExit(f"{name}: asked for quick start {quick_start}, got {resumed}")
        init = watch.first(INIT)
        floor = None if init is None else init - qemu_started
        vm.run(["sh", "-c", MAKE_IMAGE], timeout=120)
        t = now()
        vm.run(["docker", "run", "--rm", IMAGE, "true"], timeout=120)
        first_run = docker + now() - t
        timeline = None
        if not resumed:
            timeline = boottime.measure(
                lambda argv: vm.run(list(argv), sudo=True, timeout=60).stdout,
                lambda: procs.age(pid),
            )
    finally:
        vm.destroy()
    return Boot(floor=floor, ssh=ssh, docker=docker, run=first_run, up=up, timeline=timeline)


VAGRANTFILE = """Vagrant.configure("2") do |config|
  config.vm.box = "vmkit-mini"
  config.vm.provider :libvirt do |libvirt|
    libvirt.driver = "qemu"
    libvirt.cpus = 2
    libvirt.memory = 1024
  end
end
"""


@contextlib.contextmanager
def vagrant_env(tmp: Path) -> Iterator[Callable[[int], Boot]]:
    """A private libvirt with the packaged vmkit-mini box added; yields one timed `vagrant up`."""
    ns = LibvirtNamespace(tmp / "ns")
    ns.start()
    try:
        box = packaging.package("vmkit-mini", provider="libvirt", output=tmp / "vmkit-mini.box")
        if not ns.run("vagrant", "box", "add", str(box.metadata_path), timeout=600).ok:
            raise SystemExit("vagrant box add failed")

        def up(i: int) -> Boot:
            project = tmp / f"vagrant{i}"
            project.mkdir()
            (project / "Vagrantfile").write_text(VAGRANTFILE, encoding="utf-8")
            prefix = [*ns.prefix, f"--wd={project}"]
            started = now()
            r = subprocess.run(
                [*prefix, "vagrant", "up", "--no-provision"],
                env={**os.environ, **ns.env},
                capture_output=True,
                text=True,
                timeout=900,
            )
            took = now() - started
            subprocess.run(
                [*prefix, "vagrant", "destroy", "-f"],
                env={**os.environ, **ns.env},
                capture_output=True,
                timeout=300,
            )
            if r.returncode != 0:
                raise SystemExit(f"vagrant up failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
            return Boot(up=took)

        yield up
    finally:
        left = ns.stop()
        if left:
            print(f"warning: processes left in the namespace: {left}", file=sys.stderr)


def median(values: list[float | None]) -> float:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-vagrant", action="store_true", help="leave out the vagrant up boots")
    args = ap.parse_args()
    box = boxes.ensure()
    print(
        f"box: {box.name} recipe version {box.manifest.get('recipe_version')}, "
        f"{box.disk.stat().st_size / 1e6:.0f} MB compressed; host load: {os.getloadavg()}",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as tmp_name, contextlib.ExitStack() as stack:
        tmp = Path(tmp_name)
        os.environ["VMKIT_HOME"] = str(tmp / "home")
        # A box cache of its own with the built box linked into it: the saved boot that quick
        # starts resume is made from scratch by the first `vmkit up` below, and timed.
        linked = tmp / "cache" / "boxes" / box.name / box.arch
        linked.mkdir(parents=True)
        for f in box.dir.iterdir():
            if f.is_file():
                (linked / f.name).symlink_to(f)
        os.environ["VMKIT_CACHE"] = str(tmp / "cache")
        work = tmp / "bare"
        work.mkdir()
        # The accelerator decision `vmkit up` makes, from scratch and from its cache.
        accel.forget()
        started = now()
        hav = detect(kernel=box.kernel)
        uncached = now() - started
        started = now()
        detect(kernel=box.kernel)
        print(
            f"accelerator: {hav.accel} ({'proven' if hav.usable else 'TCG'}); decided in "
            f"{uncached:.2f} s uncached, {now() - started:.2f} s cached",
            flush=True,
        )
        # The saved boot quick starts resume: made once per box and VM shape, by the first
        # `vmkit up` (this one also resumes from it once made).
        first = vmkit_boot("bench-first", quick_start=True)
        print(
            f"first vmkit up of this box and size (boots and saves a VM, then resumes from it): "
            f"returned in {first.up or 0:.1f} s, docker version answered at "
            f"{first.docker or 0:.1f} s",
            flush=True,
        )
        vagrant_up = None if args.no_vagrant else stack.enter_context(vagrant_env(tmp))
        bare: list[Boot] = []
        quick: list[Boot] = []
        cold: list[Boot] = []
        peers: list[Boot] = []
        floors: list[float] = []
        for i in range(args.rounds):
            bare.append(bare_boot(box, work))
            quick.append(vmkit_boot(f"quick{i}", quick_start=True))
            cold.append(vmkit_boot(f"cold{i}", quick_start=False))
            if vagrant_up is not None:
                peers.append(vagrant_up(i))
            b, q, c = bare[-1], quick[-1], cold[-1]
            floors.append(min(x for x in (b.floor, c.floor) if x is not None))
            print(
                f"round {i + 1}: kernel floor {floors[-1]:.1f} s (bare {b.floor or 0:.1f}, "
                f"vmkit boot {c.floor or 0:.1f}); vmkit up: ssh {q.ssh or 0:.1f} s, docker "
                f"version {q.docker or 0:.1f} s, first docker run {q.run or 0:.1f} s, up "
                f"returned {q.up or 0:.1f} s; --no-quick-start: ssh {c.ssh or 0:.1f} s, docker "
                f"{c.docker or 0:.1f} s, run {c.run or 0:.1f} s, up {c.up or 0:.1f} s; bare qemu "
                f"ssh {b.ssh or 0:.1f} s"
                + (f"; vagrant up {peers[-1].up or 0:.1f} s" if peers else ""),
                flush=True,
            )
    # The median round by the default `vmkit up`'s ssh-ready ratio; baselines from its round.
    order = sorted(range(args.rounds), key=lambda i: (quick[i].ssh or 0) / floors[i])
    m = order[len(order) // 2]
    q, c, b, floor = quick[m], cold[m], bare[m], floors[m]
    assert q.ssh is not None and q.docker is not None and q.run is not None and q.up is not None
    assert c.ssh is not None and c.docker is not None and c.run is not None and c.up is not None
    print(f"\nmedian round ({m + 1} of {args.rounds}), its own baselines:")
    print(f"  kernel floor (QEMU start → init, serial console): {floor:.2f} s")
    print("  vmkit up (quick start)   | --no-quick-start (boot) | goal")
    for what, fast, booted, goal in (
        ("ssh-ready", q.ssh, c.ssh, "≤ 2.0x"),
        ("docker version", q.docker, c.docker, "≤ 2.5x"),
        ("first docker run", q.run, c.run, "≤ 3x"),
    ):
        print(
            f"  {what}: {fast:.2f} s = {fast / floor:.2f}x | {booted:.2f} s = "
            f"{booted / floor:.2f}x | {goal}"
        )
    print(
        f"  vmkit up vs bare qemu (ssh-ready): quick start {q.ssh / (b.ssh or float('nan')):.2f}x,"
        f" boot {c.ssh / (b.ssh or float('nan')):.2f}x ({b.ssh or 0:.2f} s bare)"
    )
    vagrant_ratio = float("nan")
    if peers:
        p = peers[m].up or float("nan")
        vagrant_ratio = q.up / p
        print(
            f"  vmkit up vs vagrant up: {q.up:.2f} / {p:.2f} s = {vagrant_ratio:.2f}x "
            f"(boot: {c.up / p:.2f}x)"
        )
    print(
        f"medians of {args.rounds}: floor {statistics.median(floors):.2f} s; quick start ssh "
        f"{median([x.ssh for x in quick]):.2f} s, docker {median([x.docker for x in quick]):.2f} s,"
        f" run {median([x.run for x in quick]):.2f} s; boot ssh {median([x.ssh for x in cold]):.2f}"
        f" s, docker {median([x.docker for x in cold]):.2f} s, run "
        f"{median([x.run for x in cold]):.2f} s; bare ssh {median([x.ssh for x in bare]):.2f} s"
        + (f", vagrant up {median([x.up for x in peers]):.2f} s" if peers else "")
    )
    if c.timeline is not None:
        print("\nper-phase timeline of the median round's boot (--no-quick-start):")
        for line in c.timeline.render():
            print(f"  {line}")
    print(f"\nssh-ready/kernel-floor={q.ssh / floor:.2f}")
    print(f"docker-ready/kernel-floor={q.docker / floor:.2f}")
    print(f"vmkit/vagrant={vagrant_ratio:.2f}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
