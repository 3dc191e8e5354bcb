"""A host-wide registry of the host ports labs were given, so two labs never share one.

Lab VMs are not running when a lab is rendered, so "free on 127.0.0.1 right now" alone would
hand the same ports to the next lab. The registry (``<data dir>/lab-ports.json``) keeps every
lab's ports until the lab is released; reads and writes happen under a file lock, so two
``vmkit lab render`` processes at once still get disjoint ports. Labs whose folder was
deleted are dropped from the registry the next time ports are allocated.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from vmkit import home
from vmkit.errors import InvalidInput, PortInUse, VMLocked
from vmkit.host.netutil import port_is_free
from vmkit.state import atomic_write

SCHEMA = 1


def check_range(port_range: tuple[int, int]) -> tuple[int, int]:
    """``port_range`` if it is a valid, non-privileged range, else ``InvalidInput``."""
    low, high = port_range
    if not (1024 <= low <= high <= 65535):
        raise InvalidInput(
            f"port range {low}-{high} is not valid",
            hint="use LOW-HIGH with 1024 <= LOW <= HIGH <= 65535",
        )
    return low, high


class PortRegistry:
    """The ports handed to labs on this host, by lab folder."""

    def __init__(self, path: Path | None = None, *, lock_timeout: float = 60.0) -> None:
        self.path = path or home.data_dir() / "lab-ports.json"
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.lock_timeout = lock_timeout

    @contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with FileLock(str(self.lock_path), timeout=self.lock_timeout):
                data = self._read()
                yield data
                atomic_write(self.path, json.dumps(data, indent=2, sort_keys=True) + "\n")
        except Timeout as e:
            raise VMLocked(f"the lab port registry {self.path} is locked by another vmkit") from e

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {"schema": SCHEMA, "labs": {}}
        except ValueError as e:
            raise InvalidInput(
                f"the lab port registry {self.path} is damaged: {e}",
                hint="move it away; `vmkit lab render` then starts a new one",
            ) from e
        if not isinstance(data, dict) or not isinstance(data.get("labs"), dict):
            raise InvalidInput(f"the lab port registry {self.path} has an unknown layout")
        return data

    def allocations(self) -> dict[str, list[int]]:
        """Lab folder → its ports, as registered now."""
        if not self.path.exists():
            return {}
        return {k: list(v["ports"]) for k, v in self._read()["labs"].items()}

    def allocate(
        self,
        owner: Path,
        count: int,
        port_range: tuple[int, int],
        *,
        is_free: Callable[[int], bool] = port_is_free,
    ) -> list[int]:
        """``count`` ports for the lab at ``owner``: free on 127.0.0.1 now and given to no other lab.

        Ports ``owner`` held before are released first. ``PortInUse`` if the range is too small.
        """
        low, high = check_range(port_range)
        key = str(owner.resolve())
        with self._locked() as data:
            labs: dict[str, Any] = data["labs"]
            for other in [k for k in labs if k != key and not Path(k).is_dir()]:
                del labs[other]
            labs.pop(key, None)
            taken = {p for lab in labs.values() for p in lab["ports"]}
            chosen: list[int] = []
            for port in range(low, high + 1):
                if len(chosen) == count:
                    break
                if port not in taken and is_free(port):
                    chosen.append(port)
            if len(chosen) < count:
                raise PortInUse(
                    f"only {len(chosen)} of the {count} host ports needed are free in {low}-{high}",
                    hint="give a wider --port-range, or release old labs with "
                    "`vmkit lab down --destroy DIR`",
                )
            labs[key] = {"ports": chosen, "since": datetime.now(UTC).isoformat()}
        return chosen

    def release(self, owner: Path) -> list[int]:
        """Forget the ports of the lab at ``owner``; returns them (empty if it had none)."""
        key = str(owner.resolve())
        with self._locked() as data:
            entry = data["labs"].pop(key, None)
        return list(entry["ports"]) if entry else []
