"""The agent: one process per VM (started as ``python -m vmkit.hostagent VM_FOLDER``).

It holds the VM's one SSH connection and, on it, everything that needs a live host process:
reverse-sshfs shares and SSH-tunnel forwards (vmkit/agent/pump.py); vmkit/hostagent.py plugs
in what needs the VM layer: the Docker endpoint (a Docker API proxy, vmkit/docker/proxy.py,
with vmkit's part in vmkit/docker/auto.py) and the guest-listener auto-forward
(vmkit/agent/listeners.py). Requests
arrive on the agent's endpoint (vmkit/host/transport.py) in the protocol of
vmkit/agent/protocol.py; a malformed one is answered with an error, never ends the agent.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import attrs

from vmkit import state
from vmkit.agent import protocol
from vmkit.agent.pump import SSHFSSession, Tunnel
from vmkit.errors import InvalidInput, NotSupported, VmkitError
from vmkit.guest.ssh import SSHSession
from vmkit.home import InstanceFiles
from vmkit.host.transport import Listener, Stream, listen
from vmkit.state import ForwardSpec, ShareSpec


class Agent:
    """The live SSH mechanisms and the Docker endpoint of one VM."""

    def __init__(self, files: InstanceFiles) -> None:
        self.files = files
        self._ssh: SSHSession | None = None
        self._lock = threading.RLock()  # shares and tunnels change one at a time
        self._ssh_lock = threading.Lock()
        self.shares: dict[str, SSHFSSession] = {}
        self.tunnels: dict[tuple[str, int], Tunnel] = {}
        self.stopping = threading.Event()
        # Requests served by the layers above (the Docker endpoint, the listener watcher),
        # plugged in by the agent's process (vmkit/hostagent.py); closed with the agent.
        self.extensions: dict[str, Callable[[dict[str, Any]], Any]] = {}
        self.on_close: list[Callable[[], None]] = []
        self.lock = threading.Lock()  # for the extensions' own state

    def ssh(self) -> SSHSession:
        """The agent's SSH session; the endpoint is re-read so a restarted VM is found."""
        record = state.load(self.files.name)
        if record.ssh is None:
            raise NotSupported(f"VM {self.files.name!r} has no SSH endpoint")
        with self._ssh_lock:
            if self._ssh is None or self._ssh.endpoint != record.ssh:
                if self._ssh is not None:
                    self._ssh.close()
                self._ssh = SSHSession(record.ssh)
            return self._ssh

    # -- requests -------------------------------------------------------------------------

    def handle(self, req: dict[str, Any]) -> Any:
        op = req["op"]
        if op == "ping":
            return os.getpid()
        if op in self.extensions:
            return self.extensions[op](req)
        if op == "shutdown":
            self.stopping.set()
            return True
        with self._lock:
            if op == "add-share":
                return self.add_share(_spec(ShareSpec, req))
            if op == "remove-share":
                return self.remove_share(_spec(ShareSpec, req))
            if op == "list-shares":
                return [attrs.asdict(s.spec) for s in self.shares.values() if s.alive()]
            if op == "add-forward":
                return self.add_forward(_spec(ForwardSpec, req))
            if op == "remove-forward":
                return self.remove_forward(_spec(ForwardSpec, req))
            if op == "list-forwards":
                return [attrs.asdict(t.spec) for t in self.tunnels.values() if t.alive()]
        raise InvalidInput(f"unknown agent request {op!r}")

    def add_share(self, spec: ShareSpec) -> dict[str, Any]:
        old = self.shares.get(spec.target)
        if old is not None and old.alive():
            return attrs.asdict(old.spec)
        session = SSHFSSession(self.ssh(), spec)
        session.start()
        self.shares[spec.target] = session
        return attrs.asdict(session.spec)

    def remove_share(self, spec: ShareSpec) -> None:
        session = self.shares.pop(spec.target, None)
        if session is not None:
            session.stop()
        else:
            SSHFSSession(self.ssh(), spec).unmount()

    def add_forward(self, spec: ForwardSpec) -> dict[str, Any]:
        old = self.tunnels.get(spec.key)
        if old is not None and old.alive():
            return attrs.asdict(old.spec)
        tunnel = Tunnel(self.ssh, spec)
        tunnel.start()
        self.tunnels[spec.key] = tunnel
        return attrs.asdict(tunnel.spec)

    def remove_forward(self, spec: ForwardSpec) -> None:
        tunnel = self.tunnels.pop(spec.key, None)
        if tunnel is not None:
            tunnel.stop()

    # -- serving --------------------------------------------------------------------------

    def serve_endpoint(self, listener: Listener, serve: Callable[[Stream], None]) -> None:
        """Accept on ``listener`` until the agent stops, each client served in a thread."""
        _thread(self._accept_loop, listener, serve)

    def _accept_loop(self, listener: Listener, serve: Callable[[Stream], None]) -> None:
        while not self.stopping.is_set():
            try:
                conn = listener.accept(0.5)
            except OSError as e:
                log(f"accept failed: {e}")
                time.sleep(0.5)
                continue
            if conn is not None:
                _thread(serve, conn)

    def serve(self) -> None:
        address = self.files.agent_endpoint()
        listener = listen(address)
        state.atomic_write(self.files.agent_pid, str(os.getpid()))
        _thread(self._accept_loop, listener, self._serve_one)
        try:
            while not self.stopping.wait(0.5):
                if not self.files.dir.is_dir():
                    break  # the VM was destroyed
        finally:
            self.stopping.set()
            listener.close()
            self.close()
            with contextlib.suppress(FileNotFoundError):
                self.files.agent_pid.unlink()

    def close(self) -> None:
        for f in self.on_close:
            with contextlib.suppress(Exception):
                f()
        for t in list(self.tunnels.values()):
            t.stop()
        for s in list(self.shares.values()):
            with contextlib.suppress(VmkitError):
                s.stop()
        if self._ssh is not None:
            self._ssh.close()

    def _serve_one(self, conn: Stream) -> None:
        try:
            line = _read_line(conn)
            if line is None:
                return
            op = "?"
            try:
                req = protocol.parse_request(line)
                op = req["op"]
                answer: dict[str, Any] = {"result": self.handle(req)}
            except Exception as e:  # every request is answered; none ends the agent
                answer = protocol.encode_error(e)
                if not isinstance(e, VmkitError):
                    log(f"{op}: {type(e).__name__}: {e}")
            log(f"{op}: {'error ' + answer['error'] if 'error' in answer else 'ok'}")
            with contextlib.suppress(OSError):
                conn.sendall(json.dumps(answer).encode() + b"\n")
        finally:
            conn.close()


