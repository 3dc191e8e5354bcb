"""The one place vmkit starts external programs.

Argument lists only (a ``str`` is refused, so nothing is ever parsed by a shell), a timeout on
every call, output captured, and per-tool tables of known error texts mapped to exceptions.
"""

from __future__ import annotations

import contextlib
import os
import re
import selectors
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import attrs

from vmkit.errors import CommandFailed, CommandTimeout, ToolMissing, VmkitError
from vmkit.host import signals

# Which Debian package provides a program, for "not installed" hints.
PACKAGES: dict[str, str] = {
    "qemu-system-x86_64": "qemu-system-x86",
    "qemu-system-i386": "qemu-system-x86",
    "qemu-img": "qemu-utils",
    "mmdebstrap": "mmdebstrap",
    "mkfs.ext4": "e2fsprogs",
    "ssh-keygen": "openssh-client",
    "ssh": "openssh-client",
    "vagrant": "vagrant",
    "virsh": "libvirt-clients",
    "zstd": "zstd",
    "xz": "xz-utils",
}


@attrs.frozen
class Result:
    """What a finished program left behind."""

    argv: list[str]
    exit_code: int
    stdout: str
    stderr: str
    duration: float

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


@attrs.frozen
class ErrorRule:
    """A known error text of a tool: when ``pattern`` matches its output, raise ``make(result, match)``."""

    pattern: re.Pattern[str]
    make: Callable[[Result, re.Match[str]], VmkitError]

    @classmethod
    def of(cls, regex: str, make: Callable[[Result, re.Match[str]], VmkitError]) -> ErrorRule:
        return cls(re.compile(regex, re.MULTILINE), make)


def _check_argv(argv: Sequence[str]) -> list[str]:
    if isinstance(argv, (str, bytes)):
        raise TypeError("vmkit.host.runner takes an argument list, never a command string")
    out = [os.fspath(a) for a in argv]
    if not out:
        raise TypeError("empty argument list")
    return out


def which(program: str, *, package: str | None = None) -> str:
    """The full path of ``program``, or ``ToolMissing`` naming the package to install."""
    found = shutil.which(program)
    if found is None:
        raise ToolMissing(program, package=package or PACKAGES.get(program))
    return found


def classify(result: Result, rules: Sequence[ErrorRule]) -> VmkitError | None:
    """The exception for the first rule that matches a failed result's output, if any."""
    text = result.stderr + "\n" + result.stdout
    for rule in rules:
        m = rule.pattern.search(text)
        if m:
            return rule.make(result, m)
    return None


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    timeout: float = 60.0,
    check: bool = True,
    input: str | bytes | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    rules: Sequence[ErrorRule] = (),
    hint: str | None = None,
) -> Result:
    """Run a program to completion and return its ``Result``.

    With ``check`` (the default) a non-zero exit raises the exception of the first matching
    ``rules`` entry, else ``CommandFailed``. ``env`` is added to the current environment.
    """
    args = _check_argv(argv)  # type: ignore[arg-type]
    full_env = None
    if env is not None:
        full_env = dict(os.environ)
        full_env.update(env)
    data: bytes | None = input.encode() if isinstance(input, str) else input
    started = time.monotonic()
    try:
        proc = subprocess.run(
            args,
            input=data,
            stdin=None if data is not None else subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            env=full_env,
            cwd=cwd,
            check=False,
        )
    except FileNotFoundError as e:
        if cwd is not None and not Path(cwd).is_dir():
            raise VmkitError(f"working directory {cwd} does not exist") from e
        raise ToolMissing(args[0], package=PACKAGES.get(Path(args[0]).name)) from e
    except PermissionError as e:
        raise ToolMissing(args[0], hint=f"{args[0]} is not executable") from e
    except subprocess.TimeoutExpired as e:
        raise CommandTimeout(args, timeout, hint=hint) from e
    result = Result(
        argv=args,
        exit_code=proc.returncode,
        stdout=proc.stdout.decode(errors="replace"),
        stderr=proc.stderr.decode(errors="replace"),
        duration=time.monotonic() - started,
    )
    if check and not result.ok:
        err = classify(result, rules)
        if err is not None:
            raise err
        raise CommandFailed(result, hint=hint)
    return result


