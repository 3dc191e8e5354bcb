"""The VirtualBox provider and its mechanisms against the VBoxManage simulator (5.2, 6.0, 7.0).

Each test asserts the VBoxManage calls made (from VBOXSIM_LOG), the states that result, and
the guest-side commands seen by the recording fake SSH session.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.conftest_vbox import new_record
from vmkit.errors import (
    ForwardExists,
    GuestCommandFailed,
    GuestModuleMissing,
    HardwareVirtualizationUnavailable,
    InvalidInput,
    PortInUse,
    ProviderError,
    ShareExists,
    SSHError,
    ToolMissing,
    VMExists,
    VMNotFound,
)
from vmkit.host.runner import run
from vmkit.providers.base import VMState
from vmkit.providers.virtualbox import VBoxManage, VirtualBoxProvider, backend
from vmkit.providers.virtualbox.nat import free_port
from vmkit.providers.virtualbox.natpf import NatPF
from vmkit.providers.virtualbox.parsers import parse_showvminfo
from vmkit.providers.virtualbox.vboxsf import VBoxSF, share_tag
from vmkit.state import ForwardSpec, ShareSpec, SSHEndpoint, VMRecord
from vmkit.testing import FakeSSHSession
from vmkit.testing.vboxsim import VBoxSim as Sim

ODD = "dir with spaces 'q' \"dq\" $(touch x) ü"


@pytest.fixture
def provider(sim: Sim) -> VirtualBoxProvider:
    return VirtualBoxProvider(sim.vbm, poll_interval=0.01)


def created(
    provider: VirtualBoxProvider, box_disk: Path, name: str = "lab", arch: str = "amd64"
) -> VMRecord:
    record = new_record(name, arch)
    seed = record.files.seed
    run(["qemu-img", "create", "-q", "-f", "raw", str(seed), "1M"])
    provider.create(record, disk=box_disk)
    return record


def test_lifecycle(sim: Sim, provider: VirtualBoxProvider, box_disk: Path) -> None:
    record = new_record()
    run(["qemu-img", "create", "-q", "-f", "raw", str(record.files.seed), "1M"])
    mark = sim.mark()
    provider.create(record, disk=box_disk)
    folder = str(record.files.dir)
    port = record.extra["ssh_port"]
    disk_vdi, seed_vdi = record.files.vbox_disk, record.files.vbox_seed
    assert sim.since(mark) == [
        ["createvm", "--name", "vmkit-lab", "--ostype", "Debian_64", "--register", "--basefolder", folder],
        ["modifyvm", "vmkit-lab", "--memory", "1024", "--cpus", "2", "--nic1", "nat",
         "--natpf1", f"ssh,tcp,127.0.0.1,{port},,22", "--ioapic", "on", "--rtcuseutc", "on",
         "--boot1", "disk", "--boot2", "none", "--boot3", "none", "--boot4", "none"],
        ["storagectl", "vmkit-lab", "--name", "SATA", "--add", "sata", "--portcount", "2", "--bootable", "on"],
        ["storageattach", "vmkit-lab", "--storagectl", "SATA", "--port", "0", "--device", "0",
         "--type", "hdd", "--medium", str(disk_vdi)],
        ["storageattach", "vmkit-lab", "--storagectl", "SATA", "--port", "1", "--device", "0",
         "--type", "hdd", "--medium", str(seed_vdi)],
    ]  # fmt: skip
    info = run(["qemu-img", "info", str(disk_vdi)]).stdout
    assert "file format: vdi" in info and "1 GiB" in info
    assert record.extra["vbox_name"] == "vmkit-lab" and len(record.extra["uuid"]) == 36
    assert record.ssh is not None and record.ssh.port == port
    assert provider.status(record).state is VMState.STOPPED
    vm = sim.vbm.info("vmkit-lab")
    # createvm's defaults already give no audio and no USB controller (no option needed).
    assert (vm.raw["audio"], vm.raw["usb"], vm.raw["ioapic"], vm.raw["rtcuseutc"]) == (
        "none",
        "off",
        "on",
        "on",
    )
    assert (vm.memory, vm.cpus, vm.ostype) == (1024, 2, "Debian (64-bit)")

    mark = sim.mark()
    provider.start(record)
    assert sim.since(mark) == [["startvm", "vmkit-lab", "--type", "headless"]]
    assert provider.status(record).running
    provider.start(record)  # already running: nothing to do
    assert sim.since(mark) == [["startvm", "vmkit-lab", "--type", "headless"]]

    mark = sim.mark()
    provider.stop(record, timeout=5)
    assert sim.since(mark) == [["controlvm", "vmkit-lab", "acpipowerbutton"]]
    assert provider.status(record).state is VMState.STOPPED

    provider.start(record)
    mark = sim.mark()
    provider.destroy(record)
    assert sim.since(mark) == [
        ["controlvm", "vmkit-lab", "poweroff"],
        ["unregistervm", "vmkit-lab", "--delete"],
    ]
    assert not disk_vdi.exists() and not seed_vdi.exists()
    assert sim.vbm.list_vms() == []
    status = provider.status(record)
    assert status.state is VMState.BROKEN and "no VM named 'vmkit-lab'" in status.detail
    provider.destroy(record)  # gone already: no error


def test_create_i386_odd_home_and_existing(
    sim: Sim, provider: VirtualBoxProvider, box_disk: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setenv("VMKIT_HOME", str(tmp_path / ODD))
    record = new_record("old", arch="i386")
    provider.create(record, disk=box_disk)  # no seed file: only the disk is attached
    calls = sim.since(0)
    folder = str(record.files.dir)
    assert ODD in folder and record.files.vbox_disk.is_file()
    assert calls[0] == [
        "createvm", "--name", "vmkit-old", "--ostype", "Debian", "--register", "--basefolder", folder,
    ]  # fmt: skip
    assert [c[0] for c in calls] == ["createvm", "modifyvm", "storagectl", "storageattach"]
    assert sim.vbm.info("vmkit-old").ostype == "Debian (32-bit)"
    with pytest.raises(VMExists, match="vmkit-old"):
        provider.create(VMRecord(name="old", provider="virtualbox", arch="i386"), disk=box_disk)


def test_start_without_hardware_virtualization(
    sim: Sim,
    provider: VirtualBoxProvider,
    box_disk: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    record = created(provider, box_disk)
    monkeypatch.setenv("VBOXSIM_HWVIRT", "0")
    with pytest.raises(HardwareVirtualizationUnavailable) as e:
        provider.start(record)
    assert "VT-x is switched off" in e.value.message and "'vmkit-lab'" in e.value.message
    assert "BIOS/UEFI" in e.value.hint and "QEMU" in e.value.hint
    assert provider.status(record).state is VMState.STOPPED
    # A 32-bit guest falls back to raw mode before 6.1, and fails like a 64-bit one after.
    old = created(provider, box_disk, name="old", arch="i386")
    if sim.vbm.version.series < (6, 1):
        provider.start(old)
        assert provider.status(old).running
    else:
        with pytest.raises(HardwareVirtualizationUnavailable):
            provider.start(old)


def test_start_moves_a_taken_ssh_port(
    sim: Sim, provider: VirtualBoxProvider, box_disk: Path
) -> None:
    record = created(provider, box_disk)
    taken = record.extra["ssh_port"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", taken))
        s.listen()
        mark = sim.mark()
        provider.start(record)
    calls = sim.since(mark)
    assert calls[0] == ["modifyvm", "vmkit-lab", "--natpf1", "delete", "ssh"]
    new = record.extra["ssh_port"]
    assert new != taken and record.ssh is not None and record.ssh.port == new
    assert calls[1:] == [
        ["modifyvm", "vmkit-lab", "--natpf1", f"ssh,tcp,127.0.0.1,{new},,22"],
        ["startvm", "vmkit-lab", "--type", "headless"],
    ]


def test_status_paused_saved_and_stop_paths(
    sim: Sim, provider: VirtualBoxProvider, box_disk: Path
) -> None:
    record = created(provider, box_disk)
    provider.start(record)
    sim.vbm("controlvm", "vmkit-lab", "pause")
    assert provider.status(record).state is VMState.PAUSED
    mark = sim.mark()
    provider.stop(record, timeout=5)  # a paused guest cannot see the power button
    assert sim.since(mark) == [["controlvm", "vmkit-lab", "poweroff"]]
    provider.start(record)
    sim.vbm("controlvm", "vmkit-lab", "savestate")
    assert provider.status(record).state is VMState.SAVED
    provider.start(record)
    mark = sim.mark()
    provider.stop(record, timeout=5, force=True)
    assert sim.since(mark) == [["controlvm", "vmkit-lab", "poweroff"]]
    provider.stop(record, timeout=5)  # stopped already: nothing
    assert sim.since(mark) == [["controlvm", "vmkit-lab", "poweroff"]]


def test_adopt_docker_machine_default(
    sim: Sim,
    provider: VirtualBoxProvider,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    users = tmp_path / "Users"
    users.mkdir()
    sim.make_docker_machine_vm("default", 50022, users)
    machine = tmp_path / "machine"
    (machine / "machines" / "default").mkdir(parents=True)
    (machine / "machines" / "default" / "id_rsa").write_text("key")
    monkeypatch.setenv("MACHINE_STORAGE_PATH", str(machine))
    mark = sim.mark()
    vm = provider.adopt("default")
    assert sim.since(mark) == []  # adopting only reads
    assert (vm.vbox_name, vm.state, vm.ssh_host, vm.ssh_port) == (
        "default",
        VMState.STOPPED,
        "127.0.0.1",
        50022,
    )
    assert vm.ssh_user == "docker" and vm.key_file == str(
        machine / "machines" / "default" / "id_rsa"
    )
    assert [(f.name, f.path, f.transient) for f in vm.shares] == [("c/Users", str(users), False)]
    assert vm.forwards == ()
    assert vm.extra() == {"vbox_name": "default", "uuid": vm.uuid, "adopted": True}
    by_uuid = provider.adopt(vm.uuid)
    assert by_uuid.vbox_name == "default"

    record = vm.to_record("default", host_key="ssh-ed25519 AAAAHK")
    assert record.ssh == SSHEndpoint(
        "127.0.0.1", 50022, "docker", vm.key_file or "", "ssh-ed25519 AAAAHK"
    )
    assert (record.provider, record.memory, record.cpus) == ("virtualbox", 1024, 1)
    assert record.extra == vm.extra()
    provider.start(record)
    assert provider.status(record).running
    mark = sim.mark()
    provider.destroy(record)  # vmkit never deletes a VM it did not make
    assert sim.since(mark) == []
    assert [n for n, _ in sim.vbm.list_vms()] == ["default"]

    with pytest.raises(VMNotFound) as e:
        provider.adopt("defualt")
    assert e.value.message == "VirtualBox has no VM named 'defualt'" and "'default'" in e.value.hint


def test_adopt_old_style_rule_with_empty_host_ip(sim: Sim, provider: VirtualBoxProvider) -> None:
    sim.vbm("createvm", "--name", "dev", "--ostype", "Linux26_64", "--register")
    sim.vbm("modifyvm", "dev", "--natpf1", "ssh,tcp,,2222,,22", "--natpf1", "web,tcp,,8080,,80")
    vm = provider.adopt("dev")
    assert (vm.ssh_host, vm.ssh_port, vm.ssh_user, vm.key_file) == ("127.0.0.1", 2222, "", None)
    assert vm.to_record("dev", host_key="ssh-ed25519 AAAA").ssh is None  # no user/key known
    rec = vm.to_record("dev", host_key="ssh-ed25519 AAAA", user="me", key_file="/k")
    assert rec.ssh is not None and (rec.ssh.port, rec.ssh.user) == (2222, "me")
    assert [r.name for r in vm.forwards] == ["web"]


# -- forwards -------------------------------------------------------------------------------


def test_forward_running_and_stopped(
    sim: Sim, provider: VirtualBoxProvider, box_disk: Path
) -> None:
    record = created(provider, box_disk)
    notes: list[str] = []
    natpf = NatPF(sim.vbm, "vmkit-lab", progress=notes.append)
    assert provider.forward_mechanisms(record, FakeSSHSession)[0].name == "natpf"
    p1, p2 = free_port(), free_port()

    mark = sim.mark()
    spec = natpf.add(ForwardSpec(host_port=p1, guest_port=8080))
    assert spec.mechanism == "natpf" and spec.host_ip == "127.0.0.1"
    assert sim.since(mark) == [
        ["modifyvm", "vmkit-lab", "--natpf1", f"vmkit-tcp-{p1},tcp,127.0.0.1,{p1},,8080"]
    ]
    assert "applied at next start" in notes[-1]

    provider.start(record)
    mark = sim.mark()
    natpf.add(ForwardSpec(host_port=p2, guest_port=9000, proto="udp"))
    assert sim.since(mark) == [
        ["controlvm", "vmkit-lab", "natpf1", f"vmkit-udp-{p2},udp,127.0.0.1,{p2},,9000"]
    ]
    assert sorted((f.host_port, f.guest_port, f.proto) for f in natpf.active()) == sorted(
        [(p1, 8080, "tcp"), (p2, 9000, "udp")]
    )  # the ssh rule is not a forward

    with pytest.raises(ForwardExists):
        natpf.add(ForwardSpec(host_port=p1, guest_port=8080))
    with pytest.raises(PortInUse, match=str(p1)):
        natpf.add(ForwardSpec(host_port=p1, guest_port=7000))
    ssh_port = record.extra["ssh_port"]
    with pytest.raises(PortInUse, match=str(ssh_port)):
        natpf.add(ForwardSpec(host_port=ssh_port, guest_port=80))

    mark = sim.mark()
    natpf.remove(ForwardSpec(host_port=p1, guest_port=8080))
    assert sim.since(mark) == [["controlvm", "vmkit-lab", "natpf1", "delete", f"vmkit-tcp-{p1}"]]
    natpf.remove(ForwardSpec(host_port=p1, guest_port=8080))  # gone: no call, no error
    assert sim.since(mark) == [["controlvm", "vmkit-lab", "natpf1", "delete", f"vmkit-tcp-{p1}"]]
    provider.stop(record, timeout=5)
    mark = sim.mark()
    natpf.remove(ForwardSpec(host_port=p2, guest_port=9000, proto="udp"))
    assert sim.since(mark) == [["modifyvm", "vmkit-lab", "--natpf1", "delete", f"vmkit-udp-{p2}"]]
    assert natpf.active() == []
    assert [r.name for r in sim.vbm.info("vmkit-lab").rules] == ["ssh"]


def test_forward_host_port_busy_is_refused_before_virtualbox(
    sim: Sim,
    provider: VirtualBoxProvider,
    box_disk: Path,
) -> None:
    created(provider, box_disk)
    natpf = NatPF(sim.vbm, "vmkit-lab")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = s.getsockname()[1]
        mark = sim.mark()
        with pytest.raises(PortInUse, match=f"host port {busy} "):
            natpf.add(ForwardSpec(host_port=busy, guest_port=80))
    assert sim.since(mark) == []
    with pytest.raises(InvalidInput):
        natpf.add(ForwardSpec(host_port=70000, guest_port=80))


# -- shares ---------------------------------------------------------------------------------


def test_share_running_is_transient_and_mounted(
    sim: Sim,
    provider: VirtualBoxProvider,
    box_disk: Path,
    tmp_path: Path,
) -> None:
    record = created(provider, box_disk)
    provider.start(record)
    src = tmp_path / ODD
    src.mkdir()
    target = str(src)  # guest path = host path mirrored
    guest = FakeSSHSession()
    sf = provider.share_mechanisms(record, lambda: guest)[0]
    assert isinstance(sf, VBoxSF)
    sf.check()
    tag = share_tag(target)
    mark = sim.mark()
    done = sf.add(ShareSpec(source=str(src), target=target))
    assert (done.mechanism, done.tag) == ("vboxsf", tag) and tag.startswith("vmkit_")
    assert sim.since(mark) == [
        ["sharedfolder", "add", "vmkit-lab", "--name", tag, "--hostpath", str(src), "--transient"]
    ]
    cmds = guest.commands()
    assert ["modprobe", "vboxsf"] in cmds
    assert cmds[-3:] == [
        ["mkdir", "-p", "--", target],
        ["getent", "group", "docker"],
        ["mount", "-t", "vboxsf", "-o", "uid=1000,gid=999", tag, target],
    ]
    assert all(c.sudo for c in guest.calls if c.argv[0] in ("modprobe", "mkdir", "mount"))
    assert sf.active() == [ShareSpec(str(src), target, mechanism="vboxsf", tag=tag)]
    with pytest.raises(ShareExists):
        sf.add(ShareSpec(source=str(src), target=target))

    mark = sim.mark()
    sf.remove(done)
    assert guest.commands()[-1] == ["umount", "--", target]
    assert sim.since(mark) == [
        ["sharedfolder", "remove", "vmkit-lab", "--name", tag, "--transient"]
    ]
    assert sf.active() == [] and sim.vbm.info("vmkit-lab").folders == ()
    sf.remove(done)  # gone: no error


def test_share_readonly_and_no_docker_group(
    sim: Sim,
    provider: VirtualBoxProvider,
    box_disk: Path,
    tmp_path: Path,
) -> None:
    record = created(provider, box_disk)
    provider.start(record)
    guest = FakeSSHSession(groups={})
    sf = VBoxSF(sim.vbm, "vmkit-lab", lambda: guest)
    mark = sim.mark()
    done = sf.add(ShareSpec(source=str(tmp_path), target="/data/ro", readonly=True))
    assert sim.since(mark)[0][-2:] == ["--transient", "--readonly"]
    assert guest.commands()[-1] == [
        "mount",
        "-t",
        "vboxsf",
        "-o",
        "uid=1000,gid=1000,ro",
        done.tag,
        "/data/ro",
    ]
    assert sf.active()[0].readonly


def test_share_stopped_is_permanent_then_mounted_at_start(
    sim: Sim,
    provider: VirtualBoxProvider,
    box_disk: Path,
    tmp_path: Path,
) -> None:
    record = created(provider, box_disk)
    guest = FakeSSHSession()
    notes: list[str] = []
    sf = VBoxSF(sim.vbm, "vmkit-lab", lambda: guest, progress=notes.append)
    spec = ShareSpec(source=str(tmp_path), target="/home/user/project")
    tag = share_tag(spec.target)
    mark = sim.mark()
    sf.add(spec)
    assert sim.since(mark) == [
        ["sharedfolder", "add", "vmkit-lab", "--name", tag, "--hostpath", str(tmp_path)]
    ]
    assert guest.calls == [] and "mounted at next start" in notes[-1]
    assert sf.active() == []
    sf.add(spec)  # saved already: nothing more
    assert sim.since(mark) == [
        ["sharedfolder", "add", "vmkit-lab", "--name", tag, "--hostpath", str(tmp_path)]
    ]

    provider.start(record)
    mark = sim.mark()
    sf.add(spec)  # the saved share exists: only the guest mount is needed
    assert sim.since(mark) == []
    assert guest.commands()[-1][:3] == ["mount", "-t", "vboxsf"]
    assert [s.target for s in sf.active()] == ["/home/user/project"]

    provider.stop(record, timeout=5)
    mark = sim.mark()
    sf.remove(spec)
    assert sim.since(mark) == [["sharedfolder", "remove", "vmkit-lab", "--name", tag]]
    with pytest.raises(InvalidInput, match="does not exist"):
        sf.add(ShareSpec(source=str(tmp_path / "missing"), target="/x"))


def test_share_failure_rolls_back(
    sim: Sim,
    provider: VirtualBoxProvider,
    box_disk: Path,
    tmp_path: Path,
) -> None:
    record = created(provider, box_disk)
    provider.start(record)
    guest = FakeSSHSession()
    guest.on(
        ["mount"], exit_code=32, stderr="mount: /srv: wrong fs type, bad option, bad superblock\n"
    )
    sf = VBoxSF(sim.vbm, "vmkit-lab", lambda: guest)
    tag = share_tag("/srv")
    mark = sim.mark()
    with pytest.raises(GuestCommandFailed, match="wrong fs type"):
        sf.add(ShareSpec(source=str(tmp_path), target="/srv"))
    assert sim.since(mark) == [
        [
            "sharedfolder",
            "add",
            "vmkit-lab",
            "--name",
            tag,
            "--hostpath",
            str(tmp_path),
            "--transient",
        ],
        ["sharedfolder", "remove", "vmkit-lab", "--name", tag, "--transient"],
    ]
    assert sim.vbm.info("vmkit-lab").folders == ()


def test_share_without_vboxsf_module(
    sim: Sim,
    provider: VirtualBoxProvider,
    box_disk: Path,
    tmp_path: Path,
) -> None:
    record = created(provider, box_disk)
    provider.start(record)
    guest = FakeSSHSession(modules=())
    sf = VBoxSF(sim.vbm, "vmkit-lab", lambda: guest)
    with pytest.raises(GuestModuleMissing) as e:
        sf.check()
    assert "SSH" in e.value.hint
    mark = sim.mark()
    with pytest.raises(GuestModuleMissing):
        sf.add(ShareSpec(source=str(tmp_path), target="/srv"))
    assert sim.since(mark) == []  # nothing to roll back: VirtualBox was never touched
    built_in = FakeSSHSession(modules=(), builtin_filesystems=("ext4", "vboxsf"))
    VBoxSF(sim.vbm, "vmkit-lab", lambda: built_in).check()


def test_docker_machine_share_is_reported(
    sim: Sim,
    provider: VirtualBoxProvider,
    tmp_path: Path,
) -> None:
    users = tmp_path / "Users"
    users.mkdir()
    sim.make_docker_machine_vm("default", 50022, users)
    sim.vbm("startvm", "default", "--type", "headless")
    guest = FakeSSHSession(builtin_filesystems=("ext4", "vboxsf"))  # boot2docker's Additions
    guest.dirs.add("/c/Users")
    guest.run(["mount", "-t", "vboxsf", "-o", "uid=1000,gid=50", "c/Users", "/c/Users"])
    sf = VBoxSF(sim.vbm, "default", lambda: guest)
    assert sf.active() == [ShareSpec(str(users), "/c/Users", mechanism="vboxsf", tag="c/Users")]


def test_backend_is_vboxmanage_without_sdk() -> None:
    assert backend() == "vboxmanage"


def test_fake_ssh_session_guest() -> None:
    guest = FakeSSHSession()
    with pytest.raises(TypeError):
        guest.run("mount -a")  # type: ignore[arg-type]
    guest.on(["docker", "info"], stdout="ok\n", once=True)
    assert guest.run(["docker", "info"]).stdout == "ok\n"
    assert guest.run(["docker", "info"]).stdout == ""  # the scripted answer was used up
    r = guest.run(["mount", "-t", "tmpfs", "x", "/nope"], check=False)
    assert r.exit_code == 32 and "does not exist" in r.stderr
    guest.run(["mkdir", "-p", "--", "/a b/c"], sudo=True)
    guest.run(["mount", "-t", "tmpfs", "-o", "size=1m", "x", "/a b/c"], sudo=True)
    assert "x /a\\040b/c tmpfs size=1m 0 0" in guest.run(["cat", "/proc/self/mounts"]).stdout
    with pytest.raises(GuestCommandFailed) as e:
        guest.run(["modprobe", "nosuch"], sudo=True)
    assert e.value.argv == ["sudo", "-n", "--", "modprobe", "nosuch"]
    assert guest.calls[-1].sudo and guest.calls[-1].argv == ["modprobe", "nosuch"]
    guest.close()
    with pytest.raises(SSHError):
        guest.run(["true"])


def test_too_old_virtualbox_and_missing_vboxmanage(
    sim: Sim, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VBOXSIM_VERSION", "4.3.40r117218")
    record = VMRecord(name="lab", provider="virtualbox")
    with pytest.raises(ProviderError, match=r"VirtualBox 4\.3\.40 is too old") as e:
        VirtualBoxProvider(VBoxManage(sim.vbm.path)).status(record)
    assert "upgrade" in e.value.hint
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.delenv("VMKIT_VBOXMANAGE", raising=False)
    monkeypatch.setattr(
        "vmkit.providers.virtualbox.discover.candidates", lambda env, plat: [str(tmp_path / "no")]
    )
    with pytest.raises(ToolMissing, match="VBoxManage"):
        VirtualBoxProvider().status(record)


def test_aborted_vm_is_broken_with_the_log_reason(
    provider: VirtualBoxProvider, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    logs = tmp_path / "Logs"
    logs.mkdir()
    (logs / "VBox.log").write_text(
        "00:00:00.1 VirtualBox VM 7.0.14\n"
        "00:00:05.2 !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n"
        "00:00:05.3 Guru Meditation -2701 (VERR_TRPM_DONT_PANIC)\n"
    )
    text = f'name="vmkit-lab"\nUUID="{"1" * 8}-1111-1111-1111-{"1" * 12}"\nLogFldr="{logs}"\nVMState="aborted"\n'
    monkeypatch.setattr(provider.vbm, "find", lambda vm: parse_showvminfo(text))
    status = provider.status(VMRecord(name="lab", provider="virtualbox"))
    assert status.state is VMState.BROKEN and "aborted" in status.detail
    assert status.errors[-1].endswith("Guru Meditation -2701 (VERR_TRPM_DONT_PANIC)")


def test_backend_picks_pyvbox_only_with_the_sdk(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys
    import types

    monkeypatch.setitem(sys.modules, "vboxapi", types.ModuleType("vboxapi"))
    monkeypatch.setitem(sys.modules, "virtualbox", types.ModuleType("virtualbox"))
    assert backend() == "pyvbox"
    monkeypatch.setitem(sys.modules, "vboxapi", None)  # import fails, as here without the SDK
    assert backend() == "vboxmanage"
