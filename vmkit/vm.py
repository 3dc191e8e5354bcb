"""``VM``: the friendly layer people and other tools use; providers stay underneath.

vm = vmkit.create("demo")
vm.start()
vm.run(["uname", "-a"]).stdout
vm.share("~/data")          # appears in the guest at the same path
vm.forward(8888)            # 127.0.0.1:8888 on the host reaches port 8888 in the guest
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, overload

import attrs

from vmkit import reconcile, sharepolicy, state
from vmkit.errors import (
    BootTimeout,
    ConsoleSilent,
    ForwardExists,
    ForwardNotFound,
    GuestError,
    InvalidInput,
    NotSupported,
    ShareExists,
    ShareNotFound,
    SSHError,
    VMAmbiguous,
    VMExists,
    VmkitError,
    VMNotFound,
    VMNotRunning,
    VMUnreachable,
)
from vmkit.guest import boottime, console, keys
from vmkit.guest import clock as guest_clock
from vmkit.guest.pathmap import guest_path
from vmkit.guest.ready import Probe, wait_for
from vmkit.guest.ssh import SSHSession
from vmkit.home import check_name
from vmkit.host import accel as accel_mod
from vmkit.host import arch as arch_mod
from vmkit.host import interrupts, procs, signals
from vmkit.host.faults import point
from vmkit.host.netutil import check_port_number, read_banner, require_free
from vmkit.host.runner import Result
from vmkit.progress import Progress, no_progress
from vmkit.providers import registry
from vmkit.providers.base import RESUMED_KEY, Provider, Status, VMState
from vmkit.state import ForwardSpec, Intent, ShareSpec, SSHEndpoint, VMRecord

if TYPE_CHECKING:
    import docker

    from vmkit.host.fallback import Plan
    from vmkit.mechanisms.base import ForwardMechanism, ShareMechanism

M = TypeVar("M", bound=Any)

DEFAULT_NAME = "default"
GUEST_USER = "vmkit"

#: Notices a user should see (a fallback taken, an accelerator that failed); the CLI shows
#: them as warnings, other tools route them as they like.
log = logging.getLogger("vmkit")

#: How long a booting kernel may keep its banner off the console before the boot counts as
#: failed. With a hardware accelerator it comes within a second, so silence means the
#: accelerator cannot run the kernel. Under TCG it takes ~5 s on a quiet host (decompressing
#: the kernel), much longer on a loaded one, and there is no fallback left: be generous.
WATCHDOG_HW = accel_mod.PROOF_TIMEOUT
WATCHDOG_TCG = 120.0


class VM:
    """One VM known to vmkit. Cheap to make; every query reads the real state."""

    def __init__(self, record: VMRecord) -> None:
        self.record = record
        self._provider: Provider | None = None
        self._ssh: SSHSession | None = None

    def __repr__(self) -> str:
        return f"<VM {self.name!r} provider={self.record.provider}>"

    @property
    def name(self) -> str:
        return self.record.name

    @property
    def provider(self) -> Provider:
        if self._provider is None:
            self._provider = registry.get(self.record.provider or "qemu")
        return self._provider

    def reload(self) -> VMRecord:
        """Re-read the record from disk (another process may have changed it)."""
        self.record = state.load(self.name)
        return self.record

    # -- state ----------------------------------------------------------------------------

    def status(self, *, ask_guest: bool = True) -> Status:
        """The real state, from the hypervisor (``Provider.status`` tells what ``ask_guest`` does)."""
        if not self.record.provider:
            return Status(VMState.BROKEN, "creation did not finish", ("no VM record",))
        st = self.provider.status(self.record, ask_guest=ask_guest)
        if st.state is VMState.STARTING and self._was_ready(st):
            return attrs.evolve(st, detail="unreachable: SSH answered since boot, and not now")
        return st

    def _was_ready(self, st: Status) -> bool:
        """This boot of the VM (the same process) answered SSH before."""
        ready = self.record.extra.get("ready_pid")
        return st.pid is not None and ready == st.pid

    def is_running(self) -> bool:
        return self.status().state in (VMState.RUNNING, VMState.STARTING)

    def _require_changeable(self) -> None:
        """Running, or stopped on a provider that applies changes at the next start."""
        if self.provider.capabilities.offline_changes and self.status().state is VMState.STOPPED:
            return
        self.require_running()

    def require_running(self) -> None:
        """Return once the VM answers SSH: wait if it is booting, fail at once otherwise."""
        st = self.status()
        if st.state is VMState.STARTING and self._was_ready(st):
            last = console.read(self.record.files.serial_log).last
            raise VMUnreachable(
                f"VM {self.name!r} was up, but its SSH does not answer now"
                + (f"; last console line: {last!r}" if last else ""),
                hint=f"restart it with `vmkit stop --force {self.name}` and `vmkit start "
                f"{self.name}`; its console log is {self.record.files.serial_log}",
            )
        if st.state is VMState.STARTING:
            self.wait_ready(docker=False)
        elif st.state is not VMState.RUNNING:
            raise VMNotRunning(f"VM {self.name!r} is not running ({st.state.value})")

    # -- lifecycle ------------------------------------------------------------------------

    def start(
        self, *, progress: Progress = no_progress, wait: bool = True, timeout: float = 300
    ) -> list[str]:
        """Boot the VM (no-op if it runs), wait until SSH and dockerd answer, re-apply shares and forwards.

        Returns one line per share or forward that did not come back. A boot that fails stops
        what it started, so nothing is left running. With the accelerator left to ``auto``, a
        hardware accelerator under which the kernel stays silent is recorded as not working
        here, and the VM boots once more with software emulation.
        """
        for attempt in (1, 2):
            booted = self._boot(progress)
            if not wait:
                return []
            try:
                self.wait_ready(progress=progress, timeout=timeout)
                break
            except ConsoleSilent as e:
                if booted:
                    self._abort_boot()
                if not booted or attempt == 2 or not self._after_silence(e):
                    raise
            except BaseException:
                if booted:
                    self._abort_boot()
                raise
        problems = self.reapply(progress=progress)
        return problems + self._resume_automatic()

    def _boot(self, progress: Progress) -> bool:
        """Start the VM unless it runs; True if this call started it."""
        with state.locked(self.name):
            self.reload()
            if self.is_running():
                return False
            self._close_ssh()
            if self.provider.capabilities.accelerators:
                self.record.extra["accel"] = self._choose_accel()
            self.record.extra.pop("ready_pid", None)
            self.provider.start(self.record, progress)
            state.save(self.record)
        return True

    def _choose_accel(self) -> str:
        """The accelerator for this boot: as asked, or under ``auto`` the best proven one."""
        from vmkit.host.fallback import choose
        from vmkit.host.virt import detect, notice

        request = str(self.record.extra.get("accel_request", "auto"))
        if request == "tcg" or not arch_mod.native(self.record.arch):
            # A box of another processor runs emulated whatever the host has.
            return "tcg"
        hav = detect(kernel=Path(str(self.record.extra["kernel"])))
        chosen = choose("qemu", hav, None, request, self.record.arch).accel
        if chosen == "tcg" and self.record.extra.get("accel") != "tcg":
            log.warning(notice(hav))
        return chosen

    def _after_silence(self, e: ConsoleSilent) -> bool:
        """Record that the accelerator did not run the kernel; True to boot again with TCG."""
        used = str(self.record.extra.get("accel", "tcg"))
        if used == "tcg":
            return False
        accel_mod.record(
            used,
            Path(str(self.record.extra["kernel"])),
            binary=arch_mod.qemu_binary(self.record.arch),
            ok=False,
            detail=e.message,
        )
        if self.record.extra.get("accel_request", "auto") != "auto":
            return False
        log.warning(f"{e.message}; booting again with software emulation (TCG)")
        return True

    def _abort_boot(self) -> None:
        """Stop a boot that failed, with every helper it started; the VM ends up stopped."""
        with state.locked(self.name):
            self._close_ssh()
            self.provider.stop(self.record, timeout=0, force=True)
            _kill_helpers(self.record)

    def wait_ready(
        self, *, progress: Progress = no_progress, timeout: float = 300, docker: bool = True
    ) -> dict[str, float]:
        """Wait through the boot probes (kernel → process → SSH banner → login → dockerd)."""
        reached = wait_for(self._probes(docker=docker), timeout=timeout, progress=progress)
        with state.locked(self.name):
            self.reload()
            # Only the process is wanted: asking the guest too would cost it one more sshd.
            pid = self.status(ask_guest=False).pid
            if pid is not None and self.record.extra.get("ready_pid") != pid:
                self.record.extra["ready_pid"] = pid
                state.save(self.record)
        return reached

    def boot_timeline(self) -> boottime.Timeline:
        """Where the current boot's time went, phase by phase (vmkit.guest.boottime).

        Needs the hypervisor's process on this host (QEMU VMs) and a guest with systemd.
        """
        self.require_running()
        pid = self.status().pid
        if self.record.extra.get(RESUMED_KEY):
            raise NotSupported(
                f"VM {self.name!r} did not boot: it was quick-started from its box's saved boot",
                hint="a VM made with `--no-quick-start` boots, and its boot can be timed",
            )
        if pid is None or not self.provider.capabilities.console_log:
            raise NotSupported(
                f"vmkit cannot time the boot of {self.name!r}: it has no hypervisor process "
                "on this host whose start it knows",
                hint="the boot timeline is for QEMU VMs; inside any guest, "
                "`systemd-analyze` tells the part after the kernel started",
            )
        return boottime.measure(
            lambda argv: self.run(list(argv), sudo=True, timeout=60).stdout,
            lambda: procs.age(pid),
        )

    def _probes(self, *, docker: bool) -> list[Probe]:
        ep = self._endpoint()
        log_path = self.record.files.serial_log

        def process() -> bool:
            st = self.status(ask_guest=False)
            if st.state in (VMState.STOPPED, VMState.BROKEN):
                tail = _tail(log_path, 5)
                raise VMNotRunning(
                    f"VM {self.name!r} stopped while booting ({st.detail or st.state.value})",
                    hint=f"see {log_path}" + (f"; last lines: {tail}" if tail else ""),
                )
            return True

        def kernel() -> bool:
            process()
            return console.kernel_started(log_path)

        def banner() -> bool:
            # One connection per try: under QEMU's user networking every connection made before
            # the guest's network is up reaches sshd seconds later anyway (slirp retries the
            # SYN), each one a forked sshd competing with the boot; process() does not connect.
            if read_banner(ep.host, ep.port, timeout=3) is not None:
                return True
            process()
            if console.read(log_path).stopped:  # a panicked kernel will not get any further
                raise stuck(console.WAITING_FOR_SSH)(0)
            return False

        def login() -> bool:
            try:
                self.run(["true"], timeout=20)
            except SSHError:
                self._close_ssh()
                return False
            return True

        def clock() -> bool:
            # A quick-started guest took the host's time from its reseed, about a second late.
            try:
                guest_clock.set_from_host(self.ssh())
            except SSHError:
                self._close_ssh()
                return False
            return True

        def dockerd() -> bool:
            # vmkit-mini's dockerd starts right after sshd (recipe 3) or at this first call
            # (recipe 2, socket-activated), and the call waits for it; one restarting containers
            # under TCG can take long too: a call that does not finish in time means "not yet";
            # the probe's own deadline and hint still apply.
            try:
                return self.run(
                    ["docker", "info", "--format", "{{.ServerVersion}}"], check=False, timeout=60
                ).ok
            except SSHError:
                return False

        def stuck(waiting_for: str) -> Callable[[float], VmkitError]:
            return lambda seconds: BootTimeout(
                console.diagnose(log_path, waiting_for, seconds),
                hint=f"the console log is {log_path}",
            )

        probes = [Probe("the VM process", process, f"see the console log {log_path}")]
        # A quick-started VM's kernel ran long ago, in its saved boot: its console stays quiet.
        if self.provider.capabilities.console_log and not self.record.extra.get(RESUMED_KEY):
            used = str(self.record.extra.get("accel", "tcg"))
            limit = WATCHDOG_TCG if used == "tcg" else WATCHDOG_HW

            def silent(seconds: float) -> VmkitError:
                last = console.read(log_path).last
                return ConsoleSilent(
                    accel_mod.silent_detail(used, limit, last),
                    hint="leave out --accel (auto) to fall back to software emulation; "
                    f"the console log is {log_path}"
                    if used != "tcg"
                    else f"the console log is {log_path}",
                )

            probes.append(Probe("the kernel", kernel, "", limit=limit, failure=silent))
        probes += [
            # Retried often: until sshd listens, the guest refuses a connection at once.
            Probe(
                "the SSH banner",
                banner,
                "",
                failure=stuck(console.WAITING_FOR_SSH),
                max_wait=0.25,
            ),
            Probe("SSH login", login, "", failure=stuck(console.WAITING_FOR_LOGIN)),
        ]
        if self.record.extra.get(RESUMED_KEY):
            probes.append(Probe("the guest's clock", clock, "the guest could not set its clock"))
        # Only vmkit's own box is known to run dockerd; other machines may have none.
        if docker and self.record.box.startswith("vmkit-mini"):
            probes.append(
                Probe(
                    "dockerd",
                    dockerd,
                    "",
                    failure=lambda seconds: BootTimeout(
                        f"SSH works but dockerd did not answer after {seconds:.0f} s",
                        hint=f"`vmkit ssh {self.name} -- sudo systemctl status docker` tells why",
                    ),
                )
            )
        return probes

    def stop(self, *, timeout: float = 60, force: bool = False) -> None:
        """Shut down: gracefully from inside the guest, forced after ``timeout`` seconds."""
        if not self.provider.capabilities.power:
            raise NotSupported(
                f"vmkit does not power off {self.name!r}: it is a machine vmkit only attached to",
                hint="shut it down yourself; `vmkit destroy` only forgets it",
            )
        with state.locked(self.name):
            self.reload()
            if self.status().state is VMState.STOPPED:
                return
            if not force:
                # Guests without an ACPI daemon ignore the power button; systemd does not.
                with contextlib.suppress(VmkitError):
                    self.run(["systemctl", "poweroff", "--no-block"], sudo=True, timeout=10)
            self._close_ssh()
            self.provider.stop(self.record, timeout=timeout, force=force)
            _kill_helpers(self.record)

    def destroy(self) -> None:
        """Stop the VM and remove everything vmkit made for it."""
        with state.locked(self.name):
            self._destroy_locked()

    def _destroy_locked(self) -> None:
        with contextlib.suppress(VMNotFound):
            self.reload()
        self._close_ssh()
        if self.record.provider:
            self.provider.destroy(self.record)
        _kill_helpers(self.record)
        shutil.rmtree(self.record.files.dir, ignore_errors=True)
        state.drop_lock(self.name)

    def helpers(self) -> dict[str, int]:
        """Host processes serving this VM now, by pid-file name: ``agent``, ``virtiofs-TAG``, ..."""
        files = self.record.files
        found = {}
        for pidfile in sorted(files.dir.glob("*.pid")):
            pid = procs.read_pid(pidfile)
            if pidfile != files.pid and pid is not None and procs.alive(pid, str(files.dir)):
                found[pidfile.stem] = pid
        return found

    # -- guest access ---------------------------------------------------------------------

    def _endpoint(self) -> SSHEndpoint:
        if self.record.ssh is None or not self.record.ssh.port:
            raise VMNotRunning(f"VM {self.name!r} has no SSH endpoint yet")
        return self.record.ssh

    def ssh(self) -> SSHSession:
        """The kept SSH session to the guest (opened on first use)."""
        ep = self._endpoint()
        if self._ssh is None or self._ssh.endpoint != ep:
            self._close_ssh()
            self._ssh = SSHSession(ep)
        return self._ssh

    def use_ssh(self, session: SSHSession) -> None:
        """Carry this VM's guest access on ``session`` (the agent's one kept connection)."""
        self._ssh = session

    def _close_ssh(self) -> None:
        if self._ssh is not None:
            self._ssh.close()
            self._ssh = None

    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float = 120,
        input: bytes | str | None = None,
        sudo: bool = False,
    ) -> Result:
        """Run ``argv`` in the guest over SSH; ``GuestCommandFailed`` if it exits non-zero."""
        return self.ssh().run(argv, check=check, timeout=timeout, input=input, sudo=sudo)

    def ssh_command(self, argv: Sequence[str] = ()) -> list[str]:
        """An OpenSSH argv that logs into the guest with the pinned host key (for interactive use)."""
        ep = self._endpoint()
        files = self.record.files
        state.atomic_write(
            files.known_hosts, f"{_known_hosts_name(ep)} {ep.host_key}\n", mode=0o600
        )
        cmd = [
            "ssh",
            "-i",
            ep.key_file,
            "-p",
            str(ep.port),
            "-o",
            f"UserKnownHostsFile={files.known_hosts}",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "ConnectTimeout=15",
            f"{ep.user}@{ep.host}",
        ]
        if argv:
            import shlex

            cmd += ["--", shlex.join(list(argv))]
        return cmd

    def docker(self) -> docker.DockerClient:
        """A docker-py client for the VM's Docker endpoint (the agent's Docker API proxy):
        bind-mounted host folders are shared and published ports forwarded, as for the
        docker CLI after ``vmkit env``."""
        from vmkit.docker.client import endpoint_client

        return endpoint_client(self)

    # -- shares ---------------------------------------------------------------------------

    def share(
        self,
        path: str | os.PathLike[str],
        *,
        target: str | None = None,
        readonly: bool = False,
        force: bool = False,
        mechanism: str | None = None,
        progress: Progress = no_progress,
        auto: str = "",
        owner: str = "",
    ) -> ShareSpec:
        """Share host folder ``path`` into the running VM, at the same path unless ``target``.

        Idempotent: sharing the same folder at the same place again returns the existing share.
        Refused before anything changes (``InvalidInput``): a folder the user cannot read, ``/``
        or the home folder (unless ``force``), and a guest target that is, or resolves in the
        guest to, a system folder or the login user's home (unless ``force``; ``/`` never).
        A symlinked ``path`` is resolved, and ``progress`` says so.
        ``auto``/``owner`` mark a share vmkit makes on its own (``"container"``, the container's
        name); sharing such a folder again makes it the user's.
        """
        host = sharepolicy.host_source(path, force=force)
        source = host.path
        for note in host.notes:
            progress(note)
        dest = guest_path(target) if target else guest_path(str(source))
        sharepolicy.check_target(dest, resolved=None, home=None, force=force)
        with state.locked(self.name):
            self.reload()
            settled = self._settle(progress)
            for s in self.record.shares:
                if s.source == str(source):
                    if s.target == dest:
                        return self._claim_share(s) if s.auto and not auto else s
                    raise ShareExists(
                        f"{source} is already shared at {s.target}", hint="unshare it first"
                    )
                if s.target == dest:
                    raise ShareExists(
                        f"guest path {dest} is already used by the share of {s.source}",
                        hint="pick another --to path",
                    )
            self._require_changeable()
            # An attached VM whose SSH is not known yet cannot be asked; the mechanism then
            # refuses with how to finish the attach.
            if self.is_running() and self.record.ssh is not None and self.record.ssh.port:
                resolved, home = self._guest_target(dest)
                sharepolicy.check_target(dest, resolved=resolved, home=home, force=force)
            spec = ShareSpec(
                source=str(source), target=dest, readonly=readonly, auto=auto, owner=owner
            )
            mech = self._pick(self._share_mechs(), mechanism, "share", progress)
            sharepolicy.check_readonly(mech.name, readonly)
            planned = mech.planned(spec)
            _refuse_if_blocked(settled, lambda s: reconcile.in_the_way(s, planned))
            progress(f"sharing {source} at {dest} in the guest with {mech.name}")
            with self._change(reconcile.new_intent("share", share=planned)) as intent:
                point("share:intent")
                try:
                    done = mech.add(planned)
                except Exception:
                    self._drop_intent(intent)  # the mechanism undid its steps
                    raise
                point("share:added")
                self.record.shares.append(done)
                self._drop_intent(intent)
            return done

    def _guest_target(self, dest: str) -> tuple[str | None, str | None]:
        """What ``dest`` resolves to in the guest (symlinks and ``..`` followed), and the
        login user's home; ``None`` for what the guest could not tell."""
        script = 'realpath -m -- "$1" && printf "%s\\n" "$HOME"'
        r = self.ssh().run(["sh", "-c", script, "sh", dest], check=False)
        lines = r.stdout.splitlines()
        if not r.ok or len(lines) != 2:
            return None, None
        return lines[0] or None, lines[1] or None

    def _claim_share(self, spec: ShareSpec) -> ShareSpec:
        """The user asked for a share vmkit had made on its own: from now on it is theirs."""
        mine = attrs.evolve(spec, auto="", owner="")
        self.record.shares = [mine if s is spec else s for s in self.record.shares]
        state.save(self.record)
        return mine

    def unshare(self, path: str | os.PathLike[str]) -> ShareSpec:
        """Remove the share of host folder ``path`` (or of guest path ``path``)."""
        with state.locked(self.name):
            self.reload()
            before = self._find_share(str(path), missing_ok=True)
            self._settle()
            if before is not None and before not in self.record.shares:
                return before  # an interrupted unshare of it, finished by the settling
            spec = self._find_share(str(path))
            with self._change(reconcile.new_intent("unshare", share=spec)) as intent:
                point("unshare:intent")
                if self.is_running() or self.provider.capabilities.offline_changes:
                    self._mech_named(self._share_mechs(), spec.mechanism).remove(spec)
                point("unshare:removed")
                self.record.shares = [s for s in self.record.shares if s is not spec]
                self._drop_intent(intent)
            return spec

    def shares(self) -> list[ShareSpec]:
        """The desired shares (``active_shares`` tells what is really mounted)."""
        return list(self.reload().shares)

    def active_shares(self) -> list[ShareSpec]:
        """What is really in place right now, read from the hypervisor and the guest."""
        if not self.is_running():
            return []
        return [s for m in self._share_mechs() for s in m.active()]

    @overload
    def _find_share(self, path: str) -> ShareSpec: ...
    @overload
    def _find_share(self, path: str, *, missing_ok: bool) -> ShareSpec | None: ...

    def _find_share(self, path: str, *, missing_ok: bool = False) -> ShareSpec | None:
        candidates = {path}
        with contextlib.suppress(VmkitError):
            candidates.add(str(Path(path).expanduser().resolve()))
        for s in self.record.shares:
            if s.source in candidates or s.target in candidates:
                return s
        if missing_ok:
            return None
        raise ShareNotFound(f"{path} is not shared with VM {self.name!r}")

    # -- forwards -------------------------------------------------------------------------

    def forward(
        self,
        host_port: int,
        guest_port: int | None = None,
        *,
        proto: str = "tcp",
        public: bool = False,
        mechanism: str | None = None,
        auto: str = "",
        owner: str = "",
    ) -> ForwardSpec:
        """Forward ``host_port`` on 127.0.0.1 (all interfaces with ``public``) to ``guest_port``.

        Idempotent for an identical forward (one vmkit made on its own becomes the user's); a
        host port used otherwise is ``ForwardExists``. ``auto``/``owner`` mark a forward
        vmkit makes on its own (``"container"``/``"listener"``, and for what).
        """
        if proto not in ("tcp", "udp"):
            raise InvalidInput(f"protocol {proto!r} is not tcp or udp")
        check_port_number(host_port, "host port")
        gport = check_port_number(guest_port if guest_port is not None else host_port, "guest port")
        host_ip = "0.0.0.0" if public else "127.0.0.1"
        spec = ForwardSpec(
            host_port=host_port,
            guest_port=gport,
            proto=proto,
            host_ip=host_ip,
            auto=auto,
            owner=owner,
        )
        if host_port < 1024 and signals.low_ports_need_root() and not signals.is_root():
            raise InvalidInput(
                f"host port {host_port} is privileged (below 1024)",
                hint="use a port from 1024 up, e.g. 8888",
            )
        with state.locked(self.name):
            self.reload()
            settled = self._settle()
            for f in self.record.forwards:
                if f.key == spec.key:
                    if (f.guest_port, f.host_ip) == (gport, host_ip):
                        if f.auto and not auto:
                            mine = attrs.evolve(f, auto="", owner="")
                            self.record.forwards = [
                                mine if x is f else x for x in self.record.forwards
                            ]
                            state.save(self.record)
                            return mine
                        return f
                    raise ForwardExists(
                        f"host port {host_port}/{proto} already forwards to guest port {f.guest_port}",
                        hint=f"`vmkit unforward {host_port}` first",
                    )
            self._require_changeable()
            _refuse_if_blocked(settled, lambda f: reconcile.in_the_way(f, spec))
            require_free(host_port, host_ip, proto)
            mech = self._pick(self._forward_mechs(), mechanism, "forward")
            planned = attrs.evolve(spec, mechanism=mech.name)
            with self._change(reconcile.new_intent("forward", forward=planned)) as intent:
                point("forward:intent")
                try:
                    done = mech.add(planned)
                except Exception:
                    self._drop_intent(intent)
                    raise
                point("forward:added")
                self.record.forwards.append(done)
                self._drop_intent(intent)
            return done

    def unforward(self, host_port: int, *, proto: str = "tcp") -> ForwardSpec:
        """Stop forwarding ``host_port``."""
        with state.locked(self.name):
            self.reload()
            before = [f for f in self.record.forwards if f.key == (proto, host_port)]
            self._settle()
            match = [f for f in self.record.forwards if f.key == (proto, host_port)]
            if before and not match:
                return before[0]  # an interrupted unforward of it, finished by the settling
            if not match:
                raise ForwardNotFound(
                    f"host port {host_port}/{proto} is not forwarded to VM {self.name!r}"
                )
            spec = match[0]
            with self._change(reconcile.new_intent("unforward", forward=spec)) as intent:
                point("unforward:intent")
                if self.is_running() or self.provider.capabilities.offline_changes:
                    self._mech_named(self._forward_mechs(), spec.mechanism).remove(spec)
                point("unforward:removed")
                self.record.forwards = [f for f in self.record.forwards if f is not spec]
                self._drop_intent(intent)
            return spec

    def forwards(self) -> list[ForwardSpec]:
        """The desired forwards."""
        return list(self.reload().forwards)

    def active_forwards(self) -> list[ForwardSpec]:
        """What is really forwarded right now."""
        if not self.is_running():
            return []
        return [f for m in self._forward_mechs() for f in m.active()]

    def auto_forward_settings(self) -> dict[str, bool]:
        """``listeners``: guest listeners are forwarded automatically (``vmkit forward --auto``);
        ``public``: containers' ports published on 0.0.0.0 listen on all host interfaces."""
        extra = self.reload().extra
        return {
            "listeners": bool(extra.get("auto_listeners", False)),
            "public": bool(extra.get("public_forwards", False)),
        }

    def set_auto_forward(
        self, *, listeners: bool | None = None, public: bool | None = None
    ) -> dict[str, bool]:
        """Change the automatic-forward settings (kept in the record); the agent follows them."""
        with state.locked(self.name):
            self.reload()
            if listeners is not None:
                self.record.extra["auto_listeners"] = listeners
            if public is not None:
                self.record.extra["public_forwards"] = public
            state.save(self.record)
        if listeners is not None and self.is_running():
            from vmkit.agent.client import request

            # Outside the lock: the agent adds and removes forwards, each taking it.
            request(self.record.files, "auto-listeners", start=listeners, on=listeners)
        return self.auto_forward_settings()

    def _resume_automatic(self) -> list[str]:
        """After a boot: the agent watches guest listeners and containers again, if wanted."""
        from vmkit.agent.client import request

        problems = []
        if self.record.extra.get("auto_listeners"):
            try:
                request(self.record.files, "auto-listeners", on=True)
            except VmkitError as e:
                problems.append(f"automatic forwards of guest listeners: {e}")
        else:  # left from before the VM stopped; the watcher, when on, drops them itself
            for f in self.record.forwards:
                if f.auto == "listener":
                    with contextlib.suppress(VmkitError):
                        self.unforward(f.host_port, proto=f.proto)
        if any(f.auto == "container" for f in self.record.forwards):
            try:
                request(self.record.files, "docker-endpoint")
            except VmkitError as e:
                problems.append(f"containers' forwards: {e}")
        return problems

    # -- mechanisms -----------------------------------------------------------------------

    def _share_mechs(self) -> list[ShareMechanism]:
        return self.provider.share_mechanisms(self.record, self.ssh)

    def _forward_mechs(self) -> list[ForwardMechanism]:
        return self.provider.forward_mechanisms(self.record, self.ssh)

    def _pick(
        self, mechs: Sequence[M], wanted: str | None, what: str, progress: Progress = no_progress
    ) -> M:
        """The mechanism named ``wanted``, else the first, best first, whose checks pass.

        Each one passed over is reported through ``progress`` with the reason (a guest
        without the virtiofs module, no sftp-server on the host, ...).
        """
        if wanted:
            chosen = self._mech_named(mechs, wanted)
            if hasattr(chosen, "check"):
                chosen.check()
            return chosen
        reasons = []
        for m in mechs:
            if not hasattr(m, "check"):
                return m
            try:
                m.check()
            except (NotSupported, GuestError) as e:
                reasons.append(f"{m.name}: {e.message}")
                progress(f"{m.name} cannot be used ({e.message}); trying the next {what} mechanism")
                continue
            return m
        raise NotSupported(f"no {what} mechanism works on VM {self.name!r}: " + "; ".join(reasons))

    def _mech_named(self, mechs: Sequence[M], name: str) -> M:
        for m in mechs:
            if m.name == name:
                return m
        known = ", ".join(m.name for m in mechs)
        raise NotSupported(
            f"mechanism {name!r} is not offered by provider {self.record.provider}",
            hint=f"use one of: {known}",
        )

    # -- crash safety ---------------------------------------------------------------------

    @contextlib.contextmanager
    def _change(self, intent: Intent) -> Iterator[Intent]:
        """A live change: its intent saved before the first side effect, Ctrl-C held until
        it is done (a second one abandons it; the next command settles what it left)."""

        def notice() -> None:
            log.warning(
                f"finishing the {intent.describe()} first; interrupt again to abandon it "
                f"(the next vmkit command on {self.name!r} cleans up)"
            )

        with interrupts.deferred(notice):
            self.record.pending.append(intent)
            state.save(self.record)
            yield intent

    def _drop_intent(self, intent: Intent) -> None:
        self.record.pending = [i for i in self.record.pending if i is not intent]
        state.save(self.record)

    def _settle(self, progress: Progress = no_progress) -> reconcile.Settled:
        """Under the lock: clean what killed commands left, before this one changes anything.

        Reality is read only from a VM that answers (or a stopped one whose provider keeps
        shares and forwards while stopped); a stopped QEMU VM keeps nothing, so there only the
        record's intents are settled. A booting or unreachable VM is left alone.
        """
        where = self._settle_scope()
        if where == "live":
            settled = reconcile.settle(
                self.record, self._share_mechs(), self._forward_mechs(), self.ssh
            )
        elif where == "record" and self.record.pending:
            settled = reconcile.settle_offline(self.record)
        else:
            return reconcile.Settled()
        if settled.fixed:
            state.save(self.record)
        for line in settled.fixed:
            progress(line)
        return settled

    def _settle_scope(self) -> str:
        """``live`` (read the hypervisor and guest), ``record`` (stopped) or ``none``."""
        st = self.status().state
        if st is VMState.RUNNING:
            return "live"
        if st is VMState.STOPPED:
            return "live" if self.provider.capabilities.offline_changes else "record"
        return "none"

    def orphans(self) -> list[reconcile.Orphan]:
        """What killed commands left on the VM, read from the hypervisor, the guest and the
        host's processes (shown by ``vmkit shares``, ``forwards`` and ``status``)."""
        self.reload()
        if self._settle_scope() != "live":
            return []
        return reconcile.find(self.record, self._share_mechs(), self._forward_mechs())

    def pending(self) -> list[Intent]:
        """Changes begun and not finished: their command was killed, or still runs."""
        return list(self.reload().pending)

    def repair(self, *, progress: Progress = no_progress) -> reconcile.Settled:
        """Make reality match the record: remove what killed commands left, finish their
        removals, and put back wanted shares and forwards that are missing (VM running)."""
        with state.locked(self.name):
            self.reload()
            settled = self._settle(progress)
            if self.is_running():
                fixed, problems = self._reapply_locked(progress)
                settled.fixed.extend(fixed)
                settled.problems.extend(problems)
            return settled

    def reapply(self, *, progress: Progress = no_progress) -> list[str]:
        """Put the desired shares and forwards in place after a boot; return one line per failure."""
        with state.locked(self.name):
            self.reload()
            try:
                settled = self._settle(progress)
            except VmkitError as e:  # the boot itself went well: report, and carry on
                settled = reconcile.Settled(problems=[e])
            _, problems = self._reapply_locked(progress)
            return [str(e) for e in settled.problems + problems]

    def _reapply_locked(self, progress: Progress) -> tuple[list[str], list[VmkitError]]:
        """Add the wanted shares and forwards that are not in place: (what was put back, failures)."""
        fixed: list[str] = []
        problems: list[VmkitError] = []
        smechs = self._share_mechs()
        fmechs = self._forward_mechs()
        active_s = {(s.source, s.target) for m in smechs for s in m.active()}
        active_f = {f.key for m in fmechs for f in m.active()}
        new_shares = []
        for s in self.record.shares:
            if (s.source, s.target) in active_s:
                new_shares.append(s)
                continue
            try:
                progress(f"re-sharing {s.source}")
                mech = (
                    self._mech_named(smechs, s.mechanism)
                    if s.mechanism
                    else self._pick(smechs, None, "share", progress)
                )
                if s.mechanism:
                    mech.remove(s)  # what a killed start or repair made of it, if anything
                new_shares.append(mech.add(attrs.evolve(s, tag="")))
                fixed.append(f"put back the share of {s.source} ({mech.name})")
            except VmkitError as e:
                problems.append(type(e)(f"share {s.source}: {e.message}", hint=e.hint))
                new_shares.append(s)
        new_forwards = []
        for f in self.record.forwards:
            if f.auto:
                # Automatic forwards follow their container or listener: the agent's watcher
                # puts back those whose container came back (restart policies) and drops the rest.
                new_forwards.append(f)
                continue
            if f.key in active_f:
                new_forwards.append(f)
                continue
            try:
                progress(f"re-forwarding port {f.host_port}")
                fmech = (
                    self._mech_named(fmechs, f.mechanism)
                    if f.mechanism
                    else self._pick(fmechs, None, "forward", progress)
                )
                new_forwards.append(fmech.add(f))
                fixed.append(f"put back the forward of port {f.host_port} ({fmech.name})")
            except VmkitError as e:
                problems.append(type(e)(f"forward {f.host_port}: {e.message}", hint=e.hint))
                new_forwards.append(f)
        self.record.shares = new_shares
        self.record.forwards = new_forwards
        state.save(self.record)
        return fixed, problems


