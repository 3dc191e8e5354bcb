"""Render a course lab: one Vagrant project per student, unique names and host ports.

``render("oommf", "students.csv", "labs/")`` writes::

    labs/lab.json              the manifest: who got which folder, machine and ports
    labs/<machine>/Vagrantfile
    labs/<machine>/README.txt  what the student runs and where their ports are
    labs/<machine>/work/       (presets with a shared folder) files that outlive the VM

Host ports come from ``port_range``, are checked free on 127.0.0.1 and are registered host-wide
(``PortRegistry``) so another lab rendered on this host never gets them.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs

from vmkit.errors import AlreadyExists, InvalidInput
from vmkit.labs import roster
from vmkit.labs.ports import PortRegistry, check_range
from vmkit.providers.vagrant import vagrantfile
from vmkit.state import atomic_write

MANIFEST = "lab.json"
SCHEMA = 1


@attrs.frozen
class Preset:
    """Defaults of a shipped lab template; every one can be overridden in ``render``."""

    box: str
    provider: str  # the Vagrant provider the lab is meant for: virtualbox or libvirt
    cpus: int
    memory: int
    guest_ports: Mapping[str, int]  # name → guest port, each forwarded to its own host port
    shared_folder: str = ""  # guest path of the student's work/ folder ("" for none)
    gui: bool = False
    ssh_username: str = ""
    notes: str = ""


PRESETS: dict[str, Preset] = {
    "oommf": Preset(
        box="virtualmicromagnetics/full",
        provider="virtualbox",
        cpus=2,
        memory=2048,
        guest_ports={"jupyter": 8888},
        shared_folder="/home/vagrant/work",
        gui=True,
        notes="Jupyter: in the VM run `jupyter notebook --ip=0.0.0.0 --port=8888 --no-browser`, "
        "then open the jupyter address above on your computer. OOMMF: see the welcome file on the desktop.",
    ),
    "docker-host": Preset(
        box="vmkit-mini",
        provider="libvirt",
        cpus=2,
        memory=1024,
        guest_ports={"web": 8080},
    ),
    "course-lab": Preset(
        box="vmkit-mini",
        provider="libvirt",
        cpus=1,
        memory=1024,
        guest_ports={"web": 8080},
    ),
}


@attrs.frozen
class LabStudent:
    """One student's machine in a rendered lab."""

    name: str
    machine: str
    folder: str  # relative to the lab folder
    ports: dict[str, int]  # "ssh" and each guest port name → host port on 127.0.0.1
    email: str = ""
    line: int = 0


@attrs.frozen
class LabManifest:
    """What ``render`` made; saved as ``lab.json`` in the lab folder."""

    lab: str
    template: str
    provider: str
    box: str
    port_range: tuple[int, int]
    created: str
    students: tuple[LabStudent, ...]
    schema: int = SCHEMA

    def to_json(self) -> str:
        return json.dumps(attrs.asdict(self), indent=2, ensure_ascii=False) + "\n"

    @classmethod
    def load(cls, lab_dir: Path) -> LabManifest:
        """The manifest of the lab at ``lab_dir``; ``InvalidInput`` if there is none."""
        path = Path(lab_dir) / MANIFEST
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            students = tuple(LabStudent(**s) for s in data.pop("students"))
            data["port_range"] = tuple(data["port_range"])
            return cls(students=students, **data)
        except FileNotFoundError as e:
            raise InvalidInput(
                f"{lab_dir} is not a rendered lab (no {MANIFEST})",
                hint="make one with `vmkit lab render TEMPLATE --roster CSV --out DIR`",
            ) from e
        except (ValueError, KeyError, TypeError) as e:
            raise InvalidInput(f"{path} is damaged: {e}") from e


