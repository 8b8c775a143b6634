"""A steady load of sends from a thread, for fault tests that break things under it."""

from __future__ import annotations

import threading
import time

import httpx

from tests.support.api import send
from tests.support.bus import Bus


class Load:
    """Sends echo tasks every `pause` seconds until stopped: the ids the API accepted, and
    when each send was answered and whether it was accepted."""

    def __init__(self, bus: Bus, pause: float = 0.02) -> None:
        self.bus = bus
        self.pause = pause
        self.accepted: list[str] = []
        #: (monotonic time, accepted) of every send.
        self.answers: list[tuple[float, bool]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                answer = send(self.bus, type="task", cmd="echo")
                ok = answer.status_code == 200
            except httpx.HTTPError:
                ok = False
            self.answers.append((time.monotonic(), ok))
            if ok:
                self.accepted.append(answer.json()["task_id"])
            time.sleep(self.pause)

    def accepted_since(self, moment: float) -> int:
        return sum(1 for at, ok in self.answers if ok and at > moment)

    def refused_for(self, start: float, end: float) -> float:
        """Seconds from the first refused send after `start` to the next accepted one."""
        refused = [at for at, ok in self.answers if not ok and start <= at <= end]
        if not refused:
            return 0.0
        back = [at for at, ok in self.answers if ok and at > refused[0]]
        return (back[0] if back else end) - refused[0]
