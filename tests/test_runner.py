import sys

import pytest

from vmkit.errors import CommandFailed, CommandTimeout, PortInUse, ToolMissing
from vmkit.host.runner import ErrorRule, run


def test_refuses_strings() -> None:
    with pytest.raises(TypeError):
        run("echo hi")  # type: ignore[arg-type]


def test_arguments_reach_the_program_unchanged() -> None:
    weird = ["with space", "it's", '"q"', "$(touch /tmp/pwned)", "`id`", "ünï", ";|&"]
    r = run([sys.executable, "-c", "import sys; print(repr(sys.argv[1:]))", *weird])
    assert r.stdout.strip() == repr(weird)


def test_failure_carries_the_result() -> None:
    with pytest.raises(CommandFailed) as e:
        run([sys.executable, "-c", "import sys; print('boom', file=sys.stderr); sys.exit(3)"])
    assert e.value.result.exit_code == 3
    assert "boom" in str(e.value)


def test_known_error_text_maps_to_exception() -> None:
    rules = [ErrorRule.of(r"address already in use", lambda r, m: PortInUse("taken"))]
    with pytest.raises(PortInUse):
        run(
            [sys.executable, "-c", "import sys; sys.exit('bind: address already in use')"],
            rules=rules,
        )


def test_missing_tool() -> None:
    with pytest.raises(ToolMissing) as e:
        run(["qemu-img-does-not-exist"])
    assert "not installed" in str(e.value)


def test_timeout() -> None:
    with pytest.raises(CommandTimeout):
        run([sys.executable, "-c", "import time; time.sleep(5)"], timeout=0.3)


def test_check_false_returns_result() -> None:
    r = run([sys.executable, "-c", "raise SystemExit(2)"], check=False)
    assert not r.ok and r.exit_code == 2