def _refuse_if_blocked(settled: reconcile.Settled, blocks: Callable[[object], bool]) -> None:
    """A leftover in the way of this share or forward could not be removed: say why and
    change nothing; other leftovers that stay are only reported."""
    for spec, e in settled.blocked:
        if blocks(spec):
            raise e
    for e in settled.problems:
        log.warning(str(e))


# -- module-level API ---------------------------------------------------------------------


def create(
    name: str = DEFAULT_NAME,
    *,
    box: str = "vmkit-mini",
    arch: str | None = None,
    cpus: int = 2,
    memory: int = 1024,
    disk: int = 8,
    provider: str | None = None,
    accel: str | None = None,
    quick_start: bool = True,
    progress: Progress = no_progress,
) -> VM:
    """Create (not start) a VM from a box; the box is built first if it is not in the cache.

    With ``quick_start`` (QEMU under software emulation, vmkit-mini), the VM's first start
    resumes a boot of the box saved once, with the VM's own identity installed at once
    (``vmkit.providers.qemu.quickstart``), instead of booting; off, it boots.

    The fallback policy (``vmkit.host.fallback``) decides what is left open: ``provider``
    (QEMU unless VirtualBox is asked for and can run the box), ``arch`` (amd64, or i386 for
    VirtualBox's raw mode) and QEMU's accelerator (``accel``: ``auto``, the default, or one
    named; else ``$VMKIT_ACCEL``). A fallback taken is logged to the ``vmkit`` logger. An
    accelerator named that cannot run the box's kernel here raises ``AcceleratorFailed``
    before anything is made.
    """
    check_name(name)
    _check_sizes(cpus, memory, disk)
    if arch is not None:
        arch_mod.check(arch)
    request = accel_mod.requested(accel)
    plan = _plan(provider, arch, box, request, progress)
    prov = registry.get(plan.provider)
    if not prov.capabilities.create:
        raise NotSupported(
            f"vmkit cannot create machines with provider {plan.provider!r}",
            hint="adopt an existing one with `vmkit attach`",
        )
    with state.locked(name):
        files = state.new_folder(name)
        record = VMRecord(
            name=name,
            provider=plan.provider,
            box=box,
            arch=plan.arch,
            cpus=cpus,
            memory=memory,
            disk=disk,
            # Until the provider is done, the record says so: a crash in between shows as
            # broken, and destroy (which reads the provider from here) cleans it up.
            extra={
                "accel_request": request,
                "accel": plan.accel,
                "quick_start": quick_start,
                "incomplete": True,
            },
        )
        try:
            progress("making the VM's SSH identity (client key, guest host key, seed disk)")
            keys.generate(files.client_key, f"vmkit@{name}")
            host_pub = keys.generate(files.host_key, f"root@vmkit-{name}")
            from vmkit.guest.seed import hostname_for, make_seed

            make_seed(
                files.seed,
                authorized_key=keys.public_line(files.client_key),
                host_key=files.host_key,
                hostname=hostname_for(name),
            )
            record.ssh = SSHEndpoint(
                host="127.0.0.1",
                port=0,
                user=GUEST_USER,
                key_file=str(files.client_key),
                host_key=keys.key_type_and_blob(host_pub),
            )
            state.save(record)
            prov.create(record, progress)
            record.extra.pop("incomplete")
            state.save(record)
        except BaseException:
            # Whatever the provider made outside the folder (a registered VirtualBox VM) goes too.
            with contextlib.suppress(VmkitError):
                prov.destroy(record)
            shutil.rmtree(files.dir, ignore_errors=True)
            state.drop_lock(name)
            raise
    return VM(record)


