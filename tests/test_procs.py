import subprocess
import sys

from vmkit.host import procs


def test_alive_checks_the_marker_and_terminate_ends_it() -> None:
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "marker-xyz"])
    try:
        assert procs.alive(p.pid, "marker-xyz")
        assert not procs.alive(p.pid, "other-marker")
        assert p.pid in procs.find("marker-xyz")
        procs.terminate(p.pid, "marker-xyz", timeout=2)
        assert not procs.running(p.pid)
        assert not procs.alive(p.pid, "marker-xyz")
    finally:
        p.kill()
        p.wait()


def test_terminate_leaves_a_process_with_another_marker_alone() -> None:
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        procs.terminate(p.pid, "not-its-marker", timeout=1)
        assert procs.running(p.pid)
    finally:
        p.kill()
        p.wait()


def test_read_pid(tmp_path) -> None:  # type: ignore[no-untyped-def]
    f = tmp_path / "x.pid"
    assert procs.read_pid(f) is None
    f.write_text("garbage")
    assert procs.read_pid(f) is None
    f.write_text("123\n")
    assert procs.read_pid(f) == 123