def render(
    template: str | Path,
    roster_csv: Path,
    out_dir: Path,
    *,
    port_range: tuple[int, int] = (20000, 29999),
    lab_name: str | None = None,
    box: str | None = None,
    box_url: str = "",
    provider: str | None = None,
    cpus: int | None = None,
    memory: int | None = None,
    guest_ports: Mapping[str, int] | None = None,
    libvirt_driver: str = "kvm",
    provision_script: str = "",
    registry: PortRegistry | None = None,
    only: Sequence[str] | None = None,
) -> LabManifest:
    """Write one Vagrant project per student of ``roster_csv`` into ``out_dir``.

    ``template`` is a shipped template name (its preset gives the defaults) or the path of a
    ``.j2`` file (then ``box`` is required). ``box_url`` lets ``vagrant up`` add the box by
    itself (e.g. the ``file://`` metadata JSON of ``vmkit box package``). ``libvirt_driver`` is ``"kvm"``, or ``"qemu"`` on
    hosts without VT-x/AMD-V. ``out_dir`` must not hold a rendered lab already. ``only``: the
    machine names (or student names) to render, out of the roster; default everyone.
    """
    out_dir = Path(out_dir).resolve()
    check_range(port_range)
    if libvirt_driver not in ("kvm", "qemu"):
        raise InvalidInput(f"libvirt driver {libvirt_driver!r} is not kvm or qemu")
    preset = PRESETS.get(str(template)) if not isinstance(template, Path) else None
    template_path = vagrantfile.find_template(template)
    if preset is None and box is None:
        raise InvalidInput(
            f"template {template_path.name} is not a shipped one, so the lab needs a box",
            hint="give --box NAME",
        )
    name = lab_name or roster.machine_name_for(out_dir.name, limit=20) or "lab"
    vagrantfile.validate_name(name, "lab name")
    students = roster.read(Path(roster_csv))
    if only is not None:
        students = select(students, only, f"roster {roster_csv}")
    if (out_dir / MANIFEST).exists():
        raise AlreadyExists(
            f"{out_dir} holds a rendered lab already",
            hint="render into a new folder, or `vmkit lab down --destroy` it and remove it first",
        )

    existing = [s.machine for s in students if (out_dir / s.machine).exists()]
    if existing:
        raise AlreadyExists(
            f"{out_dir} has folders named like students' machines already: {', '.join(existing)}",
            hint="render into a new, empty folder",
        )
    ports_wanted = dict(
        guest_ports if guest_ports is not None else (preset.guest_ports if preset else {})
    )
    for pname, guest in ports_wanted.items():
        if not (1 <= guest <= 65535) or not vagrantfile.MACHINE_NAME.match(pname):
            raise InvalidInput(f"guest port {pname}={guest} is not valid")
    names = ["ssh", *ports_wanted]
    out_dir.mkdir(parents=True, exist_ok=True)
    registry = registry or PortRegistry()
    allocated = registry.allocate(out_dir, len(names) * len(students), port_range)
    try:
        manifest = _write(
            template_path=template_path,
            template=str(template),
            preset=preset,
            students=students,
            out_dir=out_dir,
            lab=name,
            box=box or (preset.box if preset else ""),
            box_url=box_url,
            provider=provider or (preset.provider if preset else "libvirt"),
            cpus=cpus or (preset.cpus if preset else 1),
            memory=memory or (preset.memory if preset else 1024),
            ports_wanted=ports_wanted,
            names=names,
            allocated=allocated,
            port_range=port_range,
            libvirt_driver=libvirt_driver,
            provision_script=provision_script,
        )
    except BaseException:
        # Only folders render made: it refused to start where any of them existed.
        registry.release(out_dir)
        for s in students:
            shutil.rmtree(out_dir / s.machine, ignore_errors=True)
        raise
    return manifest


def libvirt_driver(choice: str = "auto") -> str:
    """``kvm`` or ``qemu`` for ``render``; ``auto`` is kvm where hardware virtualization works."""
    if choice != "auto":
        return choice
    from vmkit.host import virt as hostvirt

    return "kvm" if hostvirt.detect().usable else "qemu"