def _plan(
    provider: str | None, arch: str | None, box: str, request: str, progress: Progress
) -> Plan:
    """Provider, arch and accelerator for a new VM, with the fallbacks logged."""
    from vmkit.host.fallback import choose, windows_advice
    from vmkit.host.virt import detect, notice

    asked = provider or "qemu"
    vbox = _vbox_version() if asked == "virtualbox" else None
    hav = detect()
    plan = choose(asked, hav, vbox, arch=arch)
    foreign = not arch_mod.native(plan.arch, hav.native)
    if (plan.provider, plan.arch) != (asked, arch or hav.native) or foreign:
        # A fallback taken, or a foreign box that runs emulated: said in one line.
        log.warning(plan.reason)
    if plan.provider != "qemu":
        return plan
    # Said before anything is made: the box build and the VM would be lost work.
    arch_mod.find_qemu(plan.arch)
    if foreign:
        # Refuses a hardware accelerator named for a box it cannot run.
        return choose("qemu", hav, None, request, plan.arch)
    if request == "auto" and plan.accel == "tcg":
        log.warning(notice(hav))
        if hav.system == "Windows":
            advice = windows_advice(hav, _vbox_version() if vbox is None else vbox)
            if advice:
                log.warning(advice)
    elif request not in ("auto", "tcg"):
        # A named hardware accelerator is proven now, on the box's kernel, so a VM that
        # cannot boot is never made.
        from vmkit import boxes

        kernel = boxes.ensure(box, plan.arch, progress=progress).kernel
        progress(f"checking that {accel_mod.display(request)} boots the box's kernel")
        plan = choose("qemu", detect(kernel=kernel), None, request, plan.arch)
    elif request == "tcg":
        plan = choose("qemu", hav, None, "tcg", plan.arch)
    return plan


