"""vmkit env output: each shell's own quoting, checked by running the real shell where there is one."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from vmkit.docker.env import detect_shell, render

NASTY = '/tmp/a b/it\'s "q" $(touch /tmp/pwned) `x` %PATH% ünï/docker.sock'


@pytest.mark.parametrize("shell", ["sh", "bash", "zsh"])
def test_posix_shells_get_the_value_back_unchanged(shell: str) -> None:
    exe = shutil.which(shell) or shutil.which("sh")
    assert exe is not None
    text = render({"DOCKER_HOST": "unix://" + NASTY}, shell)
    out = subprocess.run(
        [exe, "-c", text + 'printf %s "$DOCKER_HOST"'], capture_output=True, check=True
    ).stdout.decode()
    assert out == "unix://" + NASTY


def test_posix_unset_removes_the_variable() -> None:
    text = render({"DOCKER_HOST": ""}, "bash", unset=True)
    out = subprocess.run(
        ["bash", "-c", text + 'printf %s "${DOCKER_HOST-gone}"'],
        capture_output=True,
        check=True,
        env={"DOCKER_HOST": "unix:///x", "PATH": "/usr/bin:/bin"},
    ).stdout.decode()
    assert out == "gone"


def test_fish_quotes_backslash_and_quote() -> None:
    text = render({"DOCKER_HOST": "a\\b'c"}, "fish")
    assert text.splitlines()[0] == "set -gx DOCKER_HOST 'a\\\\b\\'c';"
    assert "| source" in text


def test_powershell_doubles_single_quotes_and_expands_nothing() -> None:
    text = render({"DOCKER_HOST": "C:\\it's $env:X"}, "powershell")
    assert text.splitlines()[0] == "$Env:DOCKER_HOST = 'C:\\it''s $env:X'"
    assert "Invoke-Expression" in text


def test_cmd_escapes_percent_and_refuses_double_quotes() -> None:
    assert render({"DOCKER_HOST": "a%b"}, "cmd").splitlines()[0] == 'SET "DOCKER_HOST=a%%b"'
    with pytest.raises(ValueError):
        render({"DOCKER_HOST": 'a"b'}, "cmd")


def test_every_shell_says_how_to_apply_it() -> None:
    for shell, needle in [
        ("bash", 'eval "$(vmkit env)"'),
        ("fish", "vmkit env | source"),
        ("cmd", "@FOR /f"),
    ]:
        assert needle in render({"DOCKER_HOST": "x"}, shell)


def test_unknown_shell_is_refused() -> None:
    with pytest.raises(ValueError):
        render({"A": "b"}, "tcsh")


@pytest.mark.parametrize(
    ("environ", "platform", "expected"),
    [
        ({"SHELL": "/usr/bin/fish"}, "linux", "fish"),
        ({"SHELL": "/bin/zsh"}, "darwin", "zsh"),
        ({"SHELL": "/bin/bash"}, "linux", "bash"),
        ({"SHELL": "/bin/dash"}, "linux", "sh"),
        ({}, "linux", "sh"),
        ({"PSModulePath": "C:\\x"}, "win32", "powershell"),
        ({}, "win32", "cmd"),
    ],
)
def test_detect_shell(environ: dict[str, str], platform: str, expected: str) -> None:
    assert detect_shell(environ, platform) == expected
