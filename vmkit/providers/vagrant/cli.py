"""Running ``vagrant`` for one project: argv builders over ``vmkit.host.runner``.

Why not python-vagrant: its ``Vagrant`` class swallows ``CalledProcessError`` and drops
stderr, has no timeouts, reports libvirt's ``shutoff`` as ``poweroff``, replaces the whole
environment when given ``env=``, and builds argv as ``[vagrant, ...]`` so a command prefix
(``nsenter`` into the namespace where libvirtd runs) cannot be put in front. Its parsers are
private methods. So vmkit runs ``vagrant --machine-readable`` itself and parses the output in
``parse``; python-vagrant is not imported at all (importing it also logs a warning when
vagrant is not on PATH).

The project folder is given to Vagrant as ``VAGRANT_CWD``, not only as the working directory,
because ``nsenter`` starts the command in ``/``.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from vmkit.errors import CommandTimeout
from vmkit.host import runner, signals
from vmkit.host.runner import Result
from vmkit.progress import Progress, no_progress
from vmkit.providers.vagrant import parse
from vmkit.providers.vagrant.errors import rules

#: Seconds. Under TCG ``up`` took 70-140 s, ``halt`` 24-43 s, ``destroy`` 2-7 s (NOTES.md).
UP_TIMEOUT = 900.0
HALT_TIMEOUT = 180.0
DESTROY_TIMEOUT = 180.0
QUERY_TIMEOUT = 60.0
SSH_TIMEOUT = 120.0

_KILL_GRACE = 10.0
_POLL = 0.25


class VagrantCLI:
    """``vagrant`` commands for the project in ``project_dir``.

    ``command_prefix`` goes in front of every argv (e.g. ``["nsenter", "-t", PID, "-m", "-n"]``);
    ``env`` is added to the current environment, never replacing it.
    """

    def __init__(
        self,
        project_dir: Path,
        *,
        command_prefix: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        vagrant: str | None = None,
    ) -> None:
        self.project_dir = Path(project_dir).resolve()
        self.command_prefix = list(command_prefix)
        self.env = {**(env or {}), "VAGRANT_CWD": str(self.project_dir)}
        # Inside a namespace the prefix resolves the name; on the host find it now for a clear error.
        self.vagrant = vagrant or (
            "vagrant" if self.command_prefix else runner.which("vagrant", package="vagrant")
        )
        self.rules = rules(self.project_dir)

    def argv(self, *args: str) -> list[str]:
        """The full argv of ``vagrant ARGS`` with the prefix in front."""
        return [*self.command_prefix, self.vagrant, *args]

    def run(self, *args: str, timeout: float = QUERY_TIMEOUT, check: bool = True) -> Result:
        """Run ``vagrant ARGS`` to completion; a failure raises a ``VagrantFailed`` subclass."""
        return runner.run(
            self.argv(*args),
            timeout=timeout,
            check=check,
            env=self.env,
            cwd=self.project_dir,
            rules=self.rules,
        )

    def stream(self, *args: str, timeout: float, progress: Progress = no_progress) -> Result:
        """Run a long ``vagrant ARGS --machine-readable``, passing its ``ui`` lines to ``progress``.

        On timeout the whole process group (vagrant and what it started) is stopped, TERM then
        KILL, and ``CommandTimeout`` is raised.
        """
        argv = self.argv(*args, "--machine-readable")
        with tempfile.TemporaryDirectory(prefix="vmkit-vagrant-") as tmp:
            log = Path(tmp) / "vagrant.log"
            started = time.monotonic()
            proc = runner.spawn(argv, log=log, env=self.env, cwd=self.project_dir)
            seen = 0
            try:
                while True:
                    code = proc.poll()
                    seen = _report(log, seen, progress)
                    if code is not None:
                        break
                    if time.monotonic() - started > timeout:
                        _stop_group(proc)
                        raise CommandTimeout(
                            argv,
                            timeout,
                            hint=f"see `vagrant status` in {self.project_dir}; "
                            "the machine may be half started",
                        )
                    time.sleep(_POLL)
            except BaseException:
                if proc.poll() is None:
                    _stop_group(proc)
                raise
            _report(log, seen, progress, final=True)
            text = log.read_text(encoding="utf-8", errors="replace")
        # spawn merges both streams into the log: machine-readable lines are stdout.
        lines = text.splitlines()
        out = "\n".join(x for x in lines if parse.is_machine_readable(x))
        err = "\n".join(x for x in lines if not parse.is_machine_readable(x))
        result = Result(argv, code, out, err, time.monotonic() - started)
        if not result.ok:
            found = runner.classify(result, self.rules)
            assert found is not None  # the last rule matches everything
            raise found
        return result


def _report(log: Path, seen: int, progress: Progress, *, final: bool = False) -> int:
    """Send the complete ``ui`` lines after byte ``seen`` of ``log`` to ``progress``."""
    try:
        with open(log, "rb") as f:
            f.seek(seen)
            chunk = f.read()
    except FileNotFoundError:
        return seen
    end = len(chunk) if final else chunk.rfind(b"\n") + 1
    for message in parse.ui_messages(chunk[:end].decode(errors="replace")):
        progress(message)
    return seen + end


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    """TERM the process group ``spawn`` made for ``proc``, KILL it if it lingers."""
    signals.end_group(proc.pid, hard=False)
    try:
        proc.wait(timeout=_KILL_GRACE)
    except subprocess.TimeoutExpired:
        signals.end_group(proc.pid, hard=True)
        proc.wait(timeout=_KILL_GRACE)
