"""vmkit installs like real software: a wheel (and a wheel built from the sdist) carries the
box recipes, the catalog and the Vagrantfile templates, and the installed `vmkit` works from
any folder without the checkout.

The builds run on a copy of the checkout's files, so a stale ``build/`` folder cannot leak
into the wheel and the checkout is not written to. The wheel is installed with its
dependencies from the package index into a fresh virtual environment outside the checkout.
"""

from __future__ import annotations

import json
import shutil
import sys
import tarfile
import zipfile
from pathlib import Path

import attrs
import pytest

from vmkit import boxes
from vmkit.host.runner import Result, run

CHECKOUT = Path(__file__).resolve().parent.parent
DATA_FOLDERS = ("boxes", "Vagrantfile.templates")
NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "*.pyc",
    ".mypy_cache", ".ruff_cache", ".pytest_cache", ".vmkit-test",
)  # fmt: skip


@attrs.frozen
class Installed:
    venv: Path
    site: Path  # the venv's site-packages
    work: Path  # a folder outside the checkout, the cwd of every command

    def run(self, *argv: str, timeout: float = 120) -> Result:
        # PYTHONPATH cleared: nothing but the venv may supply vmkit.
        env = {"VMKIT_HOME": str(self.work / "home"), "PYTHONPATH": "", "COLUMNS": "200"}
        return run(argv, cwd=self.work, env=env, timeout=timeout)

    def python(self, code: str) -> str:
        return self.run(str(self.venv / "bin" / "python"), "-c", code).stdout


def shipped_files() -> set[str]:
    """The data files of the checkout, as paths under ``vmkit/_data/``."""
    return {
        f"vmkit/_data/{p.relative_to(CHECKOUT)}"
        for name in DATA_FOLDERS
        for p in (CHECKOUT / name).rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }


def wheel_names(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as z:
        return {n for n in z.namelist() if not n.endswith("/")}


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("wheel") / "src"
    shutil.copytree(CHECKOUT, src, ignore=NOT_SOURCE)
    return src


@pytest.fixture(scope="module")
def wheel(source: Path) -> Path:
    out = source.parent / "wheels"
    run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(source)],
        timeout=600,
    )
    (found,) = out.glob("vmkit-*.whl")
    return found


@pytest.fixture(scope="module")
def installed(wheel: Path) -> Installed:
    root = wheel.parent.parent
    venv = root / "venv"
    # The interpreter running the tests, not the checkout's venv: a fresh environment.
    base = getattr(sys, "_base_executable", sys.executable)
    run([base, "-m", "venv", str(venv)], timeout=120)
    run([venv / "bin" / "python", "-m", "pip", "install", "-q", str(wheel)], timeout=600)
    work = root / "elsewhere"
    work.mkdir()
    site = next((venv / "lib").glob("python3*/site-packages"))
    return Installed(venv, site, work)


def test_the_wheel_holds_every_module_and_the_shipped_data(wheel: Path) -> None:
    names = wheel_names(wheel)
    modules = {str(p.relative_to(CHECKOUT)) for p in (CHECKOUT / "vmkit").rglob("*.py")}
    assert {n for n in names if n.endswith(".py")} == modules
    assert {n for n in names if n.startswith("vmkit/_data/")} == shipped_files()
    assert "vmkit/py.typed" in names


def test_installed_vmkit_runs_from_anywhere_on_the_wheel_s_data(installed: Installed) -> None:
    vmkit = str(installed.venv / "bin" / "vmkit")
    python = str(installed.venv / "bin" / "python")
    assert installed.run(vmkit, "--version").stdout.strip() == "vmkit, version 0.1.0"
    assert installed.run(python, "-m", "vmkit", "--version").stdout.strip() == (
        "vmkit, version 0.1.0"
    )
    found = json.loads(
        installed.python(
            "import json, vmkit, vmkit.resources as r\n"
            "print(json.dumps({'module': vmkit.__file__,"
            " 'boxes': str(r.data_dir(r.BOXES)),"
            " 'templates': str(r.data_dir(r.VAGRANTFILE_TEMPLATES))}))"
        )
    )
    data = installed.site / "vmkit" / "_data"
    assert Path(found["module"]) == installed.site / "vmkit" / "__init__.py"
    assert (Path(found["boxes"]), Path(found["templates"])) == (
        data / "boxes",
        data / "Vagrantfile.templates",
    )

    recipe = installed.python(
        "from vmkit import boxes; r = boxes.load_recipe('vmkit-mini'); print(r.dir, r.sha256)"
    ).split()
    # The digest covers every file with its executable bit: the wheel's copy is the checkout's,
    # so a box built from a checkout is the one an installed vmkit finds in the cache.
    assert recipe == [str(data / "boxes" / "vmkit-mini"), boxes.load_recipe("vmkit-mini").sha256]

    catalog = json.loads(installed.run(vmkit, "box", "catalog", "--json").stdout)
    assert ("virtualmicromagnetics/full", "amd64") in {(e["name"], e["arch"]) for e in catalog}
    assert "vagrant-cloud" in installed.run(vmkit, "box", "catalog").stdout


def test_installed_vmkit_renders_a_lab_for_30_students(installed: Installed) -> None:
    roster = installed.work / "students.csv"
    roster.write_text("name\n" + "".join(f"Student {i:02d}\n" for i in range(30)))
    out = installed.work / "labs"
    r = installed.run(
        str(installed.venv / "bin" / "vmkit"), "lab", "render", "oommf",
        "--roster", str(roster), "--out", str(out),
        "--port-range", "24000-24100", "--libvirt-driver", "qemu", "--port", "jupyter=8888",
    )  # fmt: skip
    assert "30 machines" in r.stdout
    manifest = json.loads((out / "lab.json").read_text(encoding="utf-8"))
    assert len(manifest["students"]) == 30
    assert manifest["students"][29]["ports"] == {"ssh": 24058, "jupyter": 24059}
    vagrantfile = (out / "student-29" / "Vagrantfile").read_text(encoding="utf-8")
    assert "virtualmicromagnetics/full" in vagrantfile and 'lv.driver = "qemu"' in vagrantfile


def test_a_wheel_built_from_the_sdist_has_the_data(source: Path, wheel: Path) -> None:
    out = source.parent / "from-sdist"
    # `python -m build` makes the sdist, then the wheel from the unpacked sdist.
    run([sys.executable, "-m", "build", "-q", "--outdir", str(out), str(source)], timeout=600)
    (sdist,) = out.glob("vmkit-*.tar.gz")
    with tarfile.open(sdist) as t:
        members = {m.name.split("/", 1)[1] for m in t.getmembers() if m.isfile()}
    in_sdist = {n.removeprefix("vmkit/_data/") for n in shipped_files()}
    assert in_sdist <= members and "setup.py" in members and "MANIFEST.in" in members
    (from_sdist,) = out.glob("vmkit-*.whl")
    assert wheel_names(from_sdist) == wheel_names(wheel)
