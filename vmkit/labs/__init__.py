"""Course labs: one Vagrant machine per student, rendered from a template and a roster.

``render`` writes the projects (unique machine names, unique host ports, host-wide port
registry); ``up``, ``status`` and ``down`` run them with a concurrency limit.
"""

from __future__ import annotations

from vmkit.labs.ports import PortRegistry
from vmkit.labs.render import PRESETS, LabManifest, LabStudent, libvirt_driver, render
from vmkit.labs.roster import RosterInvalid, Student
from vmkit.labs.run import LabEvent, LabFailed, LabReport, StudentOutcome, down, status, up

__all__ = [
    "PRESETS",
    "LabEvent",
    "LabFailed",
    "LabManifest",
    "LabReport",
    "LabStudent",
    "PortRegistry",
    "RosterInvalid",
    "Student",
    "StudentOutcome",
    "down",
    "libvirt_driver",
    "render",
    "status",
    "up",
]
