"""The agent's request protocol, served by a real ``Agent`` in this process (no VM):
malformed requests are answered and never end it; errors come back as their own class."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vmkit import errors
from vmkit.agent import protocol
from vmkit.agent.server import Agent
from vmkit.home import InstanceFiles
from vmkit.host import transport


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    folder = tmp_path / "vm1"
    folder.mkdir(mode=0o700)
    a = Agent(InstanceFiles(folder))

    def fail(req: dict[str, Any]) -> Any:
        kind = req.get("kind")
        if kind == "tool":
            raise errors.ToolMissing("sshfs", package="sshfs")
        if kind == "guest":
            raise errors.GuestCommandFailed(["mount", "x"], 32, "", "mount: denied")
        if kind == "bug":
            raise KeyError("oops")
        return req.get("echo")

    a.extensions["try"] = fail
    t = threading.Thread(target=a.serve, daemon=True)
    t.start()
    address = a.files.agent_endpoint()
    while not Path(address.path).exists():
        threading.Event().wait(0.01)
    yield a
    a.stopping.set()
    t.join(5)
    assert not Path(address.path).exists() and not a.files.agent_pid.exists()


def send(agent: Agent, raw: bytes) -> bytes:
    conn = transport.connect(agent.files.agent_endpoint())
    conn.sendall(raw)
    conn.shutdown_write()
    out = b""
    while chunk := conn.recv(65536):
        out += chunk
    conn.close()
    return out


def ask(agent: Agent, **req: Any) -> Any:
    answer = send(agent, json.dumps(req).encode() + b"\n")
    return protocol.decode_answer(answer, where="the agent", log="agent.log")


@pytest.mark.parametrize(
    "raw",
    [b"not json\n", b"[1, 2]\n", b'{"no": "op"}\n', b'{"op": "nope"}\n', b"\xff\xfe\n",
     b'{"op": "add-share", "spec": {"bogus": 1}}\n', b'{"op": "add-forward"}\n', b"{"],
)  # fmt: skip
def test_a_malformed_request_is_answered_and_the_agent_goes_on(agent: Agent, raw: bytes) -> None:
    with pytest.raises(errors.InvalidInput):
        protocol.decode_answer(send(agent, raw), where="the agent", log="agent.log")
    assert ask(agent, op="try", echo="still here") == "still here"


def test_errors_come_back_as_their_own_class_with_their_attributes(agent: Agent) -> None:
    with pytest.raises(errors.ToolMissing) as tool:
        ask(agent, op="try", kind="tool")
    assert tool.value.program == "sshfs" and "apt-get install sshfs" in str(tool.value)
    with pytest.raises(errors.GuestCommandFailed) as guest:
        ask(agent, op="try", kind="guest")
    assert guest.value.exit_code == 32 and guest.value.argv == ["mount", "x"]
    with pytest.raises(errors.ProviderError, match="vmkit's agent failed: KeyError"):
        ask(agent, op="try", kind="bug")
    assert ask(agent, op="ping") > 0


def test_the_agent_socket_is_the_users_only(agent: Agent) -> None:
    assert Path(agent.files.agent_endpoint().path).stat().st_mode & 0o777 == 0o600
