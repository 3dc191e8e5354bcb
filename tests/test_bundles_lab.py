"""A course lab in a bundle: checked when the bundle is made, rendered where it is loaded."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from vmkit import bundles, labs
from vmkit.bundles import lab as bundle_lab
from vmkit.errors import FileDamaged, InvalidInput
from vmkit.labs import RosterInvalid

ROSTER = "name,email,machine\nZoë O'Brien,zoe@uni.example,\nAlan Turing,,turing\nAda Lovelace,,\n"


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("VMKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("VMKIT_HOME", str(tmp_path / "home"))
    roster = tmp_path / "students.csv"
    roster.write_text(ROSTER, encoding="utf-8")
    return tmp_path


def _make(env: Path, template: str = "docker-host") -> bundles.Bundle:
    spec = bundle_lab.make(template, env / "students.csv", name="week1")
    return bundles.create(env / "usb" / "course", lab=spec)


def test_a_lab_goes_in_as_one_checked_file_and_the_readme_lists_the_machines(env: Path) -> None:
    made = _make(env)
    (item,) = made.items
    assert (item.kind, item.file, item.name, item.label) == (
        "lab",
        "lab/lab.json",
        "week1",
        "lab week1",
    )
    spec = bundle_lab.read(made.path(item))
    assert spec.template == "docker-host" and spec.template_text == ""
    assert [s.machine for s in spec.students] == ["zoe-obrien", "turing", "ada-lovelace"]
    readme = (made.dir / "README.txt").read_text()
    assert "turing" in readme and "Ada Lovelace" in readme and "--student YOUR_MACHINE" in readme
    assert bundles.verify(made.dir).items == made.items
    # Only the throw-away check render touched a port registry: the teacher's has nothing.
    assert not (env / "home" / "lab-ports.json").exists()


def test_load_renders_the_whole_class_then_skips_it(env: Path) -> None:
    made = _make(env)
    out = env / "students-machine" / "week1"
    report = bundles.load(made.dir, lab_dir=out)
    assert report.loaded == ["lab week1"] and report.lab_dir == out.resolve()
    lab = labs.LabManifest.load(out)
    assert lab.lab == "week1" and lab.box == "vmkit-mini"
    assert sorted(s.machine for s in lab.students) == ["ada-lovelace", "turing", "zoe-obrien"]
    assert 'm.vm.box = "vmkit-mini"' in (out / "turing" / "Vagrantfile").read_text()
    # The ports are registered on the machine that loaded the lab.
    assert str(out.resolve()) in (env / "home" / "lab-ports.json").read_text()
    again = bundles.load(made.dir, lab_dir=out)
    assert again.loaded == [] and again.skipped == ["lab week1"]


def test_a_student_renders_only_their_machine(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    made = _make(env)
    monkeypatch.chdir(env)
    report = bundles.load(made.dir, students=["Alan Turing"])
    assert report.lab_dir == (env / "week1").resolve()
    assert [s.machine for s in labs.LabManifest.load(env / "week1").students] == ["turing"]
    assert not (env / "week1" / "zoe-obrien").exists()


def test_an_unknown_student_is_refused_before_anything_is_loaded(env: Path) -> None:
    made = _make(env)
    with pytest.raises(InvalidInput, match="lab week1 has no student 'bob'") as e:
        bundles.load(made.dir, lab_dir=env / "out", students=["bob"])
    assert "turing" in (e.value.hint or "")
    assert not (env / "out").exists()


def test_a_student_needs_a_bundle_with_a_lab(env: Path) -> None:
    src = env / "x.box"
    src.write_bytes(b"box")
    made = bundles.create(env / "usb" / "nolab", vagrant_boxes=[src])
    with pytest.raises(InvalidInput, match="has no course lab"):
        bundles.load(made.dir, students=["turing"])


def test_a_bad_roster_is_refused_before_the_bundle_is_made(env: Path) -> None:
    (env / "students.csv").write_text("name\nAda\nAda\n", encoding="utf-8")
    with pytest.raises(RosterInvalid, match="line 3"):
        bundle_lab.make("docker-host", env / "students.csv", name="week1")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "vmkit",
            "bundle",
            "create",
            str(env / "usb" / "c"),
            "--lab",
            "docker-host",
            "--roster",
            str(env / "students.csv"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**_environ(env)},
    )
    assert r.returncode == 1 and "line 3" in r.stderr and "Traceback" not in r.stderr
    assert not (env / "usb").exists()


def test_lab_and_roster_go_together(env: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "vmkit", "bundle", "create", str(env / "usb"), "--lab", "oommf"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**_environ(env)},
    )
    assert r.returncode == 2 and "--lab and --roster go together" in r.stderr


def test_a_teachers_own_template_travels_in_the_bundle(env: Path) -> None:
    own = env / "mine.j2"
    own.write_text(
        '# mine\nVagrant.configure("2") do |config|\n  config.vm.define {{ machine }} do |m|\n'
        '{% include "_machine.j2" %}\n  end\nend\n',
        encoding="utf-8",
    )
    spec = bundle_lab.make(str(own), env / "students.csv", name="week2", box="sage/box")
    made = bundles.create(env / "usb" / "own", lab=spec)
    own.unlink()  # the student's machine never had it
    out = env / "lab2"
    bundles.load(made.dir, lab_dir=out)
    text = (out / "turing" / "Vagrantfile").read_text()
    assert text.startswith("# mine") and "week2" in text and '"sage/box"' in text


def test_a_changed_lab_file_is_named(env: Path) -> None:
    made = _make(env)
    path = made.dir / "lab" / "lab.json"
    data = json.loads(path.read_text())
    data["roster_csv"] = data["roster_csv"].replace("Turing", "Turinx")
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    with pytest.raises(FileDamaged, match=r"lab/lab\.json"):
        bundles.verify(made.dir)
    with pytest.raises(FileDamaged, match=r"lab/lab\.json"):
        bundles.load(made.dir, lab_dir=env / "out")
    assert not (env / "out").exists()


def _environ(env: Path) -> dict[str, str]:
    import os

    return {**os.environ, "VMKIT_CACHE": str(env / "cache"), "VMKIT_HOME": str(env / "home")}
