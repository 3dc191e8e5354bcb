"""QEMU provider pieces that need no VM: argv, usernet parsing, the QMP facade's errors."""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

import attrs
import pytest

from vmkit import state
from vmkit.errors import ProviderError, QMPError
from vmkit.providers.base import VMState
from vmkit.providers.qemu import QemuProvider
from vmkit.providers.qemu import provider as provider_mod
from vmkit.providers.qemu.argv import (
    QemuConfig,
    build_argv,
    parse_qemu_version,
    tcg_keeps_aslr,
)
from vmkit.providers.qemu.hostfwd import parse_usernet
from vmkit.providers.qemu.qmp import QMP
from vmkit.state import SSHEndpoint, VMRecord


def config(tmp_path: Path, accel: str = "tcg") -> QemuConfig:
    d = tmp_path / "odd, dir"
    return QemuConfig(
        name="t",
        cpus=2,
        memory=1024,
        accel=accel,
        kernel=d / "vmlinuz",
        initrd=d / "initrd.img",
        cmdline="root=LABEL=vmkit-root rw",
        disk=d / "disk.qcow2",
        seed=d / "seed.img",
        ssh_port=2222,
        qmp=d / "qmp.sock",
        pidfile=d / "qemu.pid",
        serial_log=d / "serial.log",
    )


def test_argv_tcg(tmp_path: Path) -> None:
    argv = build_argv("qemu-system-x86_64", config(tmp_path))
    joined = " ".join(argv)
    assert "tcg,thread=multi,tb-size=256" in joined and "-cpu max" in joined
    assert "memory-backend-memfd,id=mem,size=1024M,share=on" in joined
    assert "hostfwd=tcp:127.0.0.1:2222-:22" in joined
    # commas in paths are doubled inside QEMU option values
    assert any("odd,, dir/disk.qcow2" in a for a in argv)
    assert "-daemonize" in argv


def test_argv_kvm(tmp_path: Path) -> None:
    argv = build_argv("qemu-system-x86_64", config(tmp_path, "kvm"))
    assert argv[argv.index("-accel") + 1] == "kvm" and argv[argv.index("-cpu") + 1] == "host"


def test_kernel_cmdline_adds_only_what_the_machine_needs(tmp_path: Path) -> None:
    x86 = config(tmp_path)
    assert opt(build_argv("qemu-system-x86_64", x86), "-append") == (
        "root=LABEL=vmkit-root rw acpi=noirq"
    )
    off = attrs.evolve(x86, aslr=False)
    assert opt(build_argv("qemu-system-x86_64", off), "-append").split()[-2:] == [
        "acpi=noirq",
        "norandmaps",
    ]
    arm = attrs.evolve(x86, arch="arm64")
    assert opt(build_argv("qemu-system-aarch64", arm), "-append") == "root=LABEL=vmkit-root rw"


@pytest.mark.parametrize(
    ("arch", "version", "keeps"),
    [
        ("amd64", (7, 2), False),
        ("i386", (7, 2), False),
        ("amd64", (8, 0), True),
        ("amd64", (9, 1), True),
        ("arm64", (7, 2), True),
        ("amd64", None, True),
    ],
)
def test_tcg_drops_aslr_only_where_qemu_retranslates(
    arch: str, version: tuple[int, int] | None, keeps: bool
) -> None:
    assert tcg_keeps_aslr(arch, version) is keeps


def test_parse_qemu_version() -> None:
    debian = "QEMU emulator version 7.2.19 (Debian 1:7.2+dfsg-7+deb12u16)\nCopyright (c) 2003"
    assert parse_qemu_version(debian) == (7, 2)
    assert parse_qemu_version("QEMU emulator version 10.1.0") == (10, 1)
    assert parse_qemu_version("usage: fake") is None


