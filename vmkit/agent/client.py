"""Talking to a VM's agent, starting it when it is not there."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from vmkit import errors
from vmkit.agent import protocol
from vmkit.home import InstanceFiles
from vmkit.host import procs
from vmkit.host.runner import spawn
from vmkit.host.transport import Address, connect


def agent_pid(files: InstanceFiles) -> int | None:
    """The agent's pid if it runs for this VM folder."""
    pid = procs.read_pid(files.agent_pid)
    return pid if procs.alive(pid, str(files.dir)) else None


def agent_address(files: InstanceFiles) -> Address:
    """Where the VM's agent listens."""
    return files.agent_endpoint()


def ensure_agent(files: InstanceFiles, *, timeout: float = 15.0) -> int:
    """Start the VM's agent if it is not running; return its pid once it listens."""
    pid = agent_pid(files)
    address = agent_address(files)
    if pid is not None and address.exists():
        return pid
    proc = spawn([sys.executable, "-m", "vmkit.hostagent", str(files.dir)], log=files.agent_log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise errors.ProviderError(
                f"vmkit's agent for VM {files.name!r} exited at once", hint=f"see {files.agent_log}"
            )
        if agent_pid(files) == proc.pid and address.exists():
            return proc.pid
        time.sleep(0.05)
    raise errors.ProviderError(
        f"vmkit's agent for VM {files.name!r} did not start", hint=f"see {files.agent_log}"
    )


def request(
    files: InstanceFiles, op: str, *, start: bool = True, timeout: float = 60.0, **args: Any
) -> Any:
    """Send one request to the agent and return its result; errors come back as their own
    ``VmkitError`` class (vmkit/agent/protocol.py)."""
    if start:
        ensure_agent(files)
    elif agent_pid(files) is None:
        return None
    where = f"vmkit's agent for VM {files.name!r}"
    conn = connect(agent_address(files), timeout=timeout)
    try:
        conn.settimeout(timeout)
        conn.sendall(json.dumps({"op": op, **args}).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
    except OSError as e:
        raise errors.ProviderError(
            f"{where} did not answer: {e}", hint=f"see {files.agent_log}"
        ) from e
    finally:
        conn.close()
    return protocol.decode_answer(data, where=where, log=str(files.agent_log))
