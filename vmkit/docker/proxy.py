"""A Docker API proxy: relays HTTP between a Docker client and dockerd, and lets vmkit act on
the few calls that matter (container create, container start) before and after they reach
dockerd.

HTTP is parsed with h11 on both sides, so request and response framing (content length,
chunked uploads of ``docker build``/``load``, streamed ``logs -f`` and ``events``, HEAD) is
h11's job. A request the interceptor does not want passes through untouched: headers as
sent, body relayed as it arrives, the response streamed back as it comes. A ``101
Switching Protocols`` answer (``attach``, ``exec``, BuildKit's ``/session``) turns the
connection into a raw byte pipe both ways.

Failures never leave a client hanging: a malformed request gets a 400, an unreachable dockerd
a 502, and a refusal or failure of vmkit's part a Docker error JSON whose message starts with
``vmkit:`` and says why.
"""

from __future__ import annotations

import contextlib
import json
import re
import urllib.parse
from collections.abc import Callable
from typing import NoReturn, Protocol

import attrs
import h11
import paramiko

from vmkit.agent.pump import pump_both
from vmkit.errors import InvalidInput, VmkitError
from vmkit.host.transport import Stream

__all__ = ["ApiRequest", "Interceptor", "Proxy", "error_body"]

# The bodies vmkit reads (container create) are a few KiB; anything this big is passed on.
MAX_INTERCEPTED_BODY = 16 << 20
_VERSION = re.compile(r"^/v[0-9]+(?:\.[0-9]+)?(?=/)")

Upstream = Stream | paramiko.Channel


@attrs.frozen
class ApiRequest:
    """One intercepted Docker API call: ``path`` without the ``/v1.41`` prefix."""

    method: str
    path: str
    query: dict[str, str]
    body: bytes

    def json(self) -> dict[str, object]:
        """The body as a JSON object (``{}`` when empty); ``InvalidInput`` if it is not one."""
        if not self.body.strip():
            return {}
        try:
            data = json.loads(self.body)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise InvalidInput(f"the request body is not JSON: {e}") from None
        if not isinstance(data, dict):
            raise InvalidInput("the request body is not a JSON object")
        return data


class Interceptor(Protocol):
    """vmkit's part of the Docker API."""

    def wants(self, method: str, path: str) -> bool:
        """Whether ``before``/``after`` are to see this call (its body is then read whole)."""
        ...

    def before(self, req: ApiRequest) -> bytes | None:
        """Act before dockerd sees ``req``; a new body to send instead, or ``None``.
        A ``VmkitError`` refuses the call: the client gets it as a Docker error."""
        ...

    def after(self, req: ApiRequest, status: int, body: bytes) -> None:
        """Act on dockerd's answer; a ``VmkitError`` turns it into a Docker error."""
        ...


def error_body(message: str) -> bytes:
    """A Docker engine error body: ``{"message": ...}``."""
    return json.dumps({"message": message}).encode() + b"\n"


def _status_for(e: VmkitError) -> int:
    return 400 if isinstance(e, InvalidInput) else 500


class _Closed(Exception):
    """The client or dockerd went away; the connection ends quietly."""


class Proxy:
    """Serves Docker clients, each on its own connection to dockerd from ``dial``."""

    def __init__(
        self,
        dial: Callable[[], Upstream],
        interceptor: Interceptor | None = None,
        *,
        log: Callable[[str], None] = lambda _: None,
    ) -> None:
        self.dial = dial
        self.interceptor = interceptor
        self.log = log

    def serve(self, client: Stream) -> None:
        """Serve one client connection until it closes (call it in a thread of its own)."""
        conn = _Connection(self, client)
        try:
            conn.run()
        except Exception as e:  # a bug here must end one connection, never the agent
            self.log(f"docker proxy: connection ended by {type(e).__name__}: {e}")
        finally:
            conn.close()


