"""Ctrl-C (SIGINT) and SIGTERM during a live change: finish the change first, then exit.

A change to a running VM (a QEMU device added, a guest mount made) is short but has several
steps; stopping between two of them leaves half a share. Inside ``deferred()`` the first
signal is noted and the change goes on; when it is done, ``KeyboardInterrupt`` is raised (for
SIGTERM, the signal is delivered again with the previous handler). A second signal abandons
the change at once; what it left is found and cleaned by the next vmkit command.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType

SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def deferred(notice: Callable[[], None] = lambda: None) -> Iterator[None]:
    """Hold SIGINT/SIGTERM until the block ends; ``notice`` is called at the first one.

    Outside the main thread (where Python cannot take signals) this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got: list[int] = []

    def handler(signum: int, frame: FrameType | None) -> None:
        if got:
            raise KeyboardInterrupt  # the second one: abandon
        got.append(signum)
        notice()

    old = {s: signal.signal(s, handler) for s in SIGNALS}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    if got:
        if got[0] == signal.SIGTERM:
            signal.raise_signal(signal.SIGTERM)  # now with the previous handler
        raise KeyboardInterrupt
