"""The agent process: ``python -m vmkit.agent.server VM_FOLDER``.

Holds one SSH connection to the guest and, on it, every reverse-sshfs share and SSH-tunnel
forward of the VM. Requests arrive on ``agent.sock`` as one JSON line; each gets one JSON
line back: ``{"result": ...}`` or ``{"error": msg, "type": VmkitErrorClass, "hint": ...}``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

import attrs

from vmkit import state
from vmkit.agent.pump import SSHFSSession, Tunnel
from vmkit.errors import NotSupported, VmkitError
from vmkit.guest.ssh import SSHSession
from vmkit.home import InstanceFiles
from vmkit.state import ForwardSpec, ShareSpec


class Agent:
    """The live SSH mechanisms of one VM."""

    def __init__(self, files: InstanceFiles) -> None:
        self.files = files
        self._ssh: SSHSession | None = None
        self._lock = threading.RLock()
        self.shares: dict[str, SSHFSSession] = {}
        self.tunnels: dict[tuple[str, int], Tunnel] = {}
        self.stopping = threading.Event()

    def ssh(self) -> SSHSession:
        """The agent's SSH session; the endpoint is re-read so a restarted VM is found."""
        record = state.load(self.files.name)
        if record.ssh is None:
            raise NotSupported(f"VM {self.files.name!r} has no SSH endpoint")
        if self._ssh is None or self._ssh.endpoint != record.ssh:
            if self._ssh is not None:
                self._ssh.close()
            self._ssh = SSHSession(record.ssh)
        return self._ssh

    # -- requests -------------------------------------------------------------------------

    def handle(self, req: dict[str, Any]) -> Any:
        op = req.get("op")
        with self._lock:
            if op == "ping":
                return os.getpid()
            if op == "add-share":
                return self.add_share(ShareSpec(**req["spec"]))
            if op == "remove-share":
                return self.remove_share(ShareSpec(**req["spec"]))
            if op == "list-shares":
                return [attrs.asdict(s.spec) for s in self.shares.values() if s.alive()]
            if op == "add-forward":
                return self.add_forward(ForwardSpec(**req["spec"]))
            if op == "remove-forward":
                return self.remove_forward(ForwardSpec(**req["spec"]))
            if op == "list-forwards":
                return [attrs.asdict(t.spec) for t in self.tunnels.values() if t.alive()]
            if op == "shutdown":
                self.stopping.set()
                return True
        raise NotSupported(f"unknown agent request {op!r}")

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

    def close(self) -> None:
        for t in list(self.tunnels.values()):
            t.stop()
        for s in list(self.shares.values()):
            with contextlib.suppress(VmkitError):
                s.stop()
        if self._ssh is not None:
            self._ssh.close()

    # -- serving --------------------------------------------------------------------------

    def serve(self) -> None:
        sock_path = self.files.agent_sock
        with contextlib.suppress(FileNotFoundError):
            sock_path.unlink()
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        srv.bind(str(sock_path))
        os.chmod(sock_path, 0o600)
        srv.listen(16)
        srv.settimeout(0.5)
        state.atomic_write(self.files.agent_pid, str(os.getpid()))
        try:
            while not self.stopping.is_set():
                if not self.files.dir.is_dir():
                    break  # the VM was destroyed
                try:
                    conn, _ = srv.accept()
                except TimeoutError:
                    continue
                threading.Thread(target=self._serve_one, args=(conn,), daemon=True).start()
        finally:
            srv.close()
            self.close()
            for p in (sock_path, self.files.agent_pid):
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()

    def _serve_one(self, conn: socket.socket) -> None:
        with conn:
            data = b""
            while not data.endswith(b"\n"):
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            try:
                answer: dict[str, Any] = {"result": self.handle(json.loads(data))}
            except VmkitError as e:
                answer = {"error": e.message, "type": type(e).__name__, "hint": e.hint}
            except Exception as e:  # the agent must answer every request, not die
                answer = {
                    "error": f"agent failure: {type(e).__name__}: {e}",
                    "type": "ProviderError",
                }
            log(
                f"{json.loads(data).get('op')}: {'error ' + answer['error'] if 'error' in answer else 'ok'}"
            )
            conn.sendall(json.dumps(answer).encode() + b"\n")


def log(line: str) -> None:
    print(time.strftime("%H:%M:%S"), line, file=sys.stderr, flush=True)


def main() -> None:
    folder = Path(sys.argv[1])
    files = InstanceFiles(folder)
    agent = Agent(files)
    signal.signal(signal.SIGTERM, lambda *_: agent.stopping.set())
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    log(f"agent for {folder} started, pid {os.getpid()}")
    agent.serve()
    log("agent stopped")


if __name__ == "__main__":
    main()