def _vbox_version() -> tuple[int, int, int] | None:
    from vmkit.errors import ToolMissing
    from vmkit.providers.virtualbox import discover

    try:
        return discover.version()
    except ToolMissing:
        return None


def attach(
    url: str,
    name: str,
    *,
    key: str | os.PathLike[str] | None = None,
    fingerprint: str | None = None,
    user: str | None = None,
    trust_new_host_key: bool = False,
    progress: Progress = no_progress,
) -> VM:
    """Adopt a machine vmkit did not create, so share/forward/ssh work on it.

    ``ssh://user@host[:port]`` (needs ``key``), ``virtualbox:VMNAME`` (e.g. docker-machine's
    ``default``) or ``vagrant:PROJECT_DIR[:MACHINE]``. The guest's host key is pinned now.
    An SSH host's key comes from ``~/.ssh/known_hosts``; if that does not list the host, the
    key offered must match ``fingerprint``, or ``trust_new_host_key`` must say to take it as
    offered (else ``HostKeyUnknown``, which shows its fingerprint).
    """
    check_name(name)
    scheme = url.split(":", 1)[0]
    if state.exists(name):
        raise VMExists(f"a VM named {name!r} exists already")
    if scheme == "ssh":
        from vmkit.providers.sshhost import endpoint_for

        if key is None:
            raise InvalidInput(
                "attaching an SSH host needs its private key", hint="pass --key PATH"
            )
        endpoint = endpoint_for(
            url,
            Path(os.fspath(key)).expanduser(),
            expected_fingerprint=fingerprint,
            trust_new_host_key=trust_new_host_key,
        )
        record = VMRecord(name=name, provider="ssh", ssh=endpoint, extra={"url": url})
    elif scheme == "virtualbox":
        record = _attach_virtualbox(
            url, name, key=key, user=user, fingerprint=fingerprint, progress=progress
        )
    elif scheme == "vagrant":
        from vmkit.providers.vagrant import attach_record

        record = attach_record(url, name, progress=progress)
    else:
        raise InvalidInput(
            f"cannot attach {url!r}",
            hint="use ssh://user@host[:port], virtualbox:VMNAME or vagrant:PROJECT_DIR",
        )
    with state.locked(name):
        state.new_folder(name)
        state.save(record)
    return VM(record)


