"""Run a rendered lab: ``up``, ``status`` and ``down`` over every student's Vagrant project.

At most ``parallel`` vagrant commands run at once (a thread pool); progress of all of them
goes to one callback as ``LabEvent``s, called from worker threads (a display must be
thread-safe: rich's ``Live`` is). A student whose machine fails does not stop the others;
every outcome is in the returned ``LabReport``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import attrs

from vmkit.errors import InvalidInput, VmkitError
from vmkit.labs.ports import PortRegistry
from vmkit.labs.render import LabManifest, LabStudent
from vmkit.providers.base import VMState
from vmkit.providers.vagrant import VagrantProvider
from vmkit.state import VMRecord


class LabFailed(VmkitError):
    """Some students' machines failed a lab action; ``report`` has every outcome."""

    def __init__(self, report: LabReport) -> None:
        failed = report.failed
        super().__init__(
            f"lab {report.action}: {len(failed)} of {len(report.outcomes)} machines failed: "
            + ", ".join(o.machine for o in failed),
            hint="the errors are listed above; retry just those with --only MACHINE",
        )
        self.report = report


@attrs.frozen
class LabEvent:
    """Progress of one student's machine: ``phase`` is queued, running, done or failed."""

    machine: str
    student: str
    phase: str
    message: str = ""


LabProgress = Callable[[LabEvent], None]


def no_lab_progress(_: LabEvent) -> None:
    """A ``LabProgress`` that shows nothing."""


@attrs.frozen
class StudentOutcome:
    """How one student's machine came out of a lab action."""

    machine: str
    student: str
    ok: bool
    state: VMState | None = None
    detail: str = ""
    error: str = ""
    seconds: float = 0.0


@attrs.frozen
class LabReport:
    """Every student's outcome of one lab action, in roster order."""

    action: str
    lab_dir: Path
    outcomes: tuple[StudentOutcome, ...]

    @property
    def failed(self) -> list[StudentOutcome]:
        return [o for o in self.outcomes if not o.ok]

    @property
    def ok(self) -> bool:
        return not self.failed


def _record(lab_dir: Path, manifest: LabManifest, s: LabStudent) -> VMRecord:
    return VMRecord(
        name=s.machine,
        provider="vagrant",
        box=manifest.box,
        extra={
            "project_dir": str(lab_dir / s.folder),
            "machine": s.machine,
            "vagrant_provider": manifest.provider,
        },
    )


def _select(manifest: LabManifest, only: Sequence[str] | None) -> list[LabStudent]:
    if not only:
        return list(manifest.students)
    known = {s.machine: s for s in manifest.students}
    unknown = [m for m in only if m not in known]
    if unknown:
        raise InvalidInput(
            f"lab {manifest.lab} has no machine(s) {', '.join(unknown)}",
            hint="see `vmkit lab status DIR` for its machines",
        )
    return [known[m] for m in only]


def _each(
    action: str,
    lab_dir: Path,
    step: Callable[[VMRecord, Callable[[str], None]], tuple[VMState | None, str]],
    *,
    parallel: int,
    progress: LabProgress,
    only: Sequence[str] | None,
    first_alone: bool = False,
) -> LabReport:
    if parallel < 1:
        raise InvalidInput(f"--parallel {parallel} must be at least 1")
    lab_dir = Path(lab_dir).resolve()
    manifest = LabManifest.load(lab_dir)
    students = _select(manifest, only)
    for s in students:
        progress(LabEvent(s.machine, s.name, "queued"))

    def one(s: LabStudent) -> StudentOutcome:
        started = time.monotonic()
        progress(LabEvent(s.machine, s.name, "running", action))

        def line(message: str) -> None:
            progress(LabEvent(s.machine, s.name, "running", message))

        try:
            state, detail = step(_record(lab_dir, manifest, s), line)
        except VmkitError as e:
            progress(LabEvent(s.machine, s.name, "failed", str(e)))
            return StudentOutcome(
                s.machine, s.name, False, error=str(e), seconds=time.monotonic() - started
            )
        progress(LabEvent(s.machine, s.name, "done", detail))
        return StudentOutcome(
            s.machine, s.name, True, state, detail, seconds=time.monotonic() - started
        )

    head: list[StudentOutcome] = []
    rest = students
    if first_alone and parallel > 1 and len(students) > 1:
        head, rest = [one(students[0])], students[1:]
    with ThreadPoolExecutor(max_workers=parallel, thread_name_prefix=f"lab-{action}") as pool:
        outcomes = (*head, *pool.map(one, rest))
    return LabReport(action, lab_dir, outcomes)


def up(
    lab_dir: Path,
    *,
    parallel: int = 2,
    progress: LabProgress = no_lab_progress,
    only: Sequence[str] | None = None,
    provider: VagrantProvider | None = None,
) -> LabReport:
    """``vagrant up`` every student's machine (or those in ``only``), ``parallel`` at a time.

    The first machine comes up alone: its ``up`` adds the box and (vagrant-libvirt) uploads
    the box's base volume into the storage pool, which parallel ``up``s of one box would race
    for ("storage volume ... exists already"); after it, each ``up`` only clones that volume.
    """
    p = provider or VagrantProvider()

    def step(record: VMRecord, line: Callable[[str], None]) -> tuple[VMState | None, str]:
        p.start(record, line)
        s = p.status(record)
        return s.state, s.detail

    return _each(
        "up", lab_dir, step, parallel=parallel, progress=progress, only=only, first_alone=True
    )


def status(
    lab_dir: Path,
    *,
    parallel: int = 4,
    progress: LabProgress = no_lab_progress,
    only: Sequence[str] | None = None,
    provider: VagrantProvider | None = None,
) -> LabReport:
    """The state of every student's machine."""
    p = provider or VagrantProvider()

    def step(record: VMRecord, line: Callable[[str], None]) -> tuple[VMState | None, str]:
        s = p.status(record)
        return s.state, s.detail

    return _each("status", lab_dir, step, parallel=parallel, progress=progress, only=only)


def down(
    lab_dir: Path,
    *,
    destroy: bool = False,
    parallel: int = 2,
    timeout: float = 120.0,
    progress: LabProgress = no_lab_progress,
    only: Sequence[str] | None = None,
    provider: VagrantProvider | None = None,
    registry: PortRegistry | None = None,
) -> LabReport:
    """``vagrant halt`` every machine, or with ``destroy`` ``vagrant destroy`` it.

    When a whole lab is destroyed without failures its host ports are released for other labs.
    """
    p = provider or VagrantProvider()

    def step(record: VMRecord, line: Callable[[str], None]) -> tuple[VMState | None, str]:
        if destroy:
            p.destroy(record)
        else:
            p.stop(record, timeout=timeout)
        s = p.status(record)
        return s.state, s.detail

    action = "destroy" if destroy else "halt"
    report = _each(action, lab_dir, step, parallel=parallel, progress=progress, only=only)
    if destroy and report.ok and not only:
        (registry or PortRegistry()).release(report.lab_dir)
    return report