def spawn(
    argv: Sequence[str | os.PathLike[str]],
    *,
    log: Path,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    pass_fds: Sequence[int] = (),
) -> subprocess.Popen[bytes]:
    """Start a long-lived program in its own session, its output appended to ``log``.

    The child survives the vmkit process that started it (own session, no inherited
    terminal), which is what VMs and their helper daemons need.
    """
    args = _check_argv(argv)  # type: ignore[arg-type]
    full_env = None
    if env is not None:
        full_env = dict(os.environ)
        full_env.update(env)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        try:
            return subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                env=full_env,
                cwd=cwd,
                start_new_session=True,
                creationflags=signals.NEW_GROUP_FLAGS,
                pass_fds=tuple(pass_fds),
            )
        except FileNotFoundError as e:
            raise ToolMissing(args[0], package=PACKAGES.get(Path(args[0]).name)) from e


def pipe_out(argv: Sequence[str | os.PathLike[str]], *, stdin: int) -> subprocess.Popen[bytes]:
    """Start a filter program reading file descriptor ``stdin``; read its ``stdout`` as it runs.

    For streaming data through a program (``zstd -dc``) without holding it all in memory;
    the caller reads ``stdout`` to EOF, then checks ``wait()`` and ``stderr``.
    """
    args = _check_argv(argv)  # type: ignore[arg-type]
    try:
        return subprocess.Popen(args, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except FileNotFoundError as e:
        raise ToolMissing(args[0], package=PACKAGES.get(Path(args[0]).name)) from e


@attrs.frozen
class Watched:
    """What ``watch`` saw of a program's output."""

    matched: bool  # ``until`` appeared before the program exited or time ran out
    output: bytes  # what it printed up to then (at most the last 64 KiB)
    seconds: float  # from start to the match (or to the end of the wait)
    exit_code: int | None  # None when vmkit ended the program
    stderr: str


_WATCH_KEEP = 64 * 1024


def watch(
    argv: Sequence[str | os.PathLike[str]], *, until: re.Pattern[bytes], timeout: float
) -> Watched:
    """Start a program, read its stdout until ``until`` matches or ``timeout`` runs out, end it.

    For programs that never finish by themselves (a VM booting a kernel): the answer is
    whether, and how soon, they print something. The program runs in its own process group,
    killed as a whole when the wait is over.
    """
    args = _check_argv(argv)  # type: ignore[arg-type]
    started = time.monotonic()
    with tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=err,
                start_new_session=True,
                creationflags=signals.NEW_GROUP_FLAGS,
            )
        except FileNotFoundError as e:
            raise ToolMissing(args[0], package=PACKAGES.get(Path(args[0]).name)) from e
        assert proc.stdout is not None
        output = b""
        matched = ended = False
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            while not matched:
                left = started + timeout - time.monotonic()
                if left <= 0 or not sel.select(left):
                    break
                chunk = os.read(proc.stdout.fileno(), 4096)
                if not chunk:  # EOF: the program is exiting
                    ended = True
                    break
                output = (output + chunk)[-_WATCH_KEEP:]
                matched = until.search(output) is not None
        seconds = time.monotonic() - started
        exit_code = proc.poll()
        if ended and exit_code is None:
            # Its stdout closes a moment before it is gone: wait for the real exit code.
            with contextlib.suppress(subprocess.TimeoutExpired):
                exit_code = proc.wait(5)
        if exit_code is None:
            signals.end_group(proc.pid, hard=True)
        proc.wait()
        proc.stdout.close()
        err.seek(0)
        stderr = err.read().decode(errors="replace")
    return Watched(matched, output, seconds, exit_code, stderr)
