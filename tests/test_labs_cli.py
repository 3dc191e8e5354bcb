"""The lab and box commands, run through click as a user would (main.py wires them in)."""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from vmkit.cli import main
from vmkit.labs import LabFailed, RosterInvalid


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> click.Group:
    # The real command tree: click keeps each command's help option once it is built, so a
    # stand-in root without `-h` would change what later tests (tests/test_docs.py) see.
    monkeypatch.setenv("VMKIT_HOME", str(tmp_path / "home"))
    return main.cli


def test_lab_render_prints_ports_and_writes_the_lab(cli: click.Group, tmp_path: Path) -> None:
    roster = tmp_path / "students.csv"
    roster.write_text("name\nAda Lovelace\nAlan Turing\n", encoding="utf-8")
    out = tmp_path / "labs"
    result = CliRunner().invoke(
        cli,
        [
            "lab",
            "render",
            "oommf",
            "--roster",
            str(roster),
            "--out",
            str(out),
            "--port-range",
            "24000-24100",
            "--libvirt-driver",
            "qemu",
            "--port",
            "jupyter=8888",
            "--port",
            "web=80",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "ada-lovelace" in result.output and "2 machines" in result.output
    manifest = json.loads((out / "lab.json").read_text(encoding="utf-8"))
    assert [s["ports"] for s in manifest["students"]] == [
        {"ssh": 24000, "jupyter": 24001, "web": 24002},
        {"ssh": 24003, "jupyter": 24004, "web": 24005},
    ]
    assert 'lv.driver = "qemu"' in (out / "ada-lovelace" / "Vagrantfile").read_text(
        encoding="utf-8"
    )


def test_lab_render_bad_input_is_a_vmkit_error(cli: click.Group, tmp_path: Path) -> None:
    roster = tmp_path / "students.csv"
    roster.write_text("name\nAda\nada\n", encoding="utf-8")
    result = CliRunner().invoke(
        cli,
        [
            "lab",
            "render",
            "oommf",
            "--roster",
            str(roster),
            "--out",
            str(tmp_path / "x"),
            "--libvirt-driver",
            "qemu",
        ],
    )
    # main() turns a VmkitError into one line and exit 1; here it surfaces as the exception.
    assert isinstance(result.exception, RosterInvalid)
    assert "line 3" in str(result.exception)
    bad = CliRunner().invoke(
        cli,
        [
            "lab",
            "render",
            "oommf",
            "--roster",
            str(roster),
            "--out",
            str(tmp_path / "y"),
            "--port-range",
            "20000",
        ],
    )
    assert "LOW-HIGH" in str(bad.exception)


def test_box_catalog_lists_the_oommf_box(cli: click.Group) -> None:
    result = CliRunner().invoke(cli, ["box", "catalog", "--json"])
    assert result.exit_code == 0, result.output
    names = {(e["name"], e["arch"]) for e in json.loads(result.output)}
    assert ("virtualmicromagnetics/full", "amd64") in names
    table = CliRunner().invoke(cli, ["box", "catalog"], terminal_width=200)
    assert "vagrant-cloud" in table.output


def test_lab_status_reports_a_failure_with_exit_1(
    cli: click.Group, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    roster = tmp_path / "students.csv"
    roster.write_text("name\nAda\n", encoding="utf-8")
    out = tmp_path / "labs"
    assert (
        CliRunner()
        .invoke(
            cli,
            [
                "lab",
                "render",
                "docker-host",
                "--roster",
                str(roster),
                "--out",
                str(out),
                "--libvirt-driver",
                "qemu",
            ],
        )
        .exit_code
        == 0
    )
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "vagrant"
    fake.write_text("#!/bin/sh\necho 'The provider libvirt is not usable here' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:/usr/bin:/bin")
    result = CliRunner().invoke(cli, ["lab", "status", str(out)], terminal_width=200)
    # main() prints a VmkitError as one line and exits 1.
    assert isinstance(result.exception, LabFailed)
    assert "1 of 1 machines failed: ada" in str(result.exception)
    assert "1 of 1 failed" in result.output
    assert "not usable here" in result.output
