"""Metadata lives in pyproject.toml; this adds one build step.

The checkout's top-level ``boxes/`` (recipes, catalog) and ``Vagrantfile.templates/`` are the
one source of that data. A built wheel carries a copy of them as package data under
``vmkit/_data/`` (found by ``vmkit.resources``); a source checkout or an editable install
reads the top-level folders directly.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

DATA_FOLDERS = ("boxes", "Vagrantfile.templates")


class BuildWithData(build_py):
    """build_py that also copies the shipped data folders into the built package."""

    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return
        here = Path(__file__).resolve().parent
        for name in DATA_FOLDERS:
            target = Path(self.build_lib) / "vmkit" / "_data" / name
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(here / name, target, ignore=shutil.ignore_patterns("__pycache__"))


setup(cmdclass={"build_py": BuildWithData})
