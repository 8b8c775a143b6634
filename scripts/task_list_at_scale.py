"""The dashboard's queries on a million tasks: their PostgreSQL plans and times.

    .venv/bin/python scripts/task_list_at_scale.py [--tasks N] [--keep]

Creates a scratch database on the local PostgreSQL (RELAY_PG_ADMIN_URL, else
postgresql://postgres@127.0.0.1:5432/postgres), migrates it, fills it with N tasks (1,000,000;
sent at 100 a second up to now, over 20 pools, 500 senders, 50 commands, 100,000
conversations; 97 % completed, 2 % failed, the rest unfinished), then prints EXPLAIN (ANALYZE,
BUFFERS) of every query the dashboard's pages make: the task list unfiltered, by each filter,
a page deep in the list, and the overview's counts. Drops the database at the end (--keep
leaves it).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from sqlalchemy import Select, func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.db import make_engine
from shared.migrate import migrate_blocking
from shared.models import Task
from shared.readmodel import UNFINISHED_STATES, TaskFilter, pools_query, tasks_query

ADMIN_URL = os.environ.get("RELAY_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
TASKS = Task.__table__  # type: ignore[attr-defined]
CHUNK = 100_000

FILL = """
INSERT INTO tasks (task_id, sender, recipient, type, cmd, conversation_id, state, attempts,
                   send_seen, created_at, updated_at, completed_at, error, input_round)
SELECT 't_' || lpad(i::text, 10, '0'),
       'agent-' || (hashint4(i) & 511) %% 500,
       'pool-' || (hashint4(i + 1) & 1023) %% 20,
       'task',
       'cmd-' || (hashint4(i + 2) & 1023) %% 50,
       'conv-' || (hashint4(i + 3) & 262143) %% 100000,
       CASE WHEN i %% 100 < 97 THEN 'completed' WHEN i %% 100 < 99 THEN 'failed'
            ELSE (ARRAY['pending', 'processing', 'retrying'])[1 + i %% 3] END,
       1, true, at, at, CASE WHEN i %% 100 < 99 THEN at END,
       CASE WHEN i %% 100 BETWEEN 97 AND 98 THEN 'RuntimeError: boom ' || i END, 0
FROM generate_series(%(first)s::int, %(last)s::int) AS i,
     LATERAL (SELECT %(now)s::timestamptz - (%(total)s::int - i) * interval '10 ms' AS at) AS t
"""


def _queries(newest: datetime) -> list[tuple[str, Select[Any]]]:
    deep = newest - timedelta(hours=2)  # about 720,000 tasks down the list
    lists = [
        ("list, newest first", TaskFilter()),
        ("list, a page deep down (before, before_id)", TaskFilter(before=deep, before_id="t_9")),
        ("list, state=failed", TaskFilter(state="failed")),
        ("list, state=pending", TaskFilter(state="pending")),
        ("list, pool=pool-7", TaskFilter(pool="pool-7")),
        ("list, from=agent-123", TaskFilter(sender="agent-123")),
        ("list, cmd=cmd-42", TaskFilter(cmd="cmd-42")),
        ("list, conversation_id=conv-4242", TaskFilter(conversation_id="conv-4242")),
        ("list, since..before (one hour)",
         TaskFilter(since=newest - timedelta(hours=2), before=newest - timedelta(hours=1))),
        ("list, pool and state", TaskFilter(pool="pool-3", state="failed")),
    ]  # fmt: skip
    minute_ago = newest - timedelta(seconds=60)
    overview = [
        ("overview: sent in the last minute",
         select(TASKS.c.recipient, func.count()).where(TASKS.c.created_at >= minute_ago,
         TASKS.c.type == "task").group_by(TASKS.c.recipient)),
        ("overview: ended in the last minute",
         select(TASKS.c.recipient, TASKS.c.state, func.count())
         .where(TASKS.c.completed_at >= minute_ago).group_by(TASKS.c.recipient, TASKS.c.state)),
        ("overview: unfinished per state",
         select(TASKS.c.state, func.count()).where(TASKS.c.state.in_(UNFINISHED_STATES))
         .group_by(TASKS.c.state)),
        ("overview: last failures",
         select(TASKS.c.task_id).where(TASKS.c.state == "failed")
         .order_by(TASKS.c.updated_at.desc()).limit(8)),
        ("overview: the pools", pools_query()),
    ]  # fmt: skip
    return [(name, tasks_query(f)) for name, f in lists] + overview


async def _explain(url: str, newest: datetime) -> None:
    engine = make_engine(url)
    try:
        await _plans(engine, newest)
    finally:
        await engine.dispose()


async def _plans(engine: AsyncEngine, newest: datetime) -> None:
    async with engine.connect() as conn:
        await conn.execute(text("ANALYZE tasks"))
        for name, query in _queries(newest):
            sql = str(query.compile(dialect=engine.dialect, compile_kwargs={"literal_binds": True}))
            rows = await conn.execute(text("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + sql))
            plan = [str(r[0]) for r in rows]
            print(f"\n### {name}\n")
            print("\n".join(line for line in plan if not line.lstrip().startswith("Planning")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--keep", action="store_true", help="leave the database")
    args = parser.parse_args()
    name = f"convbus_scale_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = f"{ADMIN_URL.rsplit('/', 1)[0]}/{name}"
    try:
        migrate_blocking(url)
        now = datetime.now(UTC)
        started = time.monotonic()
        with psycopg.connect(url, autocommit=True) as conn:
            for first in range(1, args.tasks + 1, CHUNK):
                last = min(first + CHUNK - 1, args.tasks)
                conn.execute(FILL, {"first": first, "last": last, "now": now, "total": args.tasks})  # type: ignore[arg-type]
                took = time.monotonic() - started
                print(f"filled {last:,} of {args.tasks:,} tasks ({took:.0f} s)", flush=True)
        asyncio.run(_explain(url, now))
    finally:
        if not args.keep:
            with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        else:
            print(f"kept {url}")


if __name__ == "__main__":
    main()