def _attach_virtualbox(
    url: str,
    name: str,
    *,
    key: str | os.PathLike[str] | None,
    user: str | None,
    fingerprint: str | None,
    progress: Progress = no_progress,
) -> VMRecord:
    """Any registered VM in any state; what SSH could not do yet is in ``extra["ssh_pending"]``
    (finish with ``vmkit attach --refresh NAME``)."""
    from vmkit.providers.virtualbox.adopt import attach_record

    return attach_record(
        url.split(":", 1)[1], name, key=key, user=user, fingerprint=fingerprint, progress=progress
    )


def open_vm(address: str) -> VM:
    """A VM by address: ``"qemu:NAME"``, ``"virtualbox:NAME"``, ``"vagrant:NAME"``, ``"ssh:NAME"``
    or a bare ``"NAME"`` (any provider). The VM must be known to vmkit (created or attached)."""
    provider, sep, name = address.partition(":")
    if not sep:
        return get(address)
    vm = get(name)
    if vm.record.provider != provider:
        raise InvalidInput(
            f"VM {name!r} belongs to provider {vm.record.provider!r}, not {provider!r}"
        )
    return vm


def get(name: str) -> VM:
    """The VM named ``name``; ``VMNotFound`` if there is none."""
    check_name(name)
    return VM(state.load(name))


