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
from vmkit import labs
from vmkit.boxes import packaging
from vmkit.host.netutil import free_port
from vmkit.providers.base import VMState
from vmkit.providers.vagrant import VagrantProvider

pytestmark = [pytest.mark.vagrant, pytest.mark.timeout(1500)]

# Runs in the namespace, where 192.168.121.x is reachable: vmkit's own SSH client, pinned key.
SSH_CHECK = """
import json, sys
from vmkit.guest.ssh import SSHSession
from vmkit.state import SSHEndpoint
ep = SSHEndpoint(**json.loads(sys.argv[1]))
with SSHSession(ep, connect_timeout=30) as s:
    print(s.run(["sh", "-c", "id -un; hostname; sudo -n true && echo sudo-ok"]).stdout)
"""


# Runs in the namespace: fetch http://127.0.0.1:PORT/index.html, or say "refused".
FETCH = """
import sys, urllib.request
try:
    print(urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/index.html", timeout=20).read().decode(), end="")
except OSError:
    print("refused")
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


def test_vmkit_mini_box_up_ssh_halt_destroy(
    libvirt_ns: LibvirtNamespace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VMKIT_HOME", str(tmp_path / "vmkit-home"))
    times: dict[str, float] = {}

    started = time.monotonic()
    box = packaging.package("vmkit-mini", provider="libvirt", output=tmp_path / "vmkit-mini.box")
    times["package"] = time.monotonic() - started
    assert box.boots

    added = libvirt_ns.run("vagrant", "box", "add", str(box.metadata_path), timeout=300)
    assert "No version detected" not in added.stdout + added.stderr
    listed = libvirt_ns.run("vagrant", "box", "list").stdout
    assert f"vmkit-mini (libvirt, {box.version})" in listed

    # The teacher's path: a one-student lab from the docker-host template, run by vmkit.
    roster = tmp_path / "students.csv"
    roster.write_text("name\nLab O'Student\n", encoding="utf-8")
    lab = labs.render(
        "docker-host", roster, tmp_path / "course", cpus=1, memory=1024, libvirt_driver="qemu"
    )
    (student,) = lab.students
    assert student.machine == "lab-ostudent"
    project = tmp_path / "course" / student.folder
    provider = VagrantProvider(command_prefix=libvirt_ns.prefix, env=libvirt_ns.env)
    assert [(m.name, m.state) for m in provider.machines(project)] == [
        (student.machine, VMState.STOPPED)
    ]

    events: list[labs.LabEvent] = []
    started = time.monotonic()
    report = labs.up(tmp_path / "course", provider=provider, progress=events.append)
    times["up"] = time.monotonic() - started
    assert report.ok, report.failed
    assert [o.state for o in report.outcomes] == [VMState.RUNNING]
    assert any("Creating domain" in e.message for e in events)
    domain = f"course-{student.machine}"
    xml = libvirt_ns.run("virsh", "-c", "qemu:///system", "dumpxml", domain).stdout
    assert "<domain type='qemu'" in xml  # TCG: KVM was not requested
    assert "<kernel>" in xml and "vmlinuz" in xml

    started = time.monotonic()
    found = provider.adopt(project)
    times["attach"] = time.monotonic() - started
    assert found.machine == student.machine
    assert found.box == "vmkit-mini"
    record = found.to_record("lab")
    assert record.extra["project_dir"] == str(project)
    assert provider.status(record).state is VMState.RUNNING
    assert found.ssh is not None
    assert found.ssh.user == "vmkit"
    assert found.ssh.host.startswith("192.168.121.")
    assert found.ssh.host_key.startswith("ssh-ed25519 ")
    # Vagrant replaced its insecure key with one for this machine.
    assert found.ssh.key_file.endswith(f"machines/{student.machine}/libvirt/private_key")

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
    assert checked.stdout.split() == ["vmkit", student.machine, "sudo-ok"]

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

    # vmkit's edge: a live share and a live forward on the running Vagrant machine, no reload.
    # vmkit runs inside the namespace, where the machine's 192.168.121.x address is.
    def vmkit_ns(*args: str, timeout: float = 180) -> str:
        return libvirt_ns.run(sys.executable, "-m", "vmkit", *args, timeout=timeout).stdout

    started = time.monotonic()
    vmkit_ns("attach", f"vagrant:{project}", "--name", "lab")
    shared = tmp_path / "shared folder ü"
    shared.mkdir()
    (shared / "hello.txt").write_text("from the host\n")
    assert "sshfs" in vmkit_ns("share", str(shared), "--vm", "lab")
    assert vmkit_ns("ssh", "lab", "--", "cat", f"{shared}/hello.txt") == "from the host\n"
    vmkit_ns(
        "ssh",
        "lab",
        "--",
        "sh",
        "-c",
        "mkdir -p /tmp/www && echo served > /tmp/www/index.html "
        "&& busybox httpd -p 8080 -h /tmp/www",
    )
    port = free_port()
    assert "ssh-tunnel" in vmkit_ns("forward", f"{port}:8080", "--vm", "lab")
    fetched = libvirt_ns.run(sys.executable, "-c", FETCH, str(port)).stdout
    assert fetched == "served\n"
    times["live share+forward"] = time.monotonic() - started
    vmkit_ns("unshare", str(shared), "--vm", "lab")
    vmkit_ns("unforward", str(port), "--vm", "lab")
    assert libvirt_ns.run(sys.executable, "-c", FETCH, str(port), timeout=30).stdout == "refused\n"

    started = time.monotonic()
    vmkit_ns("stop", "lab", timeout=300)  # vagrant halt, and the VM's agent ends with it
    times["halt"] = time.monotonic() - started
    halted = provider.status(record)
    assert halted.state is VMState.STOPPED
    assert "shutoff" in halted.detail
    halted_lab = labs.down(tmp_path / "course", provider=provider, timeout=180)
    assert halted_lab.ok, halted_lab.failed

    started = time.monotonic()
    destroyed = labs.down(tmp_path / "course", destroy=True, provider=provider)
    times["destroy"] = time.monotonic() - started
    assert destroyed.ok, destroyed.failed
    assert labs.PortRegistry().allocations() == {}
    gone = provider.status(record)
    assert gone.state is VMState.STOPPED
    assert "not created" in gone.detail
    assert domain not in libvirt_ns.run("virsh", "-c", "qemu:///system", "list", "--all").stdout

    libvirt_ns.run("vagrant", "box", "remove", "--force", "vmkit-mini")
    print("\nmeasured seconds:", json.dumps({k: round(v, 1) for k, v in times.items()}))
