"""The host agent process of a VM: ``python -m vmkit.hostagent VM_FOLDER``.

The agent core (vmkit/agent/server.py: the one SSH connection, sshfs shares, SSH tunnels, the
request protocol) with the parts that need the VM layer plugged in as agent requests:

* ``docker-endpoint``: the VM's Docker endpoint, a Docker API proxy on the agent's SSH
  connection (vmkit/docker/proxy.py) that shares bind mounts and forwards published ports
  (vmkit/docker/auto.py), and the watcher of dockerd's events;
* ``auto-listeners``: the guest-listener auto-forward (vmkit/agent/listeners.py).

One process, one SSH connection, one byte pump (vmkit/agent/pump.py) for all of them.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from vmkit.agent.listeners import ListenerWatcher
from vmkit.agent.server import Agent, log, run
from vmkit.home import InstanceFiles

if TYPE_CHECKING:
    import paramiko

    from vmkit.docker.client import Dialer
    from vmkit.vm import VM

__all__ = ["HostAgent", "main"]


class HostAgent:
    """Plugs the Docker endpoint and the listener watcher into ``agent``."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self._dialer: Dialer | None = None
        self._docker: dict[str, Any] | None = None
        self._listeners: ListenerWatcher | None = None
        agent.extensions["docker-endpoint"] = lambda _req: self.docker_endpoint()
        agent.extensions["auto-listeners"] = lambda req: self.auto_listeners(bool(req.get("on")))
        agent.on_close.append(self._close)

    def vm(self) -> VM:
        """The VM, its guest access carried on the agent's connection."""
        from vmkit.vm import get

        vm = get(self.agent.files.name)
        vm.use_ssh(self.agent.ssh())
        return vm

    def docker_channel(self) -> paramiko.Channel:
        """A new byte stream to the guest's dockerd, on the agent's connection."""
        from vmkit.docker.client import Dialer

        ssh = self.agent.ssh()
        with self.agent.lock:
            if self._dialer is None or self._dialer.ssh is not ssh:
                self._dialer = Dialer(ssh)
            dialer = self._dialer
        return dialer()

    def docker_endpoint(self) -> dict[str, Any]:
        """Serve the Docker API proxy (started on the first request) and follow dockerd's
        events; the endpoint's address."""
        import threading

        from vmkit.docker.auto import DockerAuto
        from vmkit.docker.client import api_client
        from vmkit.docker.proxy import Proxy
        from vmkit.host.transport import listen

        with self.agent.lock:
            if self._docker is not None:
                return self._docker
            self.agent.ssh().transport()  # fail now, visibly, rather than on the first client
            address = self.agent.files.docker_endpoint()
            listener = listen(address)
            self.agent.on_close.append(listener.close)

            def api() -> Any:
                return api_client(self.docker_channel, timeout=None)

            auto = DockerAuto(self.vm, api, log=log)
            self.agent.serve_endpoint(listener, Proxy(self.docker_channel, auto, log=log).serve)
            threading.Thread(target=auto.watch, args=(self.agent.stopping,), daemon=True).start()
            log(f"docker endpoint on {address.docker_host}")
            self._docker = attrs.asdict(address)
            return self._docker

    def auto_listeners(self, on: bool) -> bool:
        """Turn the guest-listener auto-forward on or off."""
        with self.agent.lock:
            current, self._listeners = self._listeners, None
            if on:
                self._listeners = current or ListenerWatcher(self.vm, log=log)
        if on and current is None:
            assert self._listeners is not None
            self._listeners.start()
        elif not on and current is not None:
            current.stop()
        return on

    def _close(self) -> None:
        if self._listeners is not None:
            self._listeners.stop(remove=False)


def main() -> None:
    agent = Agent(InstanceFiles(Path(sys.argv[1])))
    HostAgent(agent)
    run(agent)


if __name__ == "__main__":
    main()
