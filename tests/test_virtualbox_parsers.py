"""Parsers, version and discovery, on the real recorded VBoxManage outputs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vmkit.errors import ProviderError, ToolMissing
from vmkit.providers.virtualbox.discover import candidates, check_series, find_vboxmanage, version
from vmkit.providers.virtualbox.parsers import (
    NatRule,
    SharedFolder,
    parse_guestproperty,
    parse_list_vms,
    parse_pairs,
    parse_showvminfo,
    parse_version,
)

FIXTURES = Path(__file__).parent / "fixtures" / "vbox"


def fixture_text(name: str) -> str:
    return (FIXTURES / name).read_text(encoding="utf-8")


def test_showvminfo_running_vagrant() -> None:
    info = parse_showvminfo(fixture_text("showvminfo-machinereadable-running-vagrant.out"))
    assert info.name == "urfve6cb85a2_default_1458910687825_39001"
    assert info.uuid == "295e77c3-d922-4849-93de-4422b8c08880"
    assert info.state == "running" and info.running
    assert (info.memory, info.cpus, info.ostype) == (2048, 2, "Ubuntu (64-bit)")
    assert info.nics == {1: "nat"}
    assert info.rules == (
        NatRule(1, "ssh", "tcp", "127.0.0.1", 2200, "", 22),
        NatRule(1, "tcp56790", "tcp", "", 2201, "", 56789),
        NatRule(1, "tcp56791", "tcp", "", 2202, "", 56787),
    )
    assert info.folders == (
        SharedFolder("vagrant", "/Users/rjeczalik/.vagrant.d/foobaz/urfve6cb85a2", False),
    )
    assert info.session == "headless"
    # Odd lines survive as raw values instead of breaking the parse.
    assert info.raw["VideoMode"] == '"720,400,0"@0,0 1'
    assert info.raw["GuestAdditionsFacility_VirtualBox Base Driver"] == "50,1458910695598"
    assert info.raw["SATAController-0-0"].endswith("box-disk1.vmdk")


def test_showvminfo_saved_go_virtualbox() -> None:
    info = parse_showvminfo(fixture_text("showvminfo-machinereadable-saved-go-virtualbox.out"))
    assert info.state == "saved" and not info.running
    assert info.uuid == "37f5d336-bf07-48dd-947c-37e6a56420a7"
    assert info.rules == (NatRule(1, "ssh", "tcp", "127.0.0.1", 2222, "", 22),)
    assert info.raw["vrdeproperty[VideoChannel/Enabled]"] == "<not set>"
    assert info.raw["SATA Controller-ImageUUID-0-0"] == "32583b48-693e-45d4-882f-e9196d4f43c6"


def test_showvminfo_7_0_nics_and_docker_machine_fragment() -> None:
    info = parse_showvminfo(fixture_text("showvminfo-machinereadable-nics-7.0-vagrant.out"))
    assert info.nics == {1: "nat", 2: "hostonlynetwork"}
    assert info.rules_of(1) == [NatRule(1, "ssh", "tcp", "127.0.0.1", 2222, "", 22)]
    frag = parse_showvminfo(fixture_text("showvminfo-machinereadable-fragment-docker-machine.out"))
    assert (frag.memory, frag.cpus, frag.nics) == (1024, 2, {1: "nat"})
    assert frag.raw["SATA-IsEjected"] == "off"
    assert frag.state == "" and frag.name == ""


def test_showvminfo_windows_line_endings_7x_quirks_and_escapes() -> None:
    text = (
        'name="a \\"quoted\\" VM"\r\n'
        "Encryption:     disabled\r\n"
        'UUID="11111111-2222-3333-4444-555555555555"\r\n'
        'VMState="aborted"\r\n'
        "memory=512\r\n"
        'nic1="nat"\r\n'
        'Forwarding(0)="ssh,tcp,,2222,,22"\r\n'
        'Forwarding(1)="web, with comma,udp,127.0.0.1,8080,,80"\r\n'
        'nic2="nat"\r\n'
        'Forwarding(0)="other,tcp,127.0.0.1,9000,,9000"\r\n'
        'nic3="none"\r\n'
        " rec_screen0\r\n"
        "VRDEClients==0\r\n"
        'SharedFolderNameTransientMapping1="vmkit_abc"\r\n'
        'SharedFolderPathTransientMapping1="C:\\Users\\me\\my data"\r\n'
        '"weird=key"="v"\r\n'
        'SomeFutureKey="x"\r\n'
    )
    info = parse_showvminfo(text)
    assert info.name == 'a "quoted" VM'
    assert info.state == "aborted" and info.memory == 512
    assert info.nics == {1: "nat", 2: "nat"}
    assert info.rules_of(1)[1] == NatRule(1, "web, with comma", "udp", "127.0.0.1", 8080, "", 80)
    assert info.rules_of(2) == [NatRule(2, "other", "tcp", "127.0.0.1", 9000, "", 9000)]
    # Old releases print Windows paths raw: a backslash before a letter is kept.
    assert info.folders == (SharedFolder("vmkit_abc", "C:\\Users\\me\\my data", True),)
    assert info.raw["VRDEClients"] == "=0"
    assert info.raw["weird=key"] == "v" and info.raw["SomeFutureKey"] == "x"
    assert "Encryption:     disabled" not in "".join(k for k, _ in parse_pairs(text))


def test_list_vms_fixtures_and_odd_names() -> None:
    assert parse_list_vms(fixture_text("list-vms.out")) == [
        ("Ubuntu", "2e16b1fc-675d-4a7a-a9a1-e89a8bde7874"),
        ("go-virtualbox", "def44546-e3da-4902-8d15-b91c99c80cbc"),
    ]
    vagrant = parse_list_vms(fixture_text("list-vms-vagrant.out"))
    assert len(vagrant) == 10 and vagrant[0] == (
        "boot2docker-vm",
        "d4d92435-7863-43ab-9a4a-1b24654abcd8",
    )
    odd = (
        "WARNING: The vboxdrv kernel module is not loaded.\r\n"
        '"my "lab" VM" {AAAAAAAA-bbbb-cccc-dddd-eeeeeeeeeeee}\r\n'
        '"Übung 1 $(x)" {11111111-2222-3333-4444-555555555555}\n'
    )
    assert parse_list_vms(odd) == [
        ('my "lab" VM', "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"),
        ("Übung 1 $(x)", "11111111-2222-3333-4444-555555555555"),
    ]


def test_guestproperty() -> None:
    assert parse_guestproperty(fixture_text("guestproperty-get.out")) == "Baz"
    assert parse_guestproperty(fixture_text("guestproperty-get-novalue.out")) is None
    assert (
        parse_guestproperty("Value: 10.0.2.15\r\nTimestamp: 1\r\nFlags: TRANSRESET\r\n")
        == "10.0.2.15"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (fixture_text("version-5.2.out"), (5, 2, 44, 139111)),
        (fixture_text("version-6.0.out"), (6, 0, 24, 139119)),
        (fixture_text("version-7.0.out"), (7, 0, 14, 161095)),
        ("6.1.50_Debianr161033\n", (6, 1, 50, 161033)),
        ("7.1.4r165100\r\n", (7, 1, 4, 165100)),
        (
            "WARNING: The vboxdrv kernel module is not loaded.\n6.1.38_Ubuntur153438\n",
            (6, 1, 38, 153438),
        ),
        ("7.0.14\n", (7, 0, 14, 0)),
    ],
)
def test_version(text: str, expected: tuple[int, int, int, int]) -> None:
    v = parse_version(text)
    assert v is not None
    assert (v.major, v.minor, v.patch, v.revision) == expected


def test_version_garbage_and_too_old() -> None:
    assert parse_version("VBoxManage: error: something\n") is None
    check_series((5, 2), "5.2.44")
    check_series((5, 1), "5.1.38")
    check_series((5, 0), "5.0.40")
    with pytest.raises(ProviderError, match=r"4\.3\.40 is too old.*5\.0 or newer") as e:
        check_series((4, 3), "4.3.40")
    assert "upgrade" in e.value.hint


def _exe(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\necho 7.0.14r161095\n")
    path.chmod(0o755)
    return str(path)


def test_find_on_path_and_lowercase(tmp_path: Path) -> None:
    upper = _exe(tmp_path / "a" / "VBoxManage")
    lower = _exe(tmp_path / "b" / "vboxmanage")
    assert find_vboxmanage(environ={"PATH": str(tmp_path / "a")}, platform="linux") == upper
    assert find_vboxmanage(environ={"PATH": str(tmp_path / "b")}, platform="linux") == lower


def test_find_windows_and_macos_locations(tmp_path: Path) -> None:
    env = {"PATH": str(tmp_path), "VBOX_MSI_INSTALL_PATH": "D:\\Apps\\VirtualBox\\"}
    assert candidates(env, "win32")[0] == "D:\\Apps\\VirtualBox\\VBoxManage.exe"
    assert candidates({}, "win32") == ["C:\\Program Files\\Oracle\\VirtualBox\\VBoxManage.exe"]
    seen: list[str] = []

    def is_file(p: str) -> bool:
        seen.append(p)
        return p.startswith("/Applications/")

    found = find_vboxmanage(environ={"PATH": str(tmp_path)}, platform="darwin", is_file=is_file)
    assert found == "/Applications/VirtualBox.app/Contents/MacOS/VBoxManage"
    assert (
        find_vboxmanage(
            environ=env, platform="win32", is_file=lambda p: p.endswith("VBoxManage.exe")
        )
        == "D:\\Apps\\VirtualBox\\VBoxManage.exe"
    )


def test_missing_gives_toolmissing_with_hint(tmp_path: Path) -> None:
    with pytest.raises(ToolMissing) as e:
        find_vboxmanage(environ={"PATH": str(tmp_path)}, platform="linux", is_file=lambda p: False)
    assert "virtualbox.org" in e.value.hint and "QEMU" in e.value.hint
    with pytest.raises(ToolMissing, match="nope"):
        find_vboxmanage(environ={"VMKIT_VBOXMANAGE": str(tmp_path / "nope")})
    override = _exe(tmp_path / "custom" / "vbm")
    assert find_vboxmanage(environ={"VMKIT_VBOXMANAGE": override, "PATH": os.defpath}) == override


def test_discover_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    good = tmp_path / "good"
    good.mkdir()
    (good / "VBoxManage").write_text(
        "#!/bin/sh\necho 'WARNING: vboxdrv not loaded'\necho 6.1.50_Debianr161033\n"
    )
    (good / "VBoxManage").chmod(0o755)
    monkeypatch.setenv("PATH", str(good))
    monkeypatch.delenv("VMKIT_VBOXMANAGE", raising=False)
    assert version() == (6, 1, 50)
    bad = _exe(tmp_path / "bad" / "VBoxManage")
    Path(bad).write_text("#!/bin/sh\necho Oracle VM VirtualBox\n")
    with pytest.raises(ProviderError, match="cannot tell the VirtualBox version"):
        version(bad)
