"""The boot timeline: parsing what the guest says, tying its clock to the host's, the phases."""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from vmkit.guest import boottime
from vmkit.host import procs

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "boottime"


def facts(name: str) -> boottime.GuestFacts:
    return boottime.parse_guest((FIXTURES / name).read_text(encoding="utf-8"))


def test_a_recorded_boot_parses_into_every_phase() -> None:
    f = facts("v2-small-initrd.txt")
    assert f.first_init_path == "/init"
    assert f.first_init == pytest.approx(3.053, abs=0.001)
    assert f.userspace == pytest.approx(5.491, abs=0.001)
    assert f.sshd == pytest.approx(20.206, abs=0.001)  # ssh.socket never became active
    assert f.login == pytest.approx(22.791, abs=0.001)
    assert (f.docker_start, f.docker_ready) == (
        pytest.approx(27.498, abs=0.001),
        pytest.approx(39.636, abs=0.001),
    )
    assert f.analyze.startswith("Startup finished in 5.490s (kernel)")
    assert f.blame[0] == "12.137s docker.service" and len(f.blame) == 6
    tl = boottime.Timeline(firmware=2.0, facts=f)
    phases = tl.phases()
    names = [p.name for p in phases]
    assert names == ["firmware", "kernel", "initrd", "init to sshd", "sshd to login", "dockerd"]
    assert tl.kernel_floor == pytest.approx(5.053, abs=0.001)
    # Each phase up to the login begins where the one before it ended.
    for before, after in itertools.pairwise(phases[:5]):
        assert before.end == after.start
    assert phases[4].end == pytest.approx(24.791, abs=0.001)
    assert phases[5].seconds == pytest.approx(12.138, abs=0.001)
    assert all(p.seconds is not None and p.seconds >= 0 for p in phases)


def test_a_socket_activated_dockerd_not_used_yet_is_said_so() -> None:
    text = (FIXTURES / "v2-small-initrd.txt").read_text(encoding="utf-8")
    unused = text.replace(
        "InactiveExitTimestampMonotonic=27497983", "InactiveExitTimestampMonotonic=0"
    )
    unused = unused.replace(
        "ActiveEnterTimestampMonotonic=39635748", "ActiveEnterTimestampMonotonic=0"
    )
    f = boottime.parse_guest(unused)
    assert f.docker_ready is None and f.docker_start is None
    lines = boottime.Timeline(firmware=1.0, facts=f).render()
    dockerd = next(line for line in lines if line.startswith("dockerd"))
    assert "not reached" in dockerd and "first use" in dockerd
    assert any(line.startswith("kernel floor") for line in lines)


def test_without_an_initrd_there_is_no_initrd_phase() -> None:
    text = (FIXTURES / "v2-small-initrd.txt").read_text(encoding="utf-8")
    f = boottime.parse_guest(text.replace("Run /init as", "Run /sbin/init as"))
    names = [p.name for p in boottime.Timeline(firmware=1.0, facts=f).phases()]
    assert "initrd" not in names and names[2] == "init to sshd"


def test_missing_sections_leave_the_phases_after_them_unreached() -> None:
    f = boottime.parse_guest("== init\n== manager\nUserspaceTimestampMonotonic=0\n")
    assert f.first_init is None and f.userspace is None and f.sshd is None
    tl = boottime.Timeline(firmware=1.5, facts=f)
    assert tl.kernel_floor is None
    assert [(p.name, p.end) for p in tl.phases()][:2] == [("firmware", 1.5), ("kernel", None)]
    assert "not reached" in tl.render()[1]


def test_measure_ties_the_guest_clock_to_the_hypervisor_process_start() -> None:
    guest_uptime = 30.0
    calls: list[Sequence[str]] = []

    def run(argv: Sequence[str]) -> str:
        calls.append(argv)
        if list(argv) == ["cat", "/proc/uptime"]:
            return f"{guest_uptime:.2f} 50.00\n"
        return (FIXTURES / "v2-small-initrd.txt").read_text(encoding="utf-8")

    tl = boottime.measure(run, lambda: 32.5)
    # QEMU started 32.5 s ago and the guest's clock says 30 s: 2.5 s before the kernel's clock.
    assert tl.firmware == pytest.approx(2.5, abs=0.05)
    assert calls[-1][:2] == ["sh", "-c"]
    assert tl.facts.first_init is not None


def test_process_age_is_the_time_since_the_process_started() -> None:
    assert 0 <= procs.age(os.getpid()) < time.clock_gettime(time.CLOCK_BOOTTIME)
    with pytest.raises(ProcessLookupError):
        procs.age(2**22 + 12345)
