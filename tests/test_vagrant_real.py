"""Real Vagrant: vmkit-mini packaged as a libvirt box, brought up under TCG through vmkit.

Runs inside a private libvirt (tests/vagrant_env.py); needs root, the built vmkit-mini box
(``vmkit box build``), and Debian's vagrant, vagrant-libvirt, libvirt-daemon-system,
qemu-system-x86, dnsmasq-base, iptables and e2fsprogs. Takes 2-5 minutes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.vagrant_env import LibvirtNamespace
from vmkit import packaging
from vmkit.providers.base import VMState
from vmkit.providers.vagrant import VagrantProvider, vagrantfile

pytestmark = [pytest.mark.vagrant, pytest.mark.timeout(1500)]

# Runs in the namespace, where 192.168.121.x is reachable: vmkit's own SSH client, pinned key.
SSH_CHECK = """
import json, sys
from vmkit.ssh import SSHSession
from vmkit.state import SSHEndpoint
ep = SSHEndpoint(**json.loads(sys.argv[1]))
with SSHSession(ep, connect_timeout=30) as s:
    print(s.run(["sh", "-c", "id -un; hostname; sudo -n true && echo sudo-ok"]).stdout)
"""


@pytest.fixture
def libvirt_ns(tmp_path: Path) -> Iterator[LibvirtNamespace]:
    ns = LibvirtNamespace(tmp_path / "ns")
    ns.start()
    try:
        yield ns
    finally:
        left = ns.stop()
        assert left == [], f"processes left in the namespace: {left}"


def test_vmkit_mini_box_up_ssh_halt_destroy(libvirt_ns: LibvirtNamespace, tmp_path: Path) -> None:
    times: dict[str, float] = {}

    started = time.monotonic()
    box = packaging.package("vmkit-mini", provider="libvirt", output=tmp_path / "vmkit-mini.box")
    times["package"] = time.monotonic() - started
    assert box.boots

    added = libvirt_ns.run("vagrant", "box", "add", str(box.metadata_path), timeout=300)
    assert "No version detected" not in added.stdout + added.stderr
    listed = libvirt_ns.run("vagrant", "box", "list").stdout
    assert f"vmkit-mini (libvirt, {box.version})" in listed

    project = tmp_path / "my lab"
    project.mkdir()
    (project / "Vagrantfile").write_text(
        vagrantfile.render(
            "docker-host",
            {
                "machine": "lab",
                "vm_prefix": "t-",
                "box": "vmkit-mini",
                "box_url": "",
                "description": "vmkit's real Vagrant test",
                "cpus": 1,
                "memory": 1024,
                "ssh_port": None,
                "forwards": [],
                "synced_folders": [],
                "libvirt_driver": "qemu",
                "ssh_username": "",
                "install_docker": False,
            },
        ),
        encoding="utf-8",
    )
    provider = VagrantProvider(command_prefix=libvirt_ns.prefix, env=libvirt_ns.env)
    machine = provider.machines(project)
    assert [(m.name, m.state) for m in machine] == [("lab", VMState.STOPPED)]

    lines: list[str] = []
    started = time.monotonic()
    found = provider.adopt(project, up=True, progress=lines.append)
    times["up"] = time.monotonic() - started
    assert any("Creating domain" in line for line in lines)
    domains = libvirt_ns.run("virsh", "-c", "qemu:///system", "dumpxml", "t-lab").stdout
    assert "<type arch='x86_64' machine=" in domains
    assert "type='qemu'" in domains  # TCG: KVM was not requested
    assert "<kernel>" in domains and "vmlinuz" in domains

    record = found.to_record("lab")
    assert provider.status(record).state is VMState.RUNNING
    assert found.ssh is not None
    assert found.ssh.user == "vmkit"
    assert found.ssh.host.startswith("192.168.121.")
    assert found.ssh.host_key.startswith("ssh-ed25519 ")
    # Vagrant replaced its insecure key with one for this machine.
    assert found.ssh.key_file.endswith("machines/lab/libvirt/private_key")

    started = time.monotonic()
    checked = libvirt_ns.run(
        sys.executable,
        "-c",
        SSH_CHECK,
        json.dumps(
            {
                "host": found.ssh.host,
                "port": found.ssh.port,
                "user": found.ssh.user,
                "key_file": found.ssh.key_file,
                "host_key": found.ssh.host_key,
            }
        ),
        timeout=120,
    )
    times["ssh"] = time.monotonic() - started
    assert checked.stdout.split() == ["vmkit", "lab", "sudo-ok"]

    # A wrong pinned key is refused by the same client.
    wrong = found.ssh.host_key[:-8] + "AAAAAAAA"
    refused = subprocess.run(
        [
            *libvirt_ns.prefix,
            sys.executable,
            "-c",
            SSH_CHECK,
            json.dumps(
                {
                    "host": found.ssh.host,
                    "port": found.ssh.port,
                    "user": found.ssh.user,
                    "key_file": found.ssh.key_file,
                    "host_key": wrong,
                }
            ),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert refused.returncode != 0
    assert "HostKeyMismatch" in refused.stderr

    started = time.monotonic()
    provider.stop(record, timeout=180)
    times["halt"] = time.monotonic() - started
    halted = provider.status(record)
    assert halted.state is VMState.STOPPED
    assert "shutoff" in halted.detail

    started = time.monotonic()
    provider.destroy(record)
    times["destroy"] = time.monotonic() - started
    gone = provider.status(record)
    assert gone.state is VMState.STOPPED
    assert "not created" in gone.detail
    assert (
        "t-lab"
        not in libvirt_ns.run("virsh", "-c", "qemu:///system", "list", "--all", "--name").stdout
    )

    libvirt_ns.run("vagrant", "box", "remove", "--force", "vmkit-mini")
    print("\nmeasured seconds:", json.dumps({k: round(v, 1) for k, v in times.items()}))
