"""vmkit's part of the Docker endpoint: bind mounts shared and published ports forwarded.

``DockerAuto`` is the proxy's interceptor (vmkit/docker/proxy.py):

* container create: the bind sources the host must provide (vmkit/docker/binds.py) are
  shared live, as automatic shares, before dockerd sees the request;
* container start: explicit host ports are checked on the host first (a taken port fails
  the start, as Docker's own "port is already allocated" does), and once dockerd started the
  container its published ports are forwarded before the client hears back, so the port
  answers as soon as ``docker run -d`` returns. If the forward fails the container is killed
  and the start fails with vmkit's reason.

``watch`` follows dockerd's event stream, so containers started or stopped any other way
(``--restart`` policies, another client, a VM restart) get their forwards added and removed;
on every (re)connection it syncs the record with the containers that run.

Automatic entries are desired state like the user's (``auto``/``owner`` on the spec): they
never replace one the user made, and shares are never removed automatically (a folder a
container used stays shared until ``vmkit unshare``).
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from vmkit.docker import binds
from vmkit.docker.proxy import ApiRequest
from vmkit.errors import ForwardNotFound, InvalidInput, PortInUse, VmkitError
from vmkit.host.netutil import port_is_free

if TYPE_CHECKING:
    import docker

    from vmkit.vm import VM

__all__ = ["DockerAuto", "published"]

_START = re.compile(r"^/containers/([^/]+)/start$")
_CREATE = "/containers/create"
WANTED_START = ("start", "restart")
WANTED_STOP = ("die", "stop", "destroy")


def published(info: dict[str, Any], *, bindings: bool = False) -> list[tuple[int, str, str]]:
    """(host port, proto, HostIp) a container publishes, from ``docker inspect`` data:
    ``NetworkSettings.Ports`` (what dockerd bound) or, with ``bindings``, what
    ``HostConfig.PortBindings`` asks (ports left to dockerd to pick are not in it)."""
    if bindings:
        ports = (info.get("HostConfig") or {}).get("PortBindings") or {}
    else:
        ports = (info.get("NetworkSettings") or {}).get("Ports") or {}
    out: dict[tuple[int, str], str] = {}
    for key, entries in ports.items():
        proto = key.partition("/")[2] or "tcp"
        for e in entries or []:
            try:
                port = int(e.get("HostPort") or 0)
            except (TypeError, ValueError):
                continue
            if port:
                ip = str(e.get("HostIp") or "")
                # Both "0.0.0.0" and "::" entries of one port: one forward.
                if (port, proto) not in out or ip == "127.0.0.1":
                    out[(port, proto)] = ip
    return sorted((p, proto, ip) for (p, proto), ip in out.items())


class DockerAuto:
    """Shares and forwards for a VM's containers; ``vm`` gives a VM on the agent's connection."""

    def __init__(
        self,
        vm: Callable[[], VM],
        api: Callable[[], docker.APIClient],
        *,
        log: Callable[[str], None] = lambda _: None,
    ) -> None:
        self.vm = vm
        self.api = api
        self.log = log
        self._lock = threading.Lock()

    # -- the interceptor --------------------------------------------------------------------

    def wants(self, method: str, path: str) -> bool:
        return method == "POST" and (path == _CREATE or _START.match(path) is not None)

    def before(self, req: ApiRequest) -> bytes | None:
        if req.path == _CREATE:
            return self._share_binds(req)
        m = _START.match(req.path)
        assert m is not None
        self._check_ports(m.group(1))
        return None

    def after(self, req: ApiRequest, status: int, body: bytes) -> None:
        m = _START.match(req.path)
        if m is None or status != 204:
            return
        try:
            self.forward_container(m.group(1))
        except VmkitError:
            # Docker fails a start whose port cannot be bound; do the same, leave nothing.
            with contextlib.suppress(Exception):
                self.api().kill(m.group(1))
            raise

    # -- shares -----------------------------------------------------------------------------

    def _share_binds(self, req: ApiRequest) -> bytes | None:
        vm = self.vm()
        shared = [(s.source, s.target) for s in vm.shares()]
        plan = binds.plan(req.body, shared)
        for folder in plan.create:
            try:
                os.makedirs(folder, exist_ok=True)
            except OSError as e:
                raise InvalidInput(
                    f"cannot create the missing bind source {folder} on the host: {e.strerror}",
                    hint="create it yourself, or bind another folder",
                ) from e
        owner = req.query.get("name", "")
        for folder in plan.share:
            self.log(f"sharing {folder} for container {owner or '(unnamed)'}")
            try:
                vm.share(folder, auto="container", owner=owner)
            except VmkitError as e:
                raise type(e)(f"cannot share {folder} with the VM: {e.message}", hint=e.hint) from e
        return plan.body

    # -- forwards ---------------------------------------------------------------------------

    def _public(self, vm: VM) -> bool:
        return bool(vm.record.extra.get("public_forwards", False))

    def _check_ports(self, container: str) -> None:
        try:
            info = self.api().inspect_container(container)
        except Exception:
            return  # dockerd will answer the start itself (no such container, ...)
        vm = self.vm()
        mine = {f.key: f for f in vm.forwards()}
        name = str(info.get("Name", "")).lstrip("/")
        for port, proto, ip in published(info, bindings=True):
            have = mine.get((proto, port))
            if have is not None:
                if have.auto or have.guest_port == port:
                    continue
                raise PortInUse(
                    f"host port {port}/{proto} already forwards to guest port "
                    f"{have.guest_port} (`vmkit forwards` lists it), so container {name} "
                    f"cannot publish it",
                    hint=f"`vmkit unforward {port}`, or publish another port (-p OTHER:...)",
                )
            host_ip = self._host_ip(vm, ip)
            if not port_is_free(port, host_ip, proto):
                raise PortInUse(
                    f"Bind for {host_ip}:{port} failed: host port {port}/{proto} is already "
                    f"in use on the host, so container {name} cannot publish it",
                    hint="stop what holds it, or publish another port (-p OTHER:...)",
                )

    def _host_ip(self, vm: VM, ip: str) -> str:
        if ip in ("", "0.0.0.0", "::") and self._public(vm):
            return "0.0.0.0"
        return "127.0.0.1"

    def forward_container(self, container: str) -> None:
        """Forward every port the running ``container`` publishes (idempotent)."""
        info = self.api().inspect_container(container)
        if not (info.get("State") or {}).get("Running"):
            return
        name = str(info.get("Name", "")).lstrip("/")
        with self._lock:
            vm = self.vm()
            active: set[tuple[str, int]] | None = None
            for port, proto, ip in published(info):
                have = next((f for f in vm.forwards() if f.key == (proto, port)), None)
                if have is not None:
                    if not have.auto:
                        continue  # the user's own forward wins
                    if (have.auto, have.owner) == ("container", name):
                        if active is None:
                            active = {f.key for f in vm.active_forwards()}
                        if have.key in active:
                            continue  # ours, in place
                        # Ours in the record, gone from the VM (it restarted): made again.
                    # Else left by a container gone, or made by the listener watcher first.
                    with contextlib.suppress(ForwardNotFound):
                        vm.unforward(port, proto=proto)
                public = self._host_ip(vm, ip) == "0.0.0.0"
                self.log(f"forwarding port {port}/{proto} for container {name}")
                vm.forward(port, port, proto=proto, public=public, auto="container", owner=name)

    def unforward_container(self, name: str) -> None:
        """Remove the automatic forwards made for container ``name``."""
        with self._lock:
            vm = self.vm()
            for f in vm.forwards():
                if f.auto == "container" and f.owner == name:
                    self.log(f"removing the forward of port {f.host_port} of container {name}")
                    with contextlib.suppress(ForwardNotFound):
                        vm.unforward(f.host_port, proto=f.proto)

    def sync(self) -> None:
        """Make the automatic forwards match the containers that run now."""
        running = self.api().containers()
        names: set[str] = set()
        for c in running:
            names.update(n.lstrip("/") for n in c.get("Names") or [])
            try:
                self.forward_container(c["Id"])
            except VmkitError as e:
                self.log(f"cannot forward the ports of {c['Id'][:12]}: {e}")
        gone = {
            f.owner for f in self.vm().forwards() if f.auto == "container" and f.owner not in names
        }
        for name in gone:
            self.unforward_container(name)

    # -- the event stream -------------------------------------------------------------------

    def watch(self, stopping: threading.Event) -> None:
        """Follow dockerd's container events until ``stopping``; reconnects after failures."""
        while not stopping.is_set():
            try:
                api = self.api()
                since = int(time.time()) - 1
                self.sync()
                events = api.events(since=since, decode=True, filters={"type": ["container"]})
                for ev in events:
                    if stopping.is_set():
                        break
                    self._on_event(ev)
            except Exception as e:  # dockerd or SSH went away (VM restart): try again
                self.log(f"docker events: {type(e).__name__}: {e}; retrying")
            stopping.wait(1)

    def _on_event(self, ev: dict[str, Any]) -> None:
        action = str(ev.get("Action") or ev.get("status") or "")
        actor = ev.get("Actor") or {}
        cid = str(actor.get("ID") or ev.get("id") or "")
        name = str((actor.get("Attributes") or {}).get("name", ""))
        try:
            if action in WANTED_START and cid:
                self.forward_container(cid)
            elif action in WANTED_STOP and name:
                self.unforward_container(name)
        except Exception as e:
            self.log(f"docker event {action} of {name or cid[:12]}: {type(e).__name__}: {e}")
