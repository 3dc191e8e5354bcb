"""Course labs: roster checks, rendering (speed, unique ports across labs), running many VMs."""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from vmkit import labs
from vmkit.errors import AlreadyExists, InvalidInput, PortInUse
from vmkit.labs import roster
from vmkit.providers.base import VMState


@pytest.fixture(autouse=True)
def own_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "vmkit-home"
    monkeypatch.setenv("VMKIT_HOME", str(home))
    return home


def write_roster(path: Path, n: int, extra: str = "") -> Path:
    rows = ["name,email"] + [f'"Student {i:02d}, O\'Brien",s{i}@uni.example' for i in range(n)]
    path.write_text("\n".join(rows) + "\n" + extra, encoding="utf-8")
    return path


# -- roster -------------------------------------------------------------------------------


def test_roster_names_machines_from_people(tmp_path: Path) -> None:
    csv = tmp_path / "r.csv"
    csv.write_text(
        "\ufeffStudent,Email\nZoë O'Brien,z@x\n\n 张伟 Li ,\nAnna-Lena  Groß,a@x\n",
        encoding="utf-8",
    )
    students = roster.read(csv)
    assert [(s.line, s.machine) for s in students] == [
        (2, "zoe-obrien"),
        (4, "li"),
        (5, "anna-lena-gro"),
    ]
    assert students[0].name == "Zoë O'Brien"
    assert students[0].email == "z@x"


def test_roster_reports_every_bad_line_at_once(tmp_path: Path) -> None:
    csv = tmp_path / "r.csv"
    csv.write_text(
        "name,machine\n"
        "Ada Lovelace,\n"  # 2 fine
        ",ghost\n"  # 3 empty name (a row of only commas is a blank row, skipped)
        "Alan Turing,alan/t\n"  # 4 slash: Vagrant rejects it
        "ada lovelace,\n"  # 5 same machine as line 2
        "张伟,\n"  # 6 nothing left to name a machine
        "Grace Hopper,Grace{H}\n",  # 7 braces and capitals
        encoding="utf-8",
    )
    with pytest.raises(labs.RosterInvalid) as err:
        roster.read(csv)
    assert err.value.lines == [3, 4, 5, 6, 7]
    text = str(err.value)
    assert "line(s) 3, 4, 5, 6, 7" in text
    assert "line 5: machine name 'ada-lovelace' (ada lovelace) is already used on line 2" in text
    assert "'alan/t' has characters Vagrant" in text
    assert "line 6: no machine name can be made" in text


def test_roster_without_name_column_or_students(tmp_path: Path) -> None:
    csv = tmp_path / "r.csv"
    csv.write_text("first,last\nAda,Lovelace\n", encoding="utf-8")
    with pytest.raises(InvalidInput, match="has no `name` column"):
        roster.read(csv)
    csv.write_text("name\n\n", encoding="utf-8")
    with pytest.raises(InvalidInput, match="lists no students"):
        roster.read(csv)
    with pytest.raises(InvalidInput, match="does not exist"):
        roster.read(tmp_path / "missing.csv")


# -- render -------------------------------------------------------------------------------


def test_render_30_students_fast_with_unique_names_and_ports(tmp_path: Path) -> None:
    csv = write_roster(tmp_path / "students.csv", 30)
    started = time.monotonic()
    manifest = labs.render("oommf", csv, tmp_path / "Physics 101", port_range=(21000, 21999))
    elapsed = time.monotonic() - started
    assert elapsed < 5, elapsed
    assert len(manifest.students) == 30
    assert manifest.lab == "physics-101"
    machines = [s.machine for s in manifest.students]
    assert len(set(machines)) == 30
    ports = [p for s in manifest.students for p in s.ports.values()]
    assert len(ports) == 60 == len(set(ports))
    assert all(21000 <= p <= 21999 for p in ports)
    first = manifest.students[0]
    folder = tmp_path / "Physics 101" / first.folder
    text = (folder / "Vagrantfile").read_text(encoding="utf-8")
    assert f'host: {first.ports["jupyter"]}, host_ip: "127.0.0.1"' in text
    assert f'vb.name = "physics-101-{first.machine}"' in text
    assert "Student 00, O'Brien" in text
    readme = (folder / "README.txt").read_text(encoding="utf-8")
    assert f"http://127.0.0.1:{first.ports['jupyter']}" in readme
    assert (folder / "work").is_dir()
    assert labs.LabManifest.load(tmp_path / "Physics 101") == manifest


