"""A course lab in a bundle: template, roster and options in one file, rendered where it is loaded.

A lab is rendered on the machine that will run it, not where the bundle is made: its host
ports must be free there, and they are registered in that machine's lab port registry
(docs/labs.md). ``bundle create`` checks the template and roster by rendering them once into a
throw-away folder, so a bundle never carries a lab that cannot be rendered.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

from vmkit import labs
from vmkit.errors import FileDamaged, InvalidInput
from vmkit.labs import roster
from vmkit.labs.render import LabManifest, select
from vmkit.providers.vagrant import vagrantfile

#: Where the lab lives in a bundle folder.
FILE = "lab/lab.json"


@attrs.frozen
class LabSpec:
    """What ``vmkit lab render`` needs, kept in the bundle.

    ``template`` is a shipped template's name, or the file name of a template of the teacher's
    own, whose text is ``template_text`` (a shipped template has none: the loading vmkit's own
    copy is used).
    """

    name: str
    template: str
    roster_csv: str
    template_text: str = ""
    box: str | None = None
    provider: str | None = None

    @property
    def students(self) -> list[roster.Student]:
        """The roster's students (it was checked when the bundle was made)."""
        return roster.parse(self.roster_csv, Path(FILE))

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)


def default_name(bundle_dir: Path) -> str:
    """The lab's name when none is given: made from the bundle folder's name."""
    return roster.machine_name_for(bundle_dir.resolve().name, limit=20) or "lab"


def make(
    template: str,
    roster_csv: Path,
    *,
    name: str,
    box: str | None = None,
    provider: str | None = None,
) -> LabSpec:
    """A ``LabSpec`` from a template and a roster file, checked by rendering it once."""
    path = vagrantfile.find_template(template)
    own = path.suffix == ".j2" and path.parent != vagrantfile.templates_dir()
    spec = LabSpec(
        name=vagrantfile.validate_name(name, "lab name"),
        template=path.name if own else template,
        roster_csv=roster.read_text(roster_csv),
        template_text=path.read_text(encoding="utf-8") if own else "",
        box=box,
        provider=provider,
    )
    # The teacher's own files, so that errors name them.
    with tempfile.TemporaryDirectory(prefix="vmkit-lab-check-") as tmp:
        labs.render(
            path if own else template,
            roster_csv,
            Path(tmp) / "lab",
            lab_name=spec.name,
            box=box,
            provider=provider,
            registry=labs.PortRegistry(Path(tmp) / "ports.json"),
        )
    return spec


def write(spec: LabSpec, root: Path) -> Path:
    """Write ``spec`` into the bundle folder ``root``; the file's path."""
    path = root.joinpath(*FILE.split("/"))
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(spec.to_json(), indent=2, ensure_ascii=False) + "\n", "utf-8")
    return path


def read(path: Path) -> LabSpec:
    """The ``LabSpec`` in a bundle's lab file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return LabSpec(**data)
    except (OSError, ValueError, TypeError) as e:
        raise FileDamaged(f"{path} is not a lab vmkit can read ({e})") from e


def machines(spec: LabSpec, wanted: Sequence[str]) -> list[str]:
    """The machine names of the students ``wanted`` (machine names or names) of the lab."""
    return [s.machine for s in select(spec.students, wanted, f"lab {spec.name}")]


def render(
    spec: LabSpec,
    out_dir: Path,
    *,
    only: Sequence[str] | None = None,
    registry: labs.PortRegistry | None = None,
    libvirt_driver: str = "auto",
) -> LabManifest:
    """Render the lab into ``out_dir`` (``vmkit lab render``), for ``only`` these students."""
    if only is not None:
        only = machines(spec, only)
    with tempfile.TemporaryDirectory(prefix="vmkit-lab-") as tmp:
        roster_path = Path(tmp) / "students.csv"
        roster_path.write_text(spec.roster_csv, encoding="utf-8")
        template: str | Path = spec.template
        if spec.template_text:
            template = Path(tmp) / spec.template
            template.write_text(spec.template_text, encoding="utf-8")
        return labs.render(
            template,
            roster_path,
            out_dir,
            lab_name=spec.name,
            box=spec.box,
            provider=spec.provider,
            registry=registry,
            only=only,
            libvirt_driver=labs.libvirt_driver(libvirt_driver),
        )


def rendered(out_dir: Path, spec: LabSpec) -> bool:
    """Whether ``out_dir`` holds this lab rendered already (a load run before)."""
    if not (out_dir / "lab.json").is_file():
        return False
    try:
        return LabManifest.load(out_dir).lab == spec.name
    except InvalidInput:
        return False
