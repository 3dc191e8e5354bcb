"""Fault injection for tests: ``VMKIT_FAULT=STEP`` kills this process at step ``STEP``.

Every live change (share, unshare, forward, unforward and the steps of their mechanisms)
names its step boundaries with ``point("share:intent")`` and so on. Nothing happens unless
the environment names that step; then the process sends itself SIGKILL there, which is what a
user's ``kill -9`` or a power cut does, so tests can check that the next command converges.
``VMKIT_FAULT=list`` prints each step reached to stderr instead (to learn the step names).
"""

from __future__ import annotations

import os
import sys

from vmkit.host import signals

ENV = "VMKIT_FAULT"


def point(step: str) -> None:
    """A step boundary: die here if ``$VMKIT_FAULT`` names ``step``."""
    wanted = os.environ.get(ENV)
    if not wanted:
        return
    if wanted == "list":
        print(f"fault point: {step}", file=sys.stderr, flush=True)
    elif wanted == step:
        signals.die_now()
