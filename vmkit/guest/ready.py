"""Boot readiness as a list of probes, each with a hint printed when it is the one that fails."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import attrs
import tenacity

from vmkit.errors import BootTimeout, VmkitError
from vmkit.progress import Progress


@attrs.frozen
class Probe:
    """One readiness step. ``check`` returns True when ready, False to wait, or raises if hopeless.

    ``limit`` bounds this step alone (seconds from when it starts), inside the overall timeout;
    ``failure`` makes the error raised when the step runs out of time, from the seconds since
    the wait began (default: ``BootTimeout`` with ``hint``). Retries back off from 0.1 s to
    ``max_wait`` seconds.
    """

    name: str
    check: Callable[[], bool]
    hint: str
    limit: float | None = None
    failure: Callable[[float], VmkitError] | None = None
    max_wait: float = 1.0


def wait_for(probes: Sequence[Probe], *, timeout: float, progress: Progress) -> dict[str, float]:
    """Run ``probes`` in order, each until it passes; return seconds from start to each passing.

    ``BootTimeout`` names the probe that did not pass and carries its hint.
    """
    started = time.monotonic()
    deadline = started + timeout
    reached: dict[str, float] = {}
    for probe in probes:
        progress(f"waiting for {probe.name}")
        left = max(deadline - time.monotonic(), 0.1)
        if probe.limit is not None:
            left = min(left, probe.limit)
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_delay(left),
            wait=tenacity.wait_exponential(multiplier=0.1, max=probe.max_wait),
            retry=tenacity.retry_if_result(lambda ok: ok is False),
            reraise=True,
        )
        try:
            retrying(_attempt, probe)
        except tenacity.RetryError as e:
            elapsed = time.monotonic() - started
            if probe.failure is not None:
                raise probe.failure(elapsed) from e
            raise BootTimeout(
                f"{probe.name} not ready after {elapsed:.0f} s", hint=probe.hint
            ) from e
        reached[probe.name] = time.monotonic() - started
    return reached


def _attempt(probe: Probe) -> bool:
    try:
        return probe.check()
    except VmkitError:
        raise
    except Exception:  # a probe that errors means "not yet"; its hint explains a timeout
        return False
