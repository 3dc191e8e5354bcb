"""A private libvirt for Vagrant tests: its own network and mount namespace, torn down by pid.

There is no systemd here, and libvirt's network (192.168.121.0/24 for vagrant-libvirt) must
never reach the host's network, so the test starts everything itself:

1. a holder process (``unshare --mount --net --propagation private sleep infinity``) whose
   namespaces everything else joins with ``nsenter -t PID``;
2. bind mounts of fresh temp folders over /run/libvirt, /var/lib/libvirt, /var/log/libvirt,
   /var/cache/libvirt and /etc/libvirt (a copy of the host's, with QEMU run as root so it can
   read boxes under 0700 temp folders), visible only in that mount namespace;
3. ``virtlogd -d -p PIDFILE`` and ``libvirtd -d -p PIDFILE`` in both namespaces.

``stop()`` kills, by pid, every process that lives in the holder's network namespace
(libvirtd, virtlogd, dnsmasq, qemu, vagrant-libvirt's ssh forwards), then the holder, and
checks that none is left. Needs root and Debian's vagrant, vagrant-libvirt,
libvirt-daemon-system, qemu-system-x86, dnsmasq-base, iptables, util-linux.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from vmkit.host import runner

MOUNTS = (
    "/run/libvirt",
    "/var/lib/libvirt",
    "/var/log/libvirt",
    "/var/cache/libvirt",
    "/etc/libvirt",
)


class LibvirtNamespace:
    """libvirtd and virtlogd in a private network + mount namespace under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.pids = root / "pids"
        self.vagrant_home = root / "vagrant.d"
        self.holder: subprocess.Popen[bytes] | None = None
        self.netns = ""

    @property
    def pid(self) -> int:
        assert self.holder is not None
        return self.holder.pid

    @property
    def prefix(self) -> list[str]:
        """Put this before an argv to run it inside the namespaces."""
        return ["nsenter", "-t", str(self.pid), "-m", "-n"]

    @property
    def env(self) -> dict[str, str]:
        """Environment for vagrant in this namespace (its own box store, libvirt by default)."""
        return {
            "VAGRANT_HOME": str(self.vagrant_home),
            "VAGRANT_DEFAULT_PROVIDER": "libvirt",
            "LIBVIRT_DEFAULT_URI": "qemu:///system",
            "VAGRANT_CHECKPOINT_DISABLE": "1",
            "VAGRANT_BOX_UPDATE_CHECK_DISABLE": "1",
        }

    def run(self, *argv: str, timeout: float = 60.0) -> runner.Result:
        return runner.run([*self.prefix, *argv], timeout=timeout, env=self.env)

    def start(self) -> None:
        self.pids.mkdir(parents=True)
        self.vagrant_home.mkdir()
        self.holder = runner.spawn(
            ["unshare", "--mount", "--net", "--propagation", "private", "sleep", "infinity"],
            log=self.root / "holder.log",
        )
        # unshare execs sleep once the namespaces exist: wait until the pid's netns differs.
        host_ns = os.readlink("/proc/self/ns/net")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                self.netns = os.readlink(f"/proc/{self.pid}/ns/net")
                if self.netns != host_ns and Path(
                    f"/proc/{self.pid}/cmdline"
                ).read_bytes().startswith(b"sleep"):
                    break
            time.sleep(0.05)
        else:
            raise RuntimeError("the namespace holder did not start")
        for target in MOUNTS:
            source = self.root / target.strip("/").replace("/", "_")
            if target == "/etc/libvirt":
                shutil.copytree("/etc/libvirt", source, symlinks=True)
                _run_qemu_as_root(source / "qemu.conf")
            else:
                source.mkdir()
            self.run("mkdir", "-p", target)
            self.run("mount", "--bind", str(source), target)
        self.run("ip", "link", "set", "lo", "up")
        self.run("virtlogd", "-d", "-p", str(self.pids / "virtlogd.pid"))
        self.run("libvirtd", "-d", "-p", str(self.pids / "libvirtd.pid"), timeout=60)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.run("virsh", "-c", "qemu:///system", "version", timeout=30).ok:
                return
            time.sleep(0.5)
        raise RuntimeError("libvirtd did not answer in 30 s")

    def processes(self) -> list[int]:
        """Pids of every process in this network namespace (the holder included)."""
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                if os.readlink(entry / "ns" / "net") == self.netns:
                    found.append(int(entry.name))
        return found

    def stop(self) -> list[int]:
        """Kill every process of the namespace by pid; returns the pids still alive (none)."""
        if self.holder is None:
            return []
        # libvirtd first, so it does not restart what is being stopped.
        first = _read_pid(self.pids / "libvirtd.pid")
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if first:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(first, sig)
            for pid in self.processes():
                if pid != self.pid:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, sig)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and [p for p in self.processes() if p != self.pid]:
                time.sleep(0.2)
        self.holder.terminate()
        try:
            self.holder.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.holder.kill()
            self.holder.wait(timeout=10)
        left = self.processes()
        self.holder = None
        return left


def _run_qemu_as_root(conf: Path) -> None:
    text = conf.read_text(encoding="utf-8")
    conf.write_text(text + '\nuser = "root"\ngroup = "root"\n', encoding="utf-8")


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text(encoding="utf-8").strip())
    except (OSError, ValueError):
        return None
