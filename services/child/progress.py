"""What a handler tells of its progress while it runs: `progress(0.4, "parsed 40 pages")`.

Callable from async and sync handlers alike (a sync handler's thread sees the run it serves
through the context the child copies into it); it returns at once. The child publishes at most
one `progress` event per RELAY_PROGRESS_EVERY seconds for a task, with the latest report, so a
chatty handler cannot flood the bus; the tracker keeps the last one on the task's row.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from contextvars import ContextVar
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from services.child.run_events import RunReports

#: The most characters of a note kept (the rest is cut).
MAX_NOTE = 1000

_current: ContextVar[RunReports | None] = ContextVar("convbus_run_reports", default=None)


def progress(fraction: float | None = None, note: str | None = None) -> None:
    """Report the running task's progress: `fraction` from 0 to 1, `note` a few words.

    Raises ValueError for a fraction outside 0..1 (or not a number), RuntimeError outside a
    handler the child runs.
    """
    reports = _current.get()
    if reports is None:
        raise RuntimeError("progress() reports for a handler the child runs; none runs here")
    if fraction is not None:
        if isinstance(fraction, bool) or not isinstance(fraction, int | float):
            raise ValueError(f"progress fraction: a number from 0 to 1, not {fraction!r}")
        if not (math.isfinite(fraction) and 0 <= fraction <= 1):
            raise ValueError(f"progress fraction: a number from 0 to 1, not {fraction!r}")
        fraction = float(fraction)
    if note is not None:
        note = str(note).replace("\x00", "")[:MAX_NOTE]
    reports.report(fraction, note)


@contextlib.contextmanager
def reporting_to(reports: RunReports) -> Iterator[None]:
    """Within the block, `progress` reports to `reports` (the worker runs a handler in it)."""
    token = _current.set(reports)
    try:
        yield
    finally:
        _current.reset(token)
