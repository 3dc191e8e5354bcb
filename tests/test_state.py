import json
import multiprocessing
import re
from pathlib import Path

import pytest

from vmkit import state
from vmkit.errors import InvalidName, VMExists, VMNotFound
from vmkit.state import ForwardSpec, ShareSpec, SSHEndpoint, VMRecord


def test_round_trip(vmkit_home: Path) -> None:
    state.new_folder("a1")
    rec = VMRecord(
        name="a1",
        provider="qemu",
        box="vmkit-mini",
        ssh=SSHEndpoint("127.0.0.1", 2222, "vmkit", "/k", "ssh-ed25519 AAAA"),
        shares=[ShareSpec("/x y", "/x y", mechanism="virtiofs", tag="t")],
        forwards=[ForwardSpec(8888, 8888, mechanism="hostfwd")],
        extra={"accel": "tcg"},
    )
    state.save(rec)
    assert state.load("a1") == rec
    assert state.names() == ["a1"]


def test_new_folder_refuses_existing_and_bad_names(vmkit_home: Path) -> None:
    state.new_folder("b")
    with pytest.raises(VMExists):
        state.new_folder("b")
    for bad in ["", "Upper", "has space", "-lead", "a/b", "x" * 40, "ünï"]:
        with pytest.raises(InvalidName):
            state.new_folder(bad)


def test_missing_vm(vmkit_home: Path) -> None:
    with pytest.raises(VMNotFound):
        state.load("nope")


def test_folder_without_record_loads_as_incomplete(vmkit_home: Path) -> None:
    state.new_folder("crashed")
    rec = state.load("crashed")
    assert rec.extra.get("incomplete") is True


def test_garbled_record_loads_as_incomplete(vmkit_home: Path) -> None:
    files = state.new_folder("garbled")
    files.state.write_text('{"name": "garbled", "prov')
    assert state.load("garbled").extra.get("incomplete") is True


def _writer(home: str, n: int) -> None:
    import os

    os.environ["VMKIT_HOME"] = home
    from vmkit import state as st

    for _ in range(n):
        with st.locked("shared"):
            rec = st.load("shared")
            rec.forwards.append(ForwardSpec(10000 + len(rec.forwards), 1))
            st.save(rec)


def test_locked_updates_from_many_processes_lose_nothing(vmkit_home: Path) -> None:
    state.new_folder("shared")
    state.save(VMRecord(name="shared", provider="qemu"))
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(vmkit_home), 10)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    rec = state.load("shared")
    assert len(rec.forwards) == 40
    assert len({f.host_port for f in rec.forwards}) == 40
    # and the file on disk is valid JSON with no temp files left
    json.loads(rec.files.state.read_text())
    assert not list(rec.files.dir.glob(".*.tmp"))


def test_instance_files_are_distinct_and_documented(vmkit_home: Path) -> None:
    files = state.InstanceFiles.of("vm1")
    named = {
        attr: getattr(files, attr)
        for attr in dir(state.InstanceFiles)
        if isinstance(getattr(state.InstanceFiles, attr), property) and attr not in ("dir", "name")
    }
    named |= {
        attr: getattr(files, attr)("TAG")
        for attr in ("virtiofs_sock", "virtiofs_pid", "virtiofs_log", "virtiofs_root")
    }
    paths = list(named.values())
    assert len(set(paths)) == len(paths)
    assert all(p.parent == files.dir for a, p in named.items() if a != "lock")
    # vm.py ends helpers by globbing *.pid in the folder; qemu.pid is the VM itself.
    assert {p.name for p in paths if p.suffix == ".pid"} == {
        "qemu.pid", "agent.pid", "virtiofs-TAG.pid",
    }  # fmt: skip
    doc = (Path(__file__).resolve().parent.parent / "docs" / "architecture.md").read_text()
    folder_section = doc.split("## A VM folder", 1)[1].split("\n## ", 1)[0]
    quoted = re.findall(r"`([^`]+)`", folder_section)
    documented = {q for q in quoted if re.fullmatch(r"[a-z][\w-]*(\.[a-z0-9]+)?", q)}
    assert {p.name for a, p in named.items() if a != "lock"} == documented