def list_vms() -> list[VM]:
    """Every VM vmkit knows, by name."""
    out = []
    for n in state.names():
        with contextlib.suppress(VMNotFound):
            out.append(VM(state.load(n)))
    return out


def up(name: str = DEFAULT_NAME, *, progress: Progress = no_progress, **create_args: Any) -> VM:
    """Create the VM if needed, then start it and wait until SSH and dockerd answer.

    A VM whose creation was interrupted (a killed ``up``) is made again. Returns the VM;
    shares or forwards that did not come back are logged (``VM.start`` returns them).
    """
    vm = created(name, progress=progress, **create_args)
    for problem in vm.start(progress=progress):
        log.warning(f"did not come back: {problem}")
    return vm


def created(name: str, *, progress: Progress = no_progress, **create_args: Any) -> VM:
    """The VM ``name``, created first if there is none (or only an interrupted create's rest)."""
    check_name(name)
    if state.exists(name) and _remove_if_incomplete(name):
        log.warning(f"VM {name!r} was not fully created (an interrupted create): making it again")
    return get(name) if state.exists(name) else create(name, progress=progress, **create_args)


def _remove_if_incomplete(name: str) -> bool:
    """Remove what an interrupted create left; checked under the lock, so never a create that runs."""
    with state.locked(name):
        vm = get(name)
        if not vm.record.extra.get("incomplete"):
            return False
        vm._destroy_locked()
        return True