def _spec(cls: Any, req: dict[str, Any]) -> Any:
    """The ``spec`` argument of a request as ``cls``; ``InvalidInput`` if it is not one."""
    spec = req.get("spec")
    if not isinstance(spec, dict):
        raise InvalidInput(f"request {req['op']!r} needs a spec")
    try:
        return cls(**spec)
    except TypeError as e:
        raise InvalidInput(f"request {req['op']!r} has a bad spec: {e}") from None


def _read_line(conn: Stream) -> bytes | None:
    """One request line (``None`` if the client left without sending one)."""
    conn.settimeout(30)
    data = b""
    while not data.endswith(b"\n"):
        try:
            chunk = conn.recv(65536)
        except OSError:
            return None
        if not chunk:
            return data or None
        data += chunk
        if len(data) > protocol.MAX_LINE:
            return data  # parse_request refuses it with a clear error
    return data


def _thread(target: Callable[..., object], *args: object) -> None:
    threading.Thread(target=target, args=args, daemon=True).start()


def log(line: str) -> None:
    print(time.strftime("%H:%M:%S"), line, file=sys.stderr, flush=True)


def run(agent: Agent) -> None:
    """Run ``agent`` in this process until SIGTERM, a ``shutdown`` request or its VM's end."""
    signal.signal(signal.SIGTERM, lambda *_: agent.stopping.set())
    if sys.platform != "win32":
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    log(f"agent for {agent.files.dir} started, pid {os.getpid()}")
    agent.serve()
    log("agent stopped")