def test_rendered_lab_passes_vagrant_validate(tmp_path: Path) -> None:
    csv = tmp_path / "r.csv"
    csv.write_text('name\n"Séan ""The Quote"" O\'Neill #{x}"\n', encoding="utf-8")
    m = labs.render("course-lab", csv, tmp_path / "lab", libvirt_driver="qemu")
    project = tmp_path / "lab" / m.students[0].folder
    env = dict(os.environ, VAGRANT_DEFAULT_PROVIDER="libvirt", VAGRANT_CWD=str(project))
    done = subprocess.run(
        ["vagrant", "validate"], capture_output=True, text=True, env=env, timeout=120, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_ports_in_use_on_127_0_0_1_are_skipped(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        csv = write_roster(tmp_path / "r.csv", 1)
        m = labs.render("docker-host", csv, tmp_path / "lab", port_range=(port, port + 5))
    assert port not in m.students[0].ports.values()
    assert min(m.students[0].ports.values()) == port + 1


def _render_in_process(args: tuple[str, str, str]) -> list[int]:
    home, csv, out = args
    os.environ["VMKIT_HOME"] = home
    m = labs.render("oommf", Path(csv), Path(out), port_range=(22000, 22999))
    return [p for s in m.students for p in s.ports.values()]


def test_two_labs_on_one_host_never_collide(tmp_path: Path, own_home: Path) -> None:
    csv = write_roster(tmp_path / "r.csv", 10)
    # Two processes at once, one registry: the file lock must keep their ports apart.
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(2) as pool:
        a, b = pool.map(
            _render_in_process,
            [(str(own_home), str(csv), str(tmp_path / f"lab{i}")) for i in (1, 2)],
        )
    assert len(a) == len(b) == 20
    assert not set(a) & set(b)
    # A third lab, rendered later in this process, avoids both.
    c = labs.render("oommf", csv, tmp_path / "lab3", port_range=(22000, 22999))
    assert not {p for s in c.students for p in s.ports.values()} & (set(a) | set(b))
    assert len(labs.PortRegistry().allocations()) == 3


def test_registry_forgets_deleted_labs_and_released_ports(tmp_path: Path) -> None:
    csv = write_roster(tmp_path / "r.csv", 2)
    first = labs.render("docker-host", csv, tmp_path / "a", port_range=(23000, 23003))
    with pytest.raises(PortInUse, match="only 0 of the 4"):
        labs.render("docker-host", csv, tmp_path / "b", port_range=(23000, 23003))
    assert not (tmp_path / "b" / first.students[0].folder).exists()
    registry = labs.PortRegistry()
    assert list(registry.allocations()) == [str(tmp_path / "a")]
    released = registry.release(tmp_path / "a")
    assert sorted(released) == [23000, 23001, 23002, 23003]
    again = labs.render("docker-host", csv, tmp_path / "c", port_range=(23000, 23003))
    # A lab folder that was deleted gives its ports back at the next allocation.
    import shutil

    shutil.rmtree(tmp_path / "c")
    labs.render("docker-host", csv, tmp_path / "d", port_range=(23000, 23003))
    assert list(registry.allocations()) == [str(tmp_path / "d")]
    assert again.port_range == (23000, 23003)


def test_render_refuses_to_overwrite_and_bad_options(tmp_path: Path) -> None:
    csv = write_roster(tmp_path / "r.csv", 1)
    labs.render("docker-host", csv, tmp_path / "lab")
    with pytest.raises(AlreadyExists, match="holds a rendered lab already"):
        labs.render("docker-host", csv, tmp_path / "lab")
    with pytest.raises(InvalidInput, match="port range 80-90"):
        labs.render("docker-host", csv, tmp_path / "x", port_range=(80, 90))
    custom = tmp_path / "mine.Vagrantfile.j2"
    custom.write_text(
        'Vagrant.configure("2") do |c|\n  c.vm.box = {{ box }}\nend\n', encoding="utf-8"
    )
    with pytest.raises(InvalidInput, match="needs a box"):
        labs.render(custom, csv, tmp_path / "y")
    m = labs.render(custom, csv, tmp_path / "z", box="debian/bookworm64")
    assert m.box == "debian/bookworm64"
    labs.render("course-lab", csv, tmp_path / "u", box_url="file:///srv/vmkit-mini.json")
    student = (tmp_path / "u" / "student-00-obrien" / "Vagrantfile").read_text(encoding="utf-8")
    assert 'm.vm.box_url = "file:///srv/vmkit-mini.json"' in student
    with pytest.raises(InvalidInput, match="not a rendered lab"):
        labs.LabManifest.load(tmp_path / "nowhere")


# -- running a lab with a stand-in vagrant -------------------------------------------------

FAKE = textwrap.dedent(
    """\
    #!PYTHON
    import json, os, sys, time
    argv = sys.argv[1:]
    machine = os.path.basename(os.environ["VAGRANT_CWD"])
    with open(os.environ["FAKE_LOG"], "a") as log:
        log.write(json.dumps({"argv": argv, "machine": machine, "t": time.time(), "edge": "start"}) + "\\n")
    if argv[0] == "up":
        print(f"1,{machine},ui,info,==> {machine}: Booting", flush=True)
        time.sleep(0.5)
        if machine == os.environ.get("FAKE_BROKEN"):
            print("1,,error-exit,Vagrant::Errors::BoxNotFound,The box 'x' could not be found.")
            sys.exit(1)
    state = "running" if argv[0] in ("up", "status") else ("not_created" if argv[0] == "destroy" else "shutoff")
    if argv[0] == "status":
        state = open(os.environ["FAKE_STATE"]).read().strip()
    print(f"1,{machine},provider-name,libvirt\\n1,{machine},state,{state}\\n1,{machine},state-human-short,{state}")
    with open(os.environ["FAKE_LOG"], "a") as log:
        log.write(json.dumps({"argv": argv, "machine": machine, "t": time.time(), "edge": "end"}) + "\\n")
    """
).replace("PYTHON", sys.executable)


def test_lab_up_status_down_with_a_failing_student(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "vagrant").write_text(FAKE, encoding="utf-8")
    (bindir / "vagrant").chmod(0o755)
    log = tmp_path / "calls.jsonl"
    state = tmp_path / "state"
    state.write_text("running", encoding="utf-8")
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_LOG", str(log))
    monkeypatch.setenv("FAKE_STATE", str(state))
    csv = write_roster(tmp_path / "r.csv", 5)
    manifest = labs.render("docker-host", csv, tmp_path / "lab")
    broken = manifest.students[1].machine
    monkeypatch.setenv("FAKE_BROKEN", broken)

    events: list[labs.LabEvent] = []
    report = labs.up(tmp_path / "lab", parallel=2, progress=events.append)
    assert [o.machine for o in report.outcomes] == [s.machine for s in manifest.students]
    assert [o.machine for o in report.failed] == [broken]
    assert "could not be found" in report.failed[0].error
    assert all(o.state is VMState.RUNNING for o in report.outcomes if o.ok)
    assert {e.phase for e in events} == {"queued", "running", "done", "failed"}
    assert any(e.message == f"==> {broken}: Booting" for e in events)

    # Never more than 2 vagrant processes at once.
    calls = [json.loads(x) for x in log.read_text(encoding="utf-8").splitlines()]
    ups = [c for c in calls if c["argv"][0] == "up"]
    starts = {c["machine"]: c["t"] for c in ups if c["edge"] == "start"}
    # The broken machine's `up` has no end line: it ended when its status began (never) or at exit.
    ends = {c["machine"]: c["t"] for c in ups if c["edge"] == "end"}
    ends[broken] = starts[broken] + 0.5
    timeline = sorted([(t, 1) for t in starts.values()] + [(t, -1) for t in ends.values()])
    running = peak = 0
    for _, delta in timeline:
        running += delta
        peak = max(peak, running)
    assert len(starts) == 5
    assert peak == 2
    # The first machine comes up alone (it adds the box and its base volume).
    first = manifest.students[0].machine
    assert all(t >= ends[first] for m, t in starts.items() if m != first)

    state.write_text("shutoff", encoding="utf-8")
    st = labs.status(tmp_path / "lab", only=[broken])
    assert [o.state for o in st.outcomes] == [VMState.STOPPED]
    with pytest.raises(InvalidInput, match="no machine"):
        labs.status(tmp_path / "lab", only=["nobody"])

    state.write_text("not_created", encoding="utf-8")
    down = labs.down(tmp_path / "lab", destroy=True, parallel=3)
    assert down.ok
    assert labs.PortRegistry().allocations() == {}
