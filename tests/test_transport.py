"""The local-endpoint abstraction (vmkit/host/transport.py), through its public functions:
the unix-socket carrier is exercised for real here; the pipe carrier only type-checks here
(`mypy --platform win32`), its address form is tested."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from vmkit.errors import InvalidInput, ProviderError
from vmkit.host import transport


def test_a_stream_carries_bytes_both_ways_with_a_half_close(tmp_path: Path) -> None:
    address = transport.address_for(tmp_path / "x.sock", "vmkit-x-agent")
    listener = transport.listen(address)
    got: list[bytes] = []

    def server() -> None:
        conn = listener.accept(5)
        assert conn is not None
        data = b""
        while chunk := conn.recv(4):
            data += chunk
        got.append(data)
        conn.sendall(data[::-1])  # still answers after the client's half-close
        conn.close()

    t = threading.Thread(target=server)
    t.start()
    client = transport.connect(address)
    client.sendall(b"hello")
    client.shutdown_write()
    answer = b""
    while chunk := client.recv(65536):
        answer += chunk
    client.close()
    t.join(5)
    assert got == [b"hello"] and answer == b"olleh"
    assert listener.accept(0.05) is None  # nobody else: a timeout, not an error
    listener.close()
    assert not Path(address.path).exists()


def test_the_socket_is_born_0600_and_a_stale_one_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    path.write_text("stale")
    listener = transport.listen(transport.Address(str(path)))
    try:
        assert path.stat().st_mode & 0o777 == 0o600
        assert transport.Address(str(path)).exists()
    finally:
        listener.close()


def test_nothing_listening_and_a_too_long_path_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ProviderError, match="nothing answers on"):
        transport.connect(transport.Address(str(tmp_path / "none.sock")), timeout=1)
    with pytest.raises(InvalidInput, match="too long") as e:
        transport.listen(transport.Address(str(tmp_path / ("x" * 120) / "s.sock")))
    assert "VMKIT_HOME" in (e.value.hint or "")


def test_docker_host_urls() -> None:
    assert transport.Address("/v/lab/docker.sock").docker_host == "unix:///v/lab/docker.sock"
    pipe = transport.Address("\\\\.\\pipe\\vmkit-lab-docker", pipe=True)
    assert pipe.docker_host == "npipe:////./pipe/vmkit-lab-docker"


def test_on_windows_the_endpoints_are_pipes_and_env_prints_them(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from vmkit.docker import env as shellenv
    from vmkit.home import InstanceFiles

    monkeypatch.setattr(transport.sys, "platform", "win32")
    files = InstanceFiles(tmp_path / "lab")
    assert files.agent_endpoint() == transport.Address("\\\\.\\pipe\\vmkit-lab-agent", pipe=True)
    url = files.docker_endpoint().docker_host
    assert url == "npipe:////./pipe/vmkit-lab-docker"
    ps = shellenv.render({"DOCKER_HOST": url}, "powershell")
    assert "$Env:DOCKER_HOST = 'npipe:////./pipe/vmkit-lab-docker'" in ps
    assert 'SET "DOCKER_HOST=npipe:////./pipe/vmkit-lab-docker"' in shellenv.render(
        {"DOCKER_HOST": url}, "cmd"
    )
