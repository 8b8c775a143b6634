"""RabbitMQ's queue depths for the dashboard's overview, read from its management API
(shared/overview.py, as `convbus overview` reads them)."""

from __future__ import annotations

import asyncio
import time

from shared.errors import BusError
from shared.overview import Overview, fetch_overview
from shared.settings import BusSettings


class QueueDepthReader:
    """RabbitMQ's queue depths, from its management API, read at most once every `every`
    seconds however many dashboards ask (each refreshes every few seconds)."""

    def __init__(self, settings: BusSettings, every: float = 2.0, timeout: float = 3.0) -> None:
        self.settings = settings
        self.every = every
        self.timeout = timeout
        self._lock = asyncio.Lock()
        self._read_at: float | None = None
        self._last: tuple[Overview | None, str | None] = (None, None)

    async def read(self) -> tuple[Overview | None, str | None]:
        """The overview of the queues, or None and why it could not be read."""
        async with self._lock:
            fresh = self._read_at is not None and time.monotonic() - self._read_at < self.every
            if not fresh:
                try:
                    self._last = (await fetch_overview(self.settings, self.timeout), None)
                except BusError as exc:  # no management API, refused, down: said on the page
                    self._last = (None, f"queue depths unavailable: {exc}")
                self._read_at = time.monotonic()
            return self._last
