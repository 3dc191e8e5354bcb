"""Where a boot's time went: a per-phase timeline, from the guest's kernel log and systemd.

All times are seconds since QEMU started. The guest measures everything after its kernel's
clock starts (the kernel's printk timestamps, systemd's monotonic timestamps, the journal), so
one sample ties that clock to the host's: the guest's ``/proc/uptime`` read over SSH, against
how long the hypervisor's process has been running. What lies before the kernel's clock
(firmware, loading and decompressing the kernel) is the difference.

The phases, in order (each ends where the next begins):

- ``firmware``: QEMU start to the kernel's first timestamp;
- ``kernel``: to the kernel starting the first init (the initrd's, if there is one);
- ``initrd``: to systemd starting on the real root (absent without an initrd);
- ``init to sshd``: to sshd listening (ssh.service or ssh.socket active);
- ``sshd to login``: to the first accepted SSH login of this boot;
- ``dockerd``: docker.service from starting to active (at boot, or at first use if socket-activated).

``kernel floor`` is the point nothing can beat: the kernel starting init.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence

import attrs

#: One shell script run as root in the guest, so the facts come from one SSH round trip. Each
#: section starts with a "== NAME" line; a missing tool leaves its section empty.
GUEST_SCRIPT = r"""
echo "== init"; dmesg 2>/dev/null | grep -m 3 -E 'as init process|Linux version'
echo "== manager"; systemctl show -p UserspaceTimestampMonotonic -p FinishTimestampMonotonic
echo "== units"; systemctl show -p Id -p InactiveExitTimestampMonotonic \
    -p ActiveEnterTimestampMonotonic ssh.socket ssh.service docker.socket docker.service \
    containerd.service 2>/dev/null
echo "== login"; journalctl -b -o short-monotonic -t sshd --no-pager 2>/dev/null \
    | grep -m 1 'Accepted publickey'
echo "== analyze"; systemd-analyze time 2>/dev/null | head -n 1
echo "== blame"; systemd-analyze blame --no-pager 2>/dev/null | head -n 6
"""

_PRINTK = re.compile(r"^\[\s*(\d+\.\d+)\]\s*(.*)$")
_INIT = re.compile(r"Run (\S+) as init process")
_JOURNAL_MONO = re.compile(r"^\[\s*(\d+\.\d+)\]")


@attrs.frozen
class Phase:
    """One stretch of the boot, in seconds since QEMU started (``end`` None: not reached)."""

    name: str
    start: float
    end: float | None
    note: str = ""

    @property
    def seconds(self) -> float | None:
        return None if self.end is None else self.end - self.start


@attrs.frozen
class GuestFacts:
    """What the guest says about its boot, on its own clock (seconds since its kernel started)."""

    first_init: float | None  # the kernel ran the first init (the initrd's or the real one)
    first_init_path: str  # which one: "/init" is an initrd
    userspace: float | None  # systemd started on the real root
    sshd: float | None  # sshd listening (ssh.socket or ssh.service active)
    login: float | None  # the first accepted SSH login
    docker_start: float | None  # docker.service began starting
    docker_ready: float | None  # docker.service active
    analyze: str  # systemd-analyze's "Startup finished ..." line
    blame: tuple[str, ...]  # the slowest units


@attrs.frozen
class Timeline:
    """The phases of one boot, and the guest's own summary."""

    firmware: float  # QEMU start to the kernel's clock starting
    facts: GuestFacts

    @property
    def kernel_floor(self) -> float | None:
        """QEMU start to the kernel starting init: no boot can be usable sooner."""
        f = self.facts.first_init
        return None if f is None else self.firmware + f

    def phases(self) -> list[Phase]:
        f, fw = self.facts, self.firmware

        def at(t: float | None) -> float | None:
            return None if t is None else fw + t

        marks: list[tuple[str, float | None, str]] = [("firmware", fw, "")]
        marks.append(("kernel", at(f.first_init), f"starts {f.first_init_path or 'init'}"))
        if f.first_init_path == "/init":
            marks.append(("initrd", at(f.userspace), "to systemd on the root disk"))
        marks.append(("init to sshd", at(f.sshd), ""))
        marks.append(("sshd to login", at(f.login), "first accepted SSH login"))
        phases: list[Phase] = []
        start = 0.0
        for name, end, note in marks:
            phases.append(Phase(name, start, end, note))
            if end is None:
                break
            start = end
        if f.docker_ready is not None and f.docker_start is not None:
            phases.append(
                Phase("dockerd", fw + f.docker_start, fw + f.docker_ready, "starting to ready")
            )
        else:
            phases.append(Phase("dockerd", start, None, "not started yet (starts at first use)"))
        return phases

    def render(self) -> list[str]:
        """Human-readable lines: one per phase, then systemd's own summary."""
        lines = []
        for p in self.phases():
            span = "not reached" if p.end is None else f"{p.start:6.2f} → {p.end:6.2f} s"
            took = "" if p.seconds is None else f"{p.seconds:6.2f} s"
            note = f"  ({p.note})" if p.note else ""
            lines.append(f"{p.name:<14} {took:>8}   {span}{note}")
        floor = self.kernel_floor
        if floor is not None:
            lines.append(f"kernel floor (QEMU start → init): {floor:.2f} s")
        if self.facts.analyze:
            lines.append(f"systemd-analyze: {self.facts.analyze}")
        for b in self.facts.blame:
            lines.append(f"  slowest: {b}")
        return lines


