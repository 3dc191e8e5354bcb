"""The Docker API proxy against a fake dockerd on a unix socket (no VM): pass-through, chunked
uploads, streamed answers, a hijacked stream, interception, malformed requests, dockerd gone."""

from __future__ import annotations

import http.client
import json
import socket
import socketserver
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import ClassVar

import pytest

from vmkit.docker.proxy import ApiRequest, Proxy
from vmkit.errors import InvalidInput, ProviderError
from vmkit.host import transport


class FakeDockerd(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: ClassVar[list[tuple[str, str, bytes]]] = []

    def log_message(self, *args: object) -> None:
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            while True:
                size = int(self.rfile.readline().strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _json(self, status: int, data: object) -> None:
        body = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self.seen.append(("GET", self.path, b""))
        if self.path.endswith("/_ping"):
            self._json(200, "OK")
        elif "/logs" in self.path:
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(3):
                line = f"line {i}\n".encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
        else:
            self._json(404, {"message": "no such thing"})

    def do_POST(self) -> None:
        body = self._body()
        self.seen.append(("POST", self.path, body))
        if self.path.endswith("/attach") or "/attach?" in self.path:
            self.send_response(101, "UPGRADED")
            self.send_header("Content-Type", "application/vnd.docker.raw-stream")
            self.send_header("Connection", "Upgrade")
            self.send_header("Upgrade", "tcp")
            self.end_headers()
            self.wfile.flush()
            while data := self.connection.recv(4096):  # echo, upper-cased, until EOF
                self.connection.sendall(data.upper())
            self.connection.shutdown(socket.SHUT_WR)
            self.close_connection = True
        elif self.path.split("?")[0].endswith("/containers/create"):
            self._json(201, {"Id": "c0ffee", "Warnings": []})
        elif self.path.endswith("/build"):
            self._json(200, {"stream": f"got {len(body)} bytes"})
        else:
            self._json(404, {"message": "page not found"})


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


@pytest.fixture
def dockerd(tmp_path: Path) -> Iterator[str]:
    FakeDockerd.seen = []
    path = str(tmp_path / "dockerd.sock")
    srv = _Server(path, FakeDockerd)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield path
    srv.shutdown()
    srv.server_close()


class Recorder:
    """An interceptor: rewrites create bodies, refuses a create named "refused"."""

    def __init__(self) -> None:
        self.after_calls: list[tuple[str, int, bytes]] = []

    def wants(self, method: str, path: str) -> bool:
        return method == "POST" and path == "/containers/create"

    def before(self, req: ApiRequest) -> bytes | None:
        if req.query.get("name") == "refused":
            raise InvalidInput("not this one", hint="pick another")
        data = req.json()
        data["Rewritten"] = True
        return json.dumps(data).encode()

    def after(self, req: ApiRequest, status: int, body: bytes) -> None:
        self.after_calls.append((req.path, status, body))


def _proxy(tmp_path: Path, dockerd: str, interceptor: object = None) -> str:
    """A listening proxy in threads; returns its socket path."""
    address = transport.Address(str(tmp_path / "docker.sock"))
    listener = transport.listen(address)

    def dial() -> transport.Stream:
        return transport.connect(transport.Address(dockerd))

    proxy = Proxy(dial, interceptor)  # type: ignore[arg-type]

    def loop() -> None:
        while True:
            try:
                conn = listener.accept(0.2)
            except OSError:
                return
            if conn is not None:
                threading.Thread(target=proxy.serve, args=(conn,), daemon=True).start()

    threading.Thread(target=loop, daemon=True).start()
    return address.path


class UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=10)
        self.path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(10)
        s.connect(self.path)
        self.sock = s


def _raw(path: str, data: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(path)
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


def test_requests_pass_through_on_one_kept_connection(tmp_path: Path, dockerd: str) -> None:
    c = UnixHTTP(_proxy(tmp_path, dockerd))
    for _ in range(3):
        c.request("GET", "/v1.41/_ping")
        r = c.getresponse()
        assert (r.status, json.loads(r.read())) == (200, "OK")
    c.request("GET", "/v1.41/nope")
    r = c.getresponse()
    assert r.status == 404 and json.loads(r.read())["message"] == "no such thing"


def test_a_chunked_upload_and_a_streamed_answer_pass(tmp_path: Path, dockerd: str) -> None:
    c = UnixHTTP(_proxy(tmp_path, dockerd))
    c.request("POST", "/v1.41/build", body=iter([b"a" * 70000, b"b" * 5]), encode_chunked=True)
    r = c.getresponse()
    assert json.loads(r.read()) == {"stream": "got 70005 bytes"}
    c.request("GET", "/v1.41/containers/x/logs?follow=1")
    r = c.getresponse()
    assert r.read() == b"line 0\nline 1\nline 2\n"


def test_a_hijacked_stream_is_carried_both_ways(tmp_path: Path, dockerd: str) -> None:
    path = _proxy(tmp_path, dockerd)
    req = (
        b"POST /v1.41/containers/x/attach?stream=1&stdin=1 HTTP/1.1\r\nHost: docker\r\n"
        b"Connection: Upgrade\r\nUpgrade: tcp\r\nContent-Length: 0\r\n\r\n"
    )
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(path)
        s.sendall(req)
        head = b""
        while b"\r\n\r\n" not in head:
            head += s.recv(1)
        assert head.startswith(b"HTTP/1.1 101")
        s.sendall(b"hello ")
        s.sendall(b"world")
        s.shutdown(socket.SHUT_WR)  # the half-close reaches dockerd, which still answers
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    assert out == b"HELLO WORLD"


def test_a_malformed_request_gets_a_400_and_the_proxy_goes_on(tmp_path: Path, dockerd: str) -> None:
    path = _proxy(tmp_path, dockerd)
    out = _raw(path, b"\x00\x01 not http at all\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 400")
    assert b'"vmkit: bad HTTP request' in out
    out = _raw(path, b"GET /_ping HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 400")
    c = UnixHTTP(path)
    c.request("GET", "/_ping")
    assert c.getresponse().status == 200


def test_intercepted_create_is_rewritten_and_seen_after(tmp_path: Path, dockerd: str) -> None:
    rec = Recorder()
    c = UnixHTTP(_proxy(tmp_path, dockerd, rec))
    c.request("POST", "/v1.41/containers/create?name=web", body=json.dumps({"Image": "bb"}))
    r = c.getresponse()
    assert (r.status, json.loads(r.read())["Id"]) == (201, "c0ffee")
    body = FakeDockerd.seen[-1][2]
    assert json.loads(body) == {"Image": "bb", "Rewritten": True}
    assert rec.after_calls == [("/containers/create", 201, b'{"Id": "c0ffee", "Warnings": []}')]


def test_a_refusal_is_a_docker_error_and_dockerd_never_sees_it(
    tmp_path: Path, dockerd: str
) -> None:
    c = UnixHTTP(_proxy(tmp_path, dockerd, Recorder()))
    c.request("POST", "/v1.41/containers/create?name=refused", body=b"{}")
    r = c.getresponse()
    assert r.status == 400
    assert json.loads(r.read()) == {"message": "vmkit: not this one (pick another)"}
    assert not any(p.endswith("create?name=refused") for _, p, _ in FakeDockerd.seen)


def test_dockerd_unreachable_is_a_502_naming_vmkit(tmp_path: Path) -> None:
    def dial() -> transport.Stream:
        raise ProviderError("the VM is stopped")

    address = transport.Address(str(tmp_path / "d.sock"))
    listener = transport.listen(address)
    proxy = Proxy(dial)
    t = threading.Thread(target=lambda: proxy.serve(listener.accept(5)), daemon=True)  # type: ignore[arg-type]
    t.start()
    c = UnixHTTP(address.path)
    c.request("GET", "/_ping")
    r = c.getresponse()
    assert r.status == 502
    assert json.loads(r.read())["message"] == (
        "vmkit: cannot reach the VM's dockerd: the VM is stopped"
    )