def resolve(name: str | None) -> VM:
    """The VM ``name``, or, with no name, the only running VM (else the one called "default")."""
    if name:
        return get(name)
    vms = list_vms()
    running = [v for v in vms if v.is_running()]
    if len(running) == 1:
        return running[0]
    if len(running) > 1:
        raise VMAmbiguous(f"{len(running)} VMs are running: {', '.join(v.name for v in running)}")
    if len(vms) == 1:
        return vms[0]
    if any(v.name == DEFAULT_NAME for v in vms):
        return get(DEFAULT_NAME)
    if not vms:
        raise VMNotFound("there is no VM yet", hint="create one with `vmkit up`")
    raise VMAmbiguous(
        f"no VM is running and there are {len(vms)}: {', '.join(v.name for v in vms)}"
    )


def _check_sizes(cpus: int, memory: int, disk: int) -> None:
    host_cpus = os.cpu_count() or 1
    if not 1 <= cpus <= max(host_cpus, 1) * 4:
        raise InvalidInput(
            f"--cpus {cpus} is out of range",
            hint=f"use 1 to {host_cpus} (this host has {host_cpus})",
        )
    if not 256 <= memory <= 1024 * 1024:
        raise InvalidInput(
            f"--memory {memory} MiB is out of range", hint="use at least 256 MiB, e.g. 1024"
        )
    if not 2 <= disk <= 4096:
        raise InvalidInput(f"--disk {disk} GiB is out of range", hint="use 2 to 4096 GiB")


def _known_hosts_name(ep: SSHEndpoint) -> str:
    """How OpenSSH names a host in known_hosts: bare on port 22, ``[host]:port`` otherwise."""
    return ep.host if ep.port == 22 else f"[{ep.host}]:{ep.port}"


def _tail(path: Path, n: int) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " / ".join(line.strip() for line in lines[-n:])


def _kill_helpers(record: VMRecord) -> None:
    """End every helper process (virtiofsd, agent) whose pid file is in the VM's folder."""
    folder = record.files.dir
    if not folder.is_dir():
        return
    for pidfile in folder.glob("*.pid"):
        pid = procs.read_pid(pidfile)
        if pid is not None and pidfile != record.files.pid:
            procs.terminate(pid, str(folder))
