"""Talking to a VM's agent, starting it when it is not there."""

from __future__ import annotations

import json
import socket
import sys
import time
from typing import Any

from vmkit import errors
from vmkit.home import InstanceFiles
from vmkit.host import procs
from vmkit.host.runner import spawn


def agent_pid(files: InstanceFiles) -> int | None:
    """The agent's pid if it runs for this VM folder."""
    pid = procs.read_pid(files.agent_pid)
    return pid if procs.alive(pid, str(files.dir)) else None


def ensure_agent(files: InstanceFiles, *, timeout: float = 15.0) -> int:
    """Start the VM's agent if it is not running; return its pid once it listens."""
    pid = agent_pid(files)
    if pid is not None and files.agent_sock.exists():
        return pid
    proc = spawn([sys.executable, "-m", "vmkit.agent.server", str(files.dir)], log=files.agent_log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise errors.ProviderError(
                f"vmkit's agent for VM {files.name!r} exited at once", hint=f"see {files.agent_log}"
            )
        if files.agent_sock.exists() and agent_pid(files) == proc.pid:
            return proc.pid
        time.sleep(0.05)
    raise errors.ProviderError(
        f"vmkit's agent for VM {files.name!r} did not start", hint=f"see {files.agent_log}"
    )


def request(
    files: InstanceFiles, op: str, *, start: bool = True, timeout: float = 60.0, **args: Any
) -> Any:
    """Send one request to the agent and return its result; errors come back as ``VmkitError``."""
    if start:
        ensure_agent(files)
    elif agent_pid(files) is None:
        return None
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(str(files.agent_sock))
            s.sendall(json.dumps({"op": op, **args}).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        except OSError as e:
            raise errors.ProviderError(
                f"vmkit's agent for VM {files.name!r} did not answer: {e}",
                hint=f"see {files.agent_log}",
            ) from e
    try:
        answer = json.loads(data)
    except json.JSONDecodeError as e:
        raise errors.ProviderError(
            f"vmkit's agent for VM {files.name!r} answered garbage", hint=f"see {files.agent_log}"
        ) from e
    if "error" in answer:
        cls = getattr(errors, str(answer.get("type", "")), None)
        if not (isinstance(cls, type) and issubclass(cls, errors.VmkitError)):
            cls = errors.ProviderError
        try:
            raise cls(answer["error"], hint=answer.get("hint") or None)
        except TypeError:
            raise errors.ProviderError(answer["error"], hint=answer.get("hint") or None) from None
    return answer.get("result")