def opt(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def test_argv_arm64_tcg_on_linux(tmp_path: Path) -> None:
    c = attrs.evolve(config(tmp_path), arch="arm64", host_os="linux")
    argv = build_argv("qemu-system-aarch64", c)
    assert opt(argv, "-machine") == "virt,memory-backend=mem"
    assert opt(argv, "-cpu") == "max,pauth-impdef=on"
    # Empty root ports for hot-plugged virtio-fs devices: virt's root bus takes none.
    ports = [a for a in argv if a.startswith("pcie-root-port,")]
    assert ports == [f"pcie-root-port,id=vmkit-hp{i},chassis={i + 1}" for i in range(4)]
    assert "-daemonize" in argv


@pytest.mark.parametrize(("memory", "highmem"), [(1024, "highmem=off"), (8192, "highmem=on")])
def test_argv_arm64_hvf_on_macos(tmp_path: Path, memory: int, highmem: str) -> None:
    c = attrs.evolve(config(tmp_path, "hvf"), arch="arm64", host_os="darwin", memory=memory)
    argv = build_argv("qemu-system-aarch64", c)
    # No memfd on macOS (and no virtio-fs to need shared RAM).
    assert opt(argv, "-machine") == f"virt,{highmem}"
    assert not any("memory-backend" in a for a in argv)
    assert (opt(argv, "-accel"), opt(argv, "-cpu")) == ("hvf", "host")
    assert opt(argv, "-qmp").startswith("unix:")


def test_argv_intel_mac_hvf(tmp_path: Path) -> None:
    c = attrs.evolve(config(tmp_path, "hvf"), host_os="darwin")
    argv = build_argv("qemu-system-x86_64", c)
    assert opt(argv, "-machine") == "pc"
    assert (opt(argv, "-accel"), opt(argv, "-cpu")) == ("hvf", "host")


def test_argv_whpx_on_windows(tmp_path: Path) -> None:
    c = attrs.evolve(config(tmp_path, "whpx"), host_os="win32", qmp=4444)
    argv = build_argv("qemu-system-x86_64.exe", c)
    assert opt(argv, "-accel") == "whpx,kernel-irqchip=off"
    assert "-cpu" not in argv  # WHPX has no "host" model
    assert "-daemonize" not in argv
    assert opt(argv, "-qmp") == "tcp:127.0.0.1:4444,server=on,wait=off"
    assert opt(argv, "-machine") == "pc"


USERNET = """\
Hub -1 (net0):
  Protocol[State]    FD  Source Address  Port   Dest. Address  Port RecvQ SendQ
  TCP[HOST_FORWARD]  19       127.0.0.1 18080       10.0.2.15  8080     0     0
  UDP[HOST_FORWARD]  20         0.0.0.0  5353       10.0.2.15    53     0     0
  TCP[ESTABLISHED]   22       10.0.2.15 55034       10.0.2.2     22     0     0
  TCP[HOST_FORWARD]  12       127.0.0.1 41421       10.0.2.15    22     0     0
"""


def test_parse_usernet() -> None:
    assert parse_usernet(USERNET) == [
        ("tcp", "127.0.0.1", 18080, 8080),
        ("udp", "0.0.0.0", 5353, 53),
        ("tcp", "127.0.0.1", 41421, 22),
    ]


def test_qmp_missing_socket_is_a_qmp_error(tmp_path: Path) -> None:
    with pytest.raises(QMPError, match="does not exist"):
        QMP(tmp_path / "nope.sock").connect()


def test_qmp_silent_peer_times_out_as_qmp_error(tmp_path: Path) -> None:
    path = tmp_path / "q.sock"
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(str(path))
    srv.listen(1)
    held: list[socket.socket] = []
    threading.Thread(target=lambda: held.append(srv.accept()[0]), daemon=True).start()
    try:
        with pytest.raises(QMPError):
            QMP(path, timeout=0.5).connect()
    finally:
        srv.close()
        for c in held:
            c.close()


def test_start_refuses_a_rebuilt_box(
    vmkit_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    folder = cache / "boxes" / "vmkit-mini" / "amd64"
    folder.mkdir(parents=True)
    for f in ("disk.qcow2", "vmlinuz", "initrd.img"):
        (folder / f).write_bytes(b"x")
    manifest = {
        "format": 1,
        "name": "vmkit-mini",
        "arch": "amd64",
        "cmdline": "x",
        "root_label": "vmkit-root",
        "files": {"vmlinuz": {}, "initrd.img": {}, "disk.qcow2": {"sha256": "new"}},
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    monkeypatch.setenv("VMKIT_CACHE", str(cache))
    state.new_folder("old")
    rec = VMRecord(
        name="old",
        provider="qemu",
        box="vmkit-mini",
        extra={"box_disk_sha256": "old", "kernel": "k", "initrd": "i", "cmdline": "c"},
    )
    state.save(rec)
    with pytest.raises(ProviderError, match="rebuilt"):
        QemuProvider().start(rec, lambda _: None)


class FakeMonitor:
    """Takes ``device_add`` into the root ports not listed in ``busy``; records what was sent."""

    def __init__(self, busy: set[str]) -> None:
        self.busy = busy
        self.sent: list[dict[str, object]] = []

    def execute(self, cmd: str, args: dict[str, object]) -> dict[str, object]:
        self.sent.append(args)
        if args.get("bus") in self.busy:
            raise QMPError(
                f"PCI: slot 0 function 0 not available for vhost-user-fs-pci ({args['bus']})"
            )
        return {}


@pytest.mark.parametrize(
    ("arch", "busy", "bus"),
    [
        ("amd64", set(), None),  # the pc machine's root bus takes hot-plugged devices
        ("arm64", set(), "vmkit-hp0"),
        ("arm64", {"vmkit-hp0", "vmkit-hp1"}, "vmkit-hp2"),
    ],
)
def test_virtiofs_device_goes_into_a_free_root_port_on_arm(
    tmp_path: Path, arch: str, busy: set[str], bus: str | None
) -> None:
    from vmkit.providers.qemu.virtiofs import VirtioFS

    record = VMRecord(name="t", provider="qemu", box="vmkit-mini", arch=arch)
    monitor = FakeMonitor(busy)
    VirtioFS(record, lambda: None)._device_add(monitor, "tag1")  # type: ignore[arg-type]
    assert monitor.sent[-1].get("bus") == bus
    assert monitor.sent[-1]["driver"] == "vhost-user-fs-pci"


def test_virtiofs_with_every_root_port_taken_says_qemus_error() -> None:
    from vmkit.providers.qemu.virtiofs import VirtioFS

    record = VMRecord(name="t", provider="qemu", box="vmkit-mini", arch="arm64")
    monitor = FakeMonitor({f"vmkit-hp{i}" for i in range(4)})
    with pytest.raises(QMPError, match="not available"):
        VirtioFS(record, lambda: None)._device_add(monitor, "tag1")  # type: ignore[arg-type]
    assert len(monitor.sent) == 4


def test_status_asks_the_guest_only_when_told(
    vmkit_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Running:
        def __enter__(self) -> Running:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

        def execute(self, cmd: str) -> dict[str, str]:
            assert cmd == "query-status"
            return {"status": "running"}

    banners: list[int] = []

    def read_banner(host: str, port: int, timeout: float) -> str:
        banners.append(port)
        return "SSH-2.0-OpenSSH_9.2p1"

    monkeypatch.setattr(provider_mod, "read_banner", read_banner)
    monkeypatch.setattr(provider_mod.QMP, "for_vm", lambda record, timeout: Running())
    monkeypatch.setattr(QemuProvider, "_pid", lambda self, record: 4242)
    state.new_folder("booting")
    rec = VMRecord(
        name="booting",
        provider="qemu",
        box="vmkit-mini",
        ssh=SSHEndpoint("127.0.0.1", 2222, "vmkit", "k", "ssh-ed25519 AAAA"),
    )
    state.save(rec)
    # A boot probe connects itself: the hypervisor's word only, no connection to the guest.
    quiet = QemuProvider().status(rec, ask_guest=False)
    assert (quiet.state, quiet.pid, banners) == (VMState.STARTING, 4242, [])
    assert QemuProvider().status(rec).state is VMState.RUNNING
    assert banners == [2222]
