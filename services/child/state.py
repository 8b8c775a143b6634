"""The child's record of tasks whose handler already ran, with their outcome.

The seed's child_worker_state, now a local SQLite file: a task delivered again (after a crash
between the handler and the ack) is not run again; only its callback is retried. Workers of one
pool on one machine share the file.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from shared.backoff import Backoff, retry_blocking
from shared.schemas import CallbackRequest

_PRUNE_EVERY = 1000
#: Between tries of a locked set-up: 50 ms, with jitter.
_LOCKED_BACKOFF = Backoff(first=0.05, factor=1.0)
#: How long a write waits for another worker's (and set-up retries).
_BUSY_SECONDS = 10.0


class FinishedTasks:
    """task id → the outcome its handler produced here."""

    def __init__(self, path: Path, retention_seconds: float) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.retention = retention_seconds
        # Autocommit; WAL with synchronous=NORMAL survives a killed process (not a power cut)
        # at a few microseconds a write.
        self._db = sqlite3.connect(
            path, isolation_level=None, check_same_thread=False, timeout=_BUSY_SECONDS
        )
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._set_up()
        self._writes = 0
        self.prune()

    def _set_up(self) -> None:
        """WAL and the table. Workers starting together on a new file may see `database is
        locked` at once: SQLite skips its busy wait where waiting could deadlock."""

        def set_up() -> None:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS finished ("
                " task_id TEXT PRIMARY KEY, outcome TEXT NOT NULL, finished_at REAL NOT NULL)"
            )

        retry_blocking(set_up, _locked, _LOCKED_BACKOFF, for_seconds=_BUSY_SECONDS)

    def get(self, task_id: str) -> CallbackRequest | None:
        row = self._db.execute(
            "SELECT outcome FROM finished WHERE task_id = ?", (task_id,)
        ).fetchone()
        return CallbackRequest.model_validate_json(row[0]) if row else None

    def put(self, outcome: CallbackRequest) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO finished (task_id, outcome, finished_at) VALUES (?, ?, ?)",
            (outcome.task_id, outcome.model_dump_json(), time.time()),
        )
        self._writes += 1
        if self._writes % _PRUNE_EVERY == 0:
            self.prune()

    def prune(self) -> int:
        """Forget outcomes older than the retention; how many were forgotten."""
        cursor = self._db.execute(
            "DELETE FROM finished WHERE finished_at < ?", (time.time() - self.retention,)
        )
        return cursor.rowcount

    def close(self) -> None:
        self._db.close()


def _locked(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc)
