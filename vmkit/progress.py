"""How long-running work (boots, box builds, image loads) reports what it is doing."""

from __future__ import annotations

from collections.abc import Callable

#: Called with one line of progress ("booting", "waiting for SSH", ...).
Progress = Callable[[str], None]


def no_progress(_: str) -> None:
    """A ``Progress`` that shows nothing."""