def select(
    students: Sequence[roster.Student], wanted: Sequence[str], where: str
) -> list[roster.Student]:
    """The students named in ``wanted`` (by machine name or by name), in roster order.

    ``where`` names the roster in the error (``"roster students.csv"``).
    """
    unknown = [w for w in wanted if not any(w in (s.machine, s.name) for s in students)]
    if unknown:
        raise InvalidInput(
            f"{where} has no student {', '.join(map(repr, unknown))}",
            hint="give a machine name of the roster: " + ", ".join(s.machine for s in students),
        )
    return [s for s in students if s.machine in wanted or s.name in wanted]


def _write(
    *,
    template_path: Path,
    template: str,
    preset: Preset | None,
    students: list[roster.Student],
    out_dir: Path,
    lab: str,
    box: str,
    box_url: str,
    provider: str,
    cpus: int,
    memory: int,
    ports_wanted: Mapping[str, int],
    names: list[str],
    allocated: list[int],
    port_range: tuple[int, int],
    libvirt_driver: str,
    provision_script: str,
) -> LabManifest:
    shared = preset.shared_folder if preset else ""
    made: list[LabStudent] = []
    for i, student in enumerate(students):
        ports = dict(zip(names, allocated[i * len(names) : (i + 1) * len(names)], strict=True))
        folder = out_dir / student.machine
        folder.mkdir(exist_ok=True)
        if shared:
            (folder / "work").mkdir(exist_ok=True)
        variables: dict[str, Any] = {
            "machine": student.machine,
            "vm_prefix": f"{lab}-",
            "box": box,
            "box_url": box_url,
            "description": f"{student.name} — lab {lab}",
            "cpus": cpus,
            "memory": memory,
            "ssh_port": ports["ssh"],
            "forwards": [
                {"id": pname, "guest": guest, "host": ports[pname]}
                for pname, guest in ports_wanted.items()
            ],
            "synced_folders": [{"host": "work", "guest": shared}] if shared else [],
            "libvirt_driver": libvirt_driver,
            "ssh_username": preset.ssh_username if preset else "",
            "gui": preset.gui if preset else False,
            "provision_script": provision_script,
            "install_docker": False,
        }
        (folder / "Vagrantfile").write_text(
            vagrantfile.render(template_path, variables), encoding="utf-8"
        )
        entry = LabStudent(
            name=student.name,
            machine=student.machine,
            folder=student.machine,
            ports=ports,
            email=student.email,
            line=student.line,
        )
        (folder / "README.txt").write_text(
            _readme(entry, lab, box, provider, ports_wanted, shared, preset), encoding="utf-8"
        )
        made.append(entry)
    manifest = LabManifest(
        lab=lab,
        template=template,
        provider=provider,
        box=box,
        port_range=port_range,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        students=tuple(made),
    )
    atomic_write(out_dir / MANIFEST, manifest.to_json())
    return manifest


def _readme(
    s: LabStudent,
    lab: str,
    box: str,
    provider: str,
    ports_wanted: Mapping[str, int],
    shared: str,
    preset: Preset | None,
) -> str:
    lines = [
        f"Lab {lab}: machine {s.machine} for {s.name}",
        "",
        "Start it (the first start downloads the box and can take several minutes):",
        f"    cd {s.folder}",
        f"    vagrant up --provider {provider}",
        "",
        "Log in:        vagrant ssh",
        "Stop it:       vagrant halt",
        "Remove it:     vagrant destroy   (your work/ folder stays)"
        if shared
        else "Remove it:     vagrant destroy",
        "",
        f"Box: {box}",
    ]
    if ports_wanted:
        lines += ["", "On your computer these addresses reach the VM:"]
        lines += [
            f"    {pname:<10} http://127.0.0.1:{s.ports[pname]}   (port {guest} in the VM)"
            for pname, guest in ports_wanted.items()
        ]
    if shared:
        lines += ["", f"The folder work/ next to this file is {shared} inside the VM."]
    if preset and preset.notes:
        lines += ["", preset.notes]
    return "\n".join(lines) + "\n"
