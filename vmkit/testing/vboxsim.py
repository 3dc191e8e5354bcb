"""Driving the VBoxManage simulator (a test double for VirtualBox) from tests.

The simulator keeps its state under ``VBOXSIM_HOME`` and logs each call's argv to
``VBOXSIM_LOG``; ``VBoxSim`` sets both up and reads the log back, so a test can assert the
exact VBoxManage calls vmkit made.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from vmkit.providers.virtualbox.vboxmanage import VBoxManage

#: Calls that only read; ``since`` leaves them out so tests assert on what changed things.
READ_ONLY = ("showvminfo", "list", "--version", "guestproperty")


class VBoxSim:
    """A fresh simulated VirtualBox in ``workdir``, using the simulator found in ``sim_dir``."""

    def __init__(self, sim_dir: Path, workdir: Path, version: str = "7.0.14r161095") -> None:
        self.sim_dir = sim_dir
        self.home = workdir / "vbox"
        self.log = workdir / "vbox-calls.jsonl"
        self.version = version
        self.vbm = VBoxManage(str(sim_dir / "VBoxManage"))

    def environ(self) -> dict[str, str]:
        """The variables to set (PATH with the simulator first) for code under test."""
        return {
            "PATH": str(self.sim_dir) + os.pathsep + os.environ.get("PATH", ""),
            "VBOXSIM_HOME": str(self.home),
            "VBOXSIM_LOG": str(self.log),
            "VBOXSIM_VERSION": self.version,
        }

    def calls(self) -> list[list[str]]:
        """Every VBoxManage call so far, as argv lists without the program name."""
        if not self.log.exists():
            return []
        lines = self.log.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines]

    def mark(self) -> int:
        """A position in the call log, for ``since``."""
        return len(self.calls())

    def since(self, mark: int) -> list[list[str]]:
        """Calls after ``mark`` that could change something (read-only ones left out)."""
        return [c for c in self.calls()[mark:] if c and c[0] not in READ_ONLY]

    def make_docker_machine_vm(self, name: str, ssh_port: int, shared: Path) -> None:
        """A stopped VM set up the way docker-machine's VirtualBox driver sets up ``default``:
        NAT with an ``ssh`` rule on 127.0.0.1, a host-only NIC, and the ``c/Users`` share."""
        v = self.vbm
        v("createvm", "--name", name, "--ostype", "Linux26_64", "--register")
        v("modifyvm", name, "--memory", "1024", "--cpus", "1", "--nic1", "nat")
        v("modifyvm", name, "--natpf1", f"ssh,tcp,127.0.0.1,{ssh_port},,22")
        v("modifyvm", name, "--nic2", "hostonly", "--hostonlyadapter2", "vboxnet0")
        v(
            "sharedfolder",
            "add",
            name,
            "--name",
            "c/Users",
            "--hostpath",
            str(shared),
            "--automount",
        )
