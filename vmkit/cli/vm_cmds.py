"""VM lifecycle commands: up, create, start, stop, destroy, status, list, ssh."""

from __future__ import annotations

import click


def register(group: click.Group) -> None:
    """Add this module's commands to ``group``."""
