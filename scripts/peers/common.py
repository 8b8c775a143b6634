"""What the peers of `make bench-peers` share: the send's body, the completions table, and the
log route `convbus bench` polls."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import psycopg
from fastapi import FastAPI, Query
from psycopg_pool import ConnectionPool
from pydantic import BaseModel, ConfigDict, Field


class SendBody(BaseModel):
    """The bus's send, as far as the benchmark fills it in."""

    model_config = ConfigDict(populate_by_name=True)

    from_: str = Field(alias="from")
    to: str
    type: str = "task"
    cmd: str | None = None
    payload: Any = None


def create_table(pool: ConnectionPool) -> None:
    with pool.connection() as conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS completions (id BIGSERIAL PRIMARY KEY,"
            " task_id TEXT NOT NULL UNIQUE, status TEXT NOT NULL, result JSONB)"
        )


#: A peer's workers commit their rows side by side, so ids do not grow in commit order: a row
#: committed after a higher id was read would be found by the poller only on a second pass, 2 s
#: later. So a read also looks this many ids below its cursor, and lists each row once.
LOOKBACK = 500


def add_log_route(app: FastAPI, pool: Callable[[], ConnectionPool], select: str) -> None:
    """GET /api/relay/logs: the completions after `after`, oldest first, as the bus's log
    answers them (`select` names the columns id, task_id and status of some table)."""

    served: set[int] = set()  # ids listed after a cursor (one poller reads them)
    lock = threading.Lock()

    @app.get("/api/relay/logs")
    def logs(
        event: str = "callback",
        after: int | None = None,
        limit: int = Query(default=100, ge=1, le=1000),
    ) -> dict[str, Any]:
        if event != "callback":
            return {"status": "ok", "logs": []}  # nothing is ever parked here
        done = f"({select}) AS done"
        if after is None:  # the newest, as the bus answers without `after`
            query = (
                f"SELECT * FROM (SELECT id, task_id, status FROM {done}"
                " ORDER BY id DESC LIMIT %s) AS newest ORDER BY id"
            )
            params: tuple[int, ...] = (limit,)
        else:
            query = f"SELECT id, task_id, status FROM {done} WHERE id > %s ORDER BY id LIMIT %s"
            params = (max(0, after - LOOKBACK), limit + LOOKBACK)
        try:
            with pool().connection() as conn:
                rows = conn.execute(query, params).fetchall()
        except psycopg.errors.UndefinedTable:
            rows = []  # Celery's result table, before its first result
        if after is not None:
            with lock:
                # Below the cursor, only what was not listed yet; above it, all (a second pass
                # of the poller reads the same ids again).
                rows = [row for row in rows if row[0] > after or row[0] not in served][:limit]
                served.update(row[0] for row in rows)
                served.difference_update([i for i in served if i <= after - LOOKBACK])
        entries = [
            {"id": row[0], "task_id": row[1], "event": "callback", "status": row[2]} for row in rows
        ]
        return {"status": "ok", "logs": entries}