class _Connection:
    def __init__(self, proxy: Proxy, client: Stream) -> None:
        self.proxy = proxy
        self.client = client
        self.srv = h11.Connection(h11.SERVER)
        self.up: h11.Connection | None = None
        self.chan: Upstream | None = None
        self.switched = False

    # -- reading and writing ---------------------------------------------------------------

    def _next(self, conn: h11.Connection, stream: Upstream) -> object:
        while True:
            ev = conn.next_event()
            if ev is not h11.NEED_DATA:
                return ev
            try:
                data = stream.recv(65536)
            except (OSError, EOFError, paramiko.SSHException) as e:
                raise _Closed(str(e)) from e
            conn.receive_data(data)

    def _to_client(self, event: h11.Event) -> None:
        data = self.srv.send(event)
        if data:
            try:
                self.client.sendall(data)
            except OSError as e:
                raise _Closed(str(e)) from e

    def _to_dockerd(self, event: h11.Event) -> None:
        assert self.up is not None and self.chan is not None
        data = self.up.send(event)
        if data:
            self.chan.sendall(data)

    def _fail(self, status: int, message: str) -> NoReturn:
        """Answer the current request with a Docker error, if no answer has begun."""
        self.proxy.log(f"docker proxy: {status} {message}")
        if self.srv.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            raise _Closed(message)
        body = error_body(message)
        self._to_client(
            h11.Response(
                status_code=status,
                headers=[
                    ("content-type", "application/json"),
                    ("content-length", str(len(body))),
                    ("connection", "close"),
                ],
            )
        )
        self._to_client(h11.Data(data=body))
        self._to_client(h11.EndOfMessage())
        raise _Closed(message)

    # -- the request cycle -----------------------------------------------------------------

    def run(self) -> None:
        with contextlib.suppress(_Closed):
            while True:
                try:
                    ev = self._next(self.srv, self.client)
                except h11.RemoteProtocolError as e:
                    self._fail(e.error_status_hint, f"vmkit: bad HTTP request: {e}")
                if isinstance(ev, h11.ConnectionClosed) or ev is h11.PAUSED:
                    return
                assert isinstance(ev, h11.Request)
                self._one(ev)
                if self.switched:
                    return
                if self.srv.our_state is not h11.DONE or self.srv.their_state is not h11.DONE:
                    return
                self.srv.start_next_cycle()
                if self.up is not None:
                    if self.up.our_state is h11.DONE and self.up.their_state is h11.DONE:
                        self.up.start_next_cycle()
                    else:
                        self._drop_upstream()

    def _connect(self) -> None:
        if self.chan is not None:
            return
        try:
            self.chan = self.proxy.dial()
        except VmkitError as e:
            self._fail(502, f"vmkit: cannot reach the VM's dockerd: {e}")
        self.up = h11.Connection(h11.CLIENT)

    def _drop_upstream(self) -> None:
        if self.chan is not None:
            with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
                self.chan.close()
        self.chan = None
        self.up = None

    def _one(self, req: h11.Request) -> None:
        method = req.method.decode("ascii", "replace")
        target = req.target.decode("utf-8", "replace")
        split = urllib.parse.urlsplit(target)
        path = _VERSION.sub("", split.path)
        icpt = self.proxy.interceptor
        if icpt is not None and icpt.wants(method, path):
            self._intercepted(icpt, req, method, path, split.query)
        else:
            self._passed(req)

    def _passed(self, req: h11.Request) -> None:
        self._connect()
        try:
            self._to_dockerd(req)
        except (OSError, EOFError, paramiko.SSHException) as e:
            self._drop_upstream()
            self._fail(502, f"vmkit: the connection to the VM's dockerd broke: {e}")
        except h11.LocalProtocolError as e:
            self._fail(400, f"vmkit: bad HTTP request: {e}")
        sending = True
        while True:
            try:
                ev = self._next(self.srv, self.client)
            except h11.RemoteProtocolError as e:
                self._fail(400, f"vmkit: bad HTTP request: {e}")
            if isinstance(ev, h11.Data | h11.EndOfMessage) and sending:
                try:
                    self._to_dockerd(ev)
                except (OSError, EOFError, paramiko.SSHException):
                    # dockerd answered early and closed (an error before reading the body):
                    # its answer is still to be read.
                    sending = False
            if isinstance(ev, h11.EndOfMessage) or not isinstance(ev, h11.Data):
                break
        self._relay_response()

    def _relay_response(self) -> None:
        assert self.up is not None and self.chan is not None
        while True:
            try:
                ev = self._next(self.up, self.chan)
            except h11.RemoteProtocolError as e:
                self._drop_upstream()
                self._fail(502, f"vmkit: dockerd's answer could not be read: {e}")
            except _Closed as e:
                self._drop_upstream()
                self._fail(502, f"vmkit: the connection to the VM's dockerd broke: {e}")
            if isinstance(ev, h11.InformationalResponse):
                self._to_client(ev)
                if ev.status_code == 101:
                    self._switch()
                    return
                continue
            break
        assert isinstance(ev, h11.Response)
        self._to_client(ev)
        while True:
            try:
                ev = self._next(self.up, self.chan)
            except (h11.RemoteProtocolError, _Closed) as e:
                self._drop_upstream()
                raise _Closed(str(e)) from e
            if isinstance(ev, h11.Data | h11.EndOfMessage):
                self._to_client(ev)
            if not isinstance(ev, h11.Data):
                return

    def _switch(self) -> None:
        """After a 101: both sides speak raw bytes (attach, exec, BuildKit sessions)."""
        assert self.up is not None and self.chan is not None
        self.switched = True
        ahead_client, _ = self.srv.trailing_data
        ahead_dockerd, _ = self.up.trailing_data
        chan, self.chan = self.chan, None
        pump_both(self.client, chan, first=ahead_client, back=ahead_dockerd)

    def _intercepted(
        self, icpt: Interceptor, req: h11.Request, method: str, path: str, query: str
    ) -> None:
        body = bytearray()
        while True:
            try:
                ev = self._next(self.srv, self.client)
            except h11.RemoteProtocolError as e:
                self._fail(400, f"vmkit: bad HTTP request: {e}")
            if isinstance(ev, h11.Data):
                body += ev.data
                if len(body) > MAX_INTERCEPTED_BODY:
                    self._fail(413, "vmkit: the request body is too large")
                continue
            break
        call = ApiRequest(method, path, dict(urllib.parse.parse_qsl(query)), bytes(body))
        try:
            new_body = icpt.before(call)
        except VmkitError as e:
            self._fail(_status_for(e), f"vmkit: {e}")
        sent = bytes(body) if new_body is None else new_body
        headers = [
            (k, v)
            for k, v in req.headers
            if k.lower() not in (b"content-length", b"transfer-encoding")
        ]
        headers.append((b"content-length", str(len(sent)).encode()))
        self._connect()
        try:
            self._to_dockerd(h11.Request(method=req.method, target=req.target, headers=headers))
            if sent:
                self._to_dockerd(h11.Data(data=sent))
            self._to_dockerd(h11.EndOfMessage())
        except (OSError, EOFError, paramiko.SSHException) as e:
            self._drop_upstream()
            self._fail(502, f"vmkit: the connection to the VM's dockerd broke: {e}")
        status, resp_headers, resp_body = self._read_whole_response()
        try:
            icpt.after(call, status, resp_body)
        except VmkitError as e:
            self._fail(_status_for(e), f"vmkit: {e}")
        headers = [
            (k, v)
            for k, v in resp_headers
            if k.lower() not in (b"content-length", b"transfer-encoding")
        ]
        if status not in (204, 304):
            headers.append((b"content-length", str(len(resp_body)).encode()))
        self._to_client(h11.Response(status_code=status, headers=headers))
        if resp_body:
            self._to_client(h11.Data(data=resp_body))
        self._to_client(h11.EndOfMessage())

    def _read_whole_response(self) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        assert self.up is not None and self.chan is not None
        body = bytearray()
        status = 0
        headers: list[tuple[bytes, bytes]] = []
        while True:
            try:
                ev = self._next(self.up, self.chan)
            except (h11.RemoteProtocolError, _Closed) as e:
                self._drop_upstream()
                self._fail(502, f"vmkit: dockerd's answer could not be read: {e}")
            if isinstance(ev, h11.Response):
                status, headers = ev.status_code, list(ev.headers)
            elif isinstance(ev, h11.Data):
                body += ev.data
            elif isinstance(ev, h11.EndOfMessage):
                return status, headers, bytes(body)

    def close(self) -> None:
        if not self.switched:
            self._drop_upstream()
            with contextlib.suppress(OSError):
                self.client.close()
