"""The rules of the Docker endpoint without a VM: which bind sources are shared, what a
container publishes, and the guest-listener parser."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from vmkit.agent.listeners import parse_proc_net_tcp
from vmkit.docker import binds
from vmkit.docker.auto import published
from vmkit.errors import InvalidInput

HOME = "/home/ann"


def host(existing: dict[str, bool]) -> binds.Host:
    """A host where ``existing`` maps each path to whether it is a folder."""
    return binds.Host(
        home=HOME,
        exists=lambda p: p in existing,
        isdir=lambda p: existing.get(p, False),
        realpath=lambda p: p,
    )


def body(binds_: list[str] | None = None, mounts: list[dict[str, str]] | None = None) -> bytes:
    hc: dict[str, object] = {}
    if binds_ is not None:
        hc["Binds"] = binds_
    if mounts is not None:
        hc["Mounts"] = mounts
    return json.dumps({"Image": "x", "HostConfig": hc}).encode()


def test_a_host_folder_is_shared_at_its_own_path() -> None:
    p = binds.plan(body([f"{HOME}/nb:/home/nb:ro"]), [], host({f"{HOME}/nb": True}))
    assert p.share == [f"{HOME}/nb"] and p.create == [] and p.body is None


def test_named_volumes_and_the_vms_own_paths_pass_untouched() -> None:
    b = body(["data:/data", "/var/run/docker.sock:/var/run/docker.sock", "/etc/localtime:/l:ro"])
    p = binds.plan(b, [], host({}))
    assert p == binds.Plan([], [], None)


def test_inside_a_shared_folder_needs_nothing_and_maps_to_its_target() -> None:
    p = binds.plan(
        body([f"{HOME}/proj/src:/src"]),
        [(f"{HOME}/proj", "/mnt/proj")],
        host({f"{HOME}/proj/src": True}),
    )
    assert p.share == []
    assert json.loads(p.body or b"")["HostConfig"]["Binds"] == ["/mnt/proj/src:/src"]


def test_a_file_shares_its_folder_and_nested_sources_share_once() -> None:
    existing = {f"{HOME}/p": True, f"{HOME}/p/nginx.conf": False, f"{HOME}/p/site": True}
    b = body(
        [f"{HOME}/p/nginx.conf:/etc/nginx/nginx.conf"],
        [{"Type": "bind", "Source": f"{HOME}/p/site", "Target": "/site"}],
    )
    assert binds.plan(b, [], host(existing)).share == [f"{HOME}/p"]


def test_a_missing_v_source_is_created_a_missing_mount_source_refused() -> None:
    p = binds.plan(body(["/tmp/new/dir:/d"]), [], host({}))
    assert p.create == ["/tmp/new/dir"] and p.share == ["/tmp/new/dir"]
    with pytest.raises(InvalidInput, match="bind source path does not exist on the host: /tmp/x"):
        binds.plan(
            body(mounts=[{"Type": "bind", "Source": "/tmp/x", "Target": "/x"}]), [], host({})
        )


@pytest.mark.parametrize("src", ["/", HOME, f"{HOME}/.gitconfig"])
def test_the_root_and_the_whole_home_are_refused_with_how_to_allow(src: str) -> None:
    with pytest.raises(InvalidInput) as e:
        binds.plan(body([f"{src}:/x"]), [], host({HOME: True, f"{HOME}/.gitconfig": False}))
    assert "vmkit does not share" in e.value.message and "--force" in (e.value.hint or "")


def test_windows_paths_are_mapped() -> None:
    p = binds.plan(body([r"C:\Users\ann\nb:/home/nb"]), [], host({r"C:\Users\ann\nb": True}))
    assert p.share == [r"C:\Users\ann\nb"]
    assert json.loads(p.body or b"")["HostConfig"]["Binds"] == ["/c/Users/ann/nb:/home/nb"]


def test_a_symlinked_source_binds_its_real_path(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    p = binds.plan(body([f"{tmp_path}/link:/d"]), [], binds.Host(home=HOME))
    assert p.share == [str(real)]
    assert json.loads(p.body or b"")["HostConfig"]["Binds"] == [f"{real}:/d"]


def test_published_ports_from_inspect_data() -> None:
    info = {
        "NetworkSettings": {
            "Ports": {
                "80/tcp": [
                    {"HostIp": "0.0.0.0", "HostPort": "8080"},
                    {"HostIp": "::", "HostPort": "8080"},
                ],
                "53/udp": [{"HostIp": "127.0.0.1", "HostPort": "5353"}],
                "9000/tcp": None,
            }
        },
        "HostConfig": {"PortBindings": {"80/tcp": [{"HostIp": "", "HostPort": ""}]}},
    }
    assert published(info) == [(5353, "udp", "127.0.0.1"), (8080, "tcp", "0.0.0.0")]
    assert published(info, bindings=True) == []  # a port left for dockerd to pick


def test_proc_net_tcp_listeners() -> None:
    text = (
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid\n"
        "   0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0\n"
        "   1: 0100007F:2328 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0\n"
        "   2: 0F02000A:0016 0202000A:C350 01 00000000:00000000 00:00000000 00000000 0\n"
        "   0: 00000000000000000000000000000000:1F90 00000000000000000000000000000000:0000 0A x\n"
        "   1: 00000000000000000000000001000000:2328 00000000000000000000000000000000:0000 0A x\n"
    )
    assert parse_proc_net_tcp(text) == {22: False, 9000: True, 8080: False}


class FakeVM:
    """The few VM calls DockerAuto makes, on lists."""

    def __init__(self) -> None:
        from vmkit.state import ForwardSpec

        self.spec = ForwardSpec
        self.fwd: list[Any] = []
        self.lost: set[int] = set()  # in the record, not in the VM (after a restart)
        self.record = type("R", (), {"extra": {}})()

    def forwards(self) -> list[Any]:
        return list(self.fwd)

    def active_forwards(self) -> list[Any]:
        return [f for f in self.fwd if f.host_port not in self.lost]

    def forward(self, host: int, guest: int, **kw: Any) -> Any:
        f = self.spec(host, guest, proto=kw["proto"], auto=kw["auto"], owner=kw["owner"])
        self.fwd.append(f)
        self.lost.discard(host)
        return f

    def unforward(self, host: int, *, proto: str = "tcp") -> Any:
        (f,) = [f for f in self.fwd if f.key == (proto, host)]
        self.fwd.remove(f)
        return f


class FakeAPI:
    def __init__(self, info: dict[str, Any]) -> None:
        self.info = info
        self.killed: list[str] = []

    def inspect_container(self, cid: str) -> dict[str, Any]:
        return self.info

    def kill(self, cid: str) -> None:
        self.killed.append(cid)


def _container(port: int, running: bool = True) -> dict[str, Any]:
    ports = {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": str(port)}]}
    return {
        "Name": "/web",
        "State": {"Running": running},
        "NetworkSettings": {"Ports": ports},
        "HostConfig": {"PortBindings": ports},
    }


def test_container_forwards_never_override_the_users_and_come_back_after_a_restart() -> None:
    from vmkit.docker.auto import DockerAuto

    vm, api = FakeVM(), FakeAPI(_container(18080))
    auto = DockerAuto(lambda: vm, lambda: api)  # type: ignore[arg-type, return-value]
    auto.forward_container("c1")
    assert [(f.host_port, f.auto, f.owner) for f in vm.fwd] == [(18080, "container", "web")]
    auto.forward_container("c1")  # the start event after the start call: nothing new
    assert len(vm.fwd) == 1
    vm.lost.add(18080)  # the VM restarted
    auto.forward_container("c1")
    assert vm.active_forwards() == vm.fwd
    auto.unforward_container("web")
    assert vm.fwd == []
    user = vm.forward(18080, 18080, proto="tcp", auto="", owner="")
    auto.forward_container("c1")
    auto.unforward_container("web")
    assert vm.fwd == [user]  # the user's forward stays the user's
    api.info = _container(18081, running=False)  # died at once: nothing to forward
    auto.forward_container("c2")
    assert vm.fwd == [user]


def test_a_taken_host_port_refuses_the_start_and_a_failed_forward_kills_it() -> None:
    import socket

    from vmkit.docker.auto import DockerAuto
    from vmkit.docker.proxy import ApiRequest
    from vmkit.errors import PortInUse

    vm = FakeVM()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        api = FakeAPI(_container(taken))
        auto = DockerAuto(lambda: vm, lambda: api)  # type: ignore[arg-type, return-value]
        start = ApiRequest("POST", "/containers/c1/start", {}, b"")
        with pytest.raises(PortInUse, match=f"Bind for 127.0.0.1:{taken} failed: host port"):
            auto.before(start)

    def broken(*a: Any, **kw: Any) -> Any:
        raise PortInUse("host port taken meanwhile")

    vm.forward = broken  # type: ignore[method-assign]
    with pytest.raises(PortInUse):
        auto.after(start, 204, b"")
    assert api.killed == ["c1"]
