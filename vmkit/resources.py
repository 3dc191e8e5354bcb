"""Files vmkit ships besides its code: box recipes, the box catalog, Vagrantfile templates.

In a wheel they are package data under ``vmkit/_data`` (copied there at build time from the
checkout's top-level ``boxes/`` and ``Vagrantfile.templates/``, which stay the one source);
in a source checkout or an editable install they are read from those folders directly.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from vmkit.errors import VmkitError

#: The shipped folders, by the name they have at the top of the checkout.
BOXES = "boxes"
VAGRANTFILE_TEMPLATES = "Vagrantfile.templates"


def data_dir(name: str) -> Path:
    """The shipped folder ``name`` (``BOXES`` or ``VAGRANTFILE_TEMPLATES``)."""
    packaged = Path(str(resources.files("vmkit"))) / "_data" / name
    if packaged.is_dir():
        return packaged
    checkout = Path(__file__).resolve().parent.parent / name
    if checkout.is_dir():
        return checkout
    raise VmkitError(
        f"vmkit's data folder {name!r} is missing (looked in {packaged} and {checkout})",
        hint="reinstall vmkit (pip install --force-reinstall vmkit) or use a complete checkout",
    )
