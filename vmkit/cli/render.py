"""How the CLI shows things: one console, progress lines, state colours."""

from __future__ import annotations

import logging
import time

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    ProgressColumn,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from vmkit.progress import Progress
from vmkit.providers.base import Status, VMState

console = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)

_COLOURS = {
    VMState.RUNNING: "green",
    VMState.STARTING: "yellow",
    VMState.STOPPING: "yellow",
    VMState.BROKEN: "red",
    VMState.UNKNOWN: "red",
}


def state_text(st: Status) -> str:
    """The state as rich markup, with its detail."""
    colour = _COLOURS.get(st.state, "default")
    detail = f" ({st.detail})" if st.detail else ""
    return f"[{colour}]{st.state.value}[/]{detail}"


def transfer_columns() -> tuple[ProgressColumn, ...]:
    """A rich progress bar for bytes: what, bar, MiB done/total, MiB/s, time left."""
    return (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )


def progress_printer() -> Progress:
    """A ``Progress`` that prints each step with the seconds since the command began."""
    started = time.monotonic()

    def show(line: str) -> None:
        console.print(
            f"[dim]{time.monotonic() - started:6.1f}s[/] {line}", markup=True, soft_wrap=True
        )

    return show


class _NoticeHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        console.print(f"[yellow]![/] {record.getMessage()}", markup=True, soft_wrap=True)


def show_notices() -> None:
    """Show the library's notices (the ``vmkit`` logger, warnings and up) as "!" lines."""
    logger = logging.getLogger("vmkit")
    if not any(isinstance(h, _NoticeHandler) for h in logger.handlers):
        logger.addHandler(_NoticeHandler(logging.WARNING))
        logger.propagate = False
