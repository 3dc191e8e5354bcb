"""The rules of the Docker endpoint without a VM: which bind sources are shared, what a
container publishes, and the guest-listener parser."""

from __future__ import annotations

import json
from pathlib import Path

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