def parse_guest(output: str) -> GuestFacts:
    """Parse what ``GUEST_SCRIPT`` printed."""
    sections: dict[str, list[str]] = {}
    current: list[str] = []
    for raw in output.splitlines():
        line = raw.rstrip()
        if line.startswith("== "):
            current = sections.setdefault(line[3:].strip(), [])
        elif line.strip():
            current.append(line.strip())
    first_init, init_path = None, ""
    for line in sections.get("init", []):
        m = _PRINTK.match(line)
        i = _INIT.search(line)
        if m and i:
            first_init, init_path = float(m.group(1)), i.group(1)
            break
    manager = _properties(sections.get("manager", []))
    units = _units(sections.get("units", []))

    def unit_time(unit: str, prop: str) -> float | None:
        return _usec(units.get(unit, {}).get(prop))

    sshd = _earliest(
        unit_time("ssh.socket", "ActiveEnterTimestampMonotonic"),
        unit_time("ssh.service", "ActiveEnterTimestampMonotonic"),
    )
    login = None
    for line in sections.get("login", []):
        m = _JOURNAL_MONO.match(line)
        if m:
            login = float(m.group(1))
            break
    analyze = sections.get("analyze", [""])
    return GuestFacts(
        first_init=first_init,
        first_init_path=init_path,
        userspace=_usec(manager.get("UserspaceTimestampMonotonic")),
        sshd=sshd,
        login=login,
        docker_start=unit_time("docker.service", "InactiveExitTimestampMonotonic"),
        docker_ready=unit_time("docker.service", "ActiveEnterTimestampMonotonic"),
        analyze=analyze[0] if analyze else "",
        blame=tuple(" ".join(b.split()) for b in sections.get("blame", [])),
    )


def _properties(lines: Sequence[str]) -> dict[str, str]:
    return dict(line.split("=", 1) for line in lines if "=" in line)


def _units(lines: Sequence[str]) -> dict[str, dict[str, str]]:
    """``systemctl show`` of several units: blocks of KEY=VALUE, each naming its ``Id``."""
    units: dict[str, dict[str, str]] = {}
    block: dict[str, str] = {}
    for line in [*lines, ""]:
        if "=" in line:
            key, value = line.split("=", 1)
            if key == "Id" and "Id" in block:
                units[block["Id"]] = block
                block = {}
            block[key] = value
    if "Id" in block:
        units[block["Id"]] = block
    return units


def _usec(value: str | None) -> float | None:
    """A systemd monotonic timestamp (µs); 0 means "never"."""
    if not value or not value.isdigit() or int(value) == 0:
        return None
    return int(value) / 1e6


def _earliest(*values: float | None) -> float | None:
    present = [v for v in values if v is not None]
    return min(present) if present else None


def measure(
    run: Callable[[Sequence[str]], str], qemu_age: Callable[[], float], *, samples: int = 3
) -> Timeline:
    """The timeline of the running guest's current boot.

    ``run`` runs an argv in the guest as root and returns its stdout; ``qemu_age`` says how
    many seconds ago the hypervisor's process started. The clock offset is the sample with
    the shortest round trip (its error is at most half of that).
    """
    best: tuple[float, float] | None = None  # (round trip, firmware)
    for _ in range(samples):
        before = time.monotonic()
        age_before = qemu_age()
        uptime = float(run(["cat", "/proc/uptime"]).split()[0])
        trip = time.monotonic() - before
        firmware = age_before + trip / 2 - uptime
        if best is None or trip < best[0]:
            best = (trip, firmware)
    assert best is not None
    facts = parse_guest(run(["sh", "-c", GUEST_SCRIPT]))
    return Timeline(firmware=max(best[1], 0.0), facts=facts)
