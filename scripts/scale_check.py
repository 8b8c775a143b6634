"""One-off measurement: the API's and the prune's queries on PostgreSQL at 10 million log rows.

    .venv/bin/python scripts/scale_check.py [--admin-url URL] [--keep] [--reuse NAME]

Creates a database of its own (``convbus_scale_<random>``) on the admin URL's server (default
``postgresql://postgres@127.0.0.1:5432/postgres``), migrates it to the current schema,
fills it (about 3.15 million tasks, 10 million log entries over 60 days: a few hundred senders
and pools with a skewed load, conversations of ten tasks, 5 % of the tasks unfinished), runs
VACUUM ANALYZE, prints ``EXPLAIN (ANALYZE, BUFFERS)`` of every query the API and the prune run,
times a prune of about a million old log rows, and drops the database (``--keep`` keeps it;
``--reuse NAME`` measures an existing one without filling it). Filling takes some minutes.
The results are summarised in docs/operations.md ("Retention and indexes").
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from datetime import datetime, timedelta
from typing import Any

import psycopg
from sqlalchemy.dialects.postgresql import psycopg as pg_psycopg

TASKS = 3_150_000
MESSAGES = 200_000
DAYS = 60

# One row per task; the states and attempts follow the random numbers drawn per task.
FILL_TASKS = f"""
INSERT INTO tasks (task_id, sender, recipient, type, cmd, payload, text, conversation_id, state,
                   attempts, child_id, result, error, next_attempt_at, send_seen, created_at,
                   updated_at, completed_at)
SELECT task_id, sender, recipient, 'task', cmd, payload, NULL, conversation_id, state, attempts,
       CASE WHEN state <> 'pending' THEN child END,
       CASE WHEN state = 'completed' THEN jsonb_build_object('ok', true, 'n', n) END,
       CASE WHEN state IN ('failed', 'retrying') THEN 'handler raised ValueError' END,
       CASE WHEN state = 'retrying' THEN created + interval '1 minute' END,
       true, created,
       created + finish,
       CASE WHEN state IN ('completed', 'failed') THEN created + finish END
FROM (
    SELECT n, 't_' || md5(n::text) AS task_id,
           'agent_' || floor(200 * r_sender ^ 2)::int AS sender,
           'pool_' || floor(300 * r_pool ^ 3)::int AS recipient,
           (ARRAY['verify_chart', 'generate_brief', 'summarize', 'score', 'echo'])
               [1 + floor(r_cmd * 5)::int] AS cmd,
           jsonb_build_object('chart', n, 'text', repeat('x', 40)) AS payload,
           CASE WHEN r_conv < 0.9 THEN 'conv_' || (n / 10) END AS conversation_id,
           state,
           CASE WHEN state = 'pending' THEN 0
                WHEN state = 'failed' AND r_retry < 0.4 THEN 3
                WHEN r_retry < 0.03 THEN 2 ELSE 1 END AS attempts,
           'host-' || floor(r_cmd * 40)::int AS child,
           now() - interval '{DAYS} days'
               + (n::float8 / {TASKS}) * interval '{DAYS} days' AS created,
           (0.5 + 60 * r_dur ^ 3) * interval '1 second' AS finish
    FROM (
        SELECT n, random() AS r_sender, random() AS r_pool, random() AS r_cmd,
               random() AS r_conv, random() AS r_retry, random() AS r_dur,
               CASE WHEN s < 0.01 THEN 'pending' WHEN s < 0.03 THEN 'processing'
                    WHEN s < 0.05 THEN 'retrying' WHEN s < 0.10 THEN 'failed'
                    ELSE 'completed' END AS state
        FROM (SELECT n, random() AS s FROM generate_series(1, {TASKS}) AS n) AS drawn
    ) AS r
) AS t
"""

# Every task's entries (send, processing and retry per attempt, callback or dead), and the
# messages, inserted in time order so that ids grow with time as they do on the bus.
FILL_LOG = f"""
INSERT INTO log_entries (event_id, event, ts, task_id, conversation_id, sender, recipient, data)
SELECT event_id, event, ts, task_id, conversation_id, sender, recipient, data FROM (
    SELECT task_id AS event_id, 'send' AS event, created_at AS ts, task_id, conversation_id,
           sender, recipient,
           jsonb_build_object('type', 'task', 'cmd', cmd, 'payload', payload) AS data
    FROM tasks
  UNION ALL
    SELECT 'e_' || md5(task_id || 'p' || a), 'processing',
           created_at + (a - 1) * interval '2 seconds' + interval '10 ms', task_id,
           conversation_id, NULL, NULL, jsonb_build_object('attempt', a, 'child_id', child_id)
    FROM tasks, generate_series(1, attempts) AS a
  UNION ALL
    SELECT 'e_' || md5(task_id || 'r' || a), 'retry',
           created_at + (a - 1) * interval '2 seconds' + interval '1 second', task_id,
           conversation_id, NULL, NULL,
           jsonb_build_object('attempt', a, 'child_id', child_id, 'error', error)
    FROM tasks,
         generate_series(1, CASE WHEN state = 'retrying' THEN attempts ELSE attempts - 1 END)
             AS a
  UNION ALL
    SELECT 'cb_' || task_id, 'callback', completed_at, task_id, NULL, NULL, NULL,
           jsonb_build_object('status', CASE WHEN state = 'completed' THEN 'done'
                                             ELSE 'failed' END,
                              'child_id', child_id, 'result', result, 'error', error)
    FROM tasks WHERE state = 'completed' OR (state = 'failed' AND attempts < 3)
  UNION ALL
    SELECT 'dead_' || md5(task_id), 'dead', completed_at, task_id, conversation_id, sender,
           recipient, jsonb_build_object('error', 'out of retries', 'attempt', attempts)
    FROM tasks WHERE state = 'failed' AND attempts = 3
  UNION ALL
    SELECT 'm_' || md5(n::text), 'message',
           now() - interval '{DAYS} days' + (n::float8 / {MESSAGES}) * interval '{DAYS} days',
           NULL, 'conv_' || floor(random() * {TASKS} / 10)::int,
           'agent_' || floor(200 * random() ^ 2)::int, 'user_' || floor(random() * 300)::int,
           jsonb_build_object('type', 'message', 'text', repeat('y', 60))
    FROM generate_series(1, {MESSAGES}) AS n
) AS e
ORDER BY ts
"""

# A client's key for a fifth of the tasks.
FILL_KEYS = """
INSERT INTO send_keys (key, task_id, pool, body_hash, confirmed, created_at)
SELECT 'idem/' || md5(task_id || 'k'), task_id, recipient, md5(task_id), true, created_at
FROM tasks WHERE right(task_id, 1) IN ('0', '1', '2')
"""


def _explain(conn: psycopg.Connection[Any], title: str, sql: str) -> None:
    print(f"\n=== {title}\n{sql}")
    started = time.perf_counter()
    plan = conn.execute(f"EXPLAIN (ANALYZE, BUFFERS) {sql}").fetchall()  # type: ignore[arg-type]
    print("\n".join(row[0] for row in plan))
    print(f"--- {1000 * (time.perf_counter() - started):.1f} ms with EXPLAIN")


def _sql(conn: psycopg.Connection[Any], statement: Any) -> str:
    """A SQLAlchemy statement as PostgreSQL text with its parameters inlined."""
    compiled = statement.compile(
        dialect=pg_psycopg.dialect(), compile_kwargs={"render_postcompile": True}
    )
    text = psycopg.ClientCursor(conn).mogrify(str(compiled), compiled.params)
    return text.replace("\n", " ")


def fill(url: str) -> None:
    from shared.migrate import migrate_blocking

    migrate_blocking(url)  # the schema as `convbus migrate` makes it
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET work_mem = '1GB'")
        conn.execute("SET maintenance_work_mem = '1GB'")
        conn.execute("SELECT setseed(0.42)")
        for title, sql in (("tasks", FILL_TASKS), ("log", FILL_LOG), ("keys", FILL_KEYS)):
            started = time.perf_counter()
            count = conn.execute(sql).rowcount
            print(f"filled {title}: {count} rows in {time.perf_counter() - started:.0f} s")
        started = time.perf_counter()
        conn.execute("VACUUM ANALYZE")
        print(f"VACUUM ANALYZE in {time.perf_counter() - started:.0f} s")


def explain_all(url: str) -> None:
    """EXPLAIN every query of the API and of the prune, with realistic values."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT task_id, conversation_id, recipient, sender FROM tasks "
            "WHERE conversation_id IS NOT NULL ORDER BY created_at LIMIT 1 OFFSET 1000000"
        ).fetchone()
        assert row is not None
        last = conn.execute("SELECT max(id), max(ts) FROM log_entries").fetchone()
        assert last is not None
        for title, statement in _api_queries(*row, middle=int(last[0]) // 2):
            _explain(conn, title, _sql(conn, statement))
        cutoff = last[1] - timedelta(days=30)
        for title, statement in _prune_queries(conn, cutoff):
            conn.execute("BEGIN")
            try:
                _explain(conn, title, _sql(conn, statement))
            finally:
                conn.execute("ROLLBACK")


def _api_queries(
    task_id: str, conversation: str, pool: str, sender: str, middle: int
) -> list[tuple[str, Any]]:
    """The statements shared/readmodel.py runs."""
    from sqlalchemy import select

    from shared.models import LogEntry, SendKey, Task
    from shared.readmodel import LogFilter, logs_query, pools_query

    tasks, log, keys = (t.__table__ for t in (Task, LogEntry, SendKey))  # type: ignore[attr-defined]
    out: list[tuple[str, Any]] = [
        ("task by id", select(tasks).where(tasks.c.task_id == task_id)),
        ("task state", select(tasks.c.state).where(tasks.c.task_id == task_id)),
        ("task by id, unknown", select(tasks).where(tasks.c.task_id == "t_unknown")),
        (
            "has_event (duplicate callback)",
            select(log.c.id).where(log.c.event_id == "cb_" + task_id),
        ),
        ("send key", select(keys).where(keys.c.key == "idem/" + task_id)),
        ("pools()", pools_query()),
    ]
    filters = {
        "logs, no filter": LogFilter(),
        "logs, limit 1000": LogFilter(limit=1000),
        "logs, task_id": LogFilter(task_id=task_id),
        "logs, conversation_id": LogFilter(conversation_id=conversation),
        "logs, from (sender)": LogFilter(sender=sender),
        "logs, to (pool)": LogFilter(recipient=pool),
        "logs, to (a user)": LogFilter(recipient="user_7"),
        "logs, to (unknown)": LogFilter(recipient="nobody"),
        "logs, event=dead": LogFilter(event="dead"),
        "logs, event=message": LogFilter(event="message"),
        "logs, from + event=dead": LogFilter(sender=sender, event="dead"),
        "logs, after (middle)": LogFilter(after=middle),
        "logs, after + to": LogFilter(after=middle, recipient=pool),
        "logs, after + conversation_id": LogFilter(after=middle, conversation_id=conversation),
        "logs, after + event=dead": LogFilter(after=middle, event="dead"),
    }
    out += [(title, logs_query(f)) for title, f in filters.items()]
    return out


def _prune_queries(conn: psycopg.Connection[Any], cutoff: datetime) -> list[tuple[str, Any]]:
    """The statements of one prune batch (and of the dry run), for a 30-day cutoff."""
    from sqlalchemy import delete

    from shared import retention

    doomed = [
        r[0]
        for r in conn.execute(
            "SELECT task_id FROM tasks WHERE state IN ('completed', 'failed') "
            "AND updated_at < %s LIMIT %s",
            (cutoff, retention.BATCH_SIZE),
        )
    ]
    log, keys = retention._LOG, retention._KEYS
    size = retention.BATCH_SIZE
    out: list[tuple[str, Any]] = [
        ("prune: a batch of tasks", retention.delete_tasks(cutoff, size)),
        ("prune: their log entries", delete(log).where(log.c.task_id.in_(doomed))),
        ("prune: their send keys", delete(keys).where(keys.c.task_id.in_(doomed))),
        ("prune: entries of no task", retention.delete_untied_entries(cutoff, size)),
        ("prune: unconfirmed keys of no task", retention.delete_orphan_keys(cutoff, size)),
    ]
    out += [(f"dry run: {k}", q) for k, q in retention.count_queries(cutoff)]
    return out


def time_prune(url: str) -> None:
    """Prune about a million of the oldest log rows (and their tasks), timed."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT ts FROM log_entries ORDER BY id LIMIT 1 OFFSET 1000000"
        ).fetchone()
        assert row is not None
        cutoff = row[0]

    async def run() -> None:
        from shared.db import make_engine
        from shared.retention import prune

        engine = make_engine(url)
        try:
            started = time.perf_counter()
            counts = await prune(engine, cutoff, dry_run=True)
            print(f"\ndry run to {cutoff}: {counts} in {time.perf_counter() - started:.1f} s")
            started = time.perf_counter()
            counts = await prune(engine, cutoff)
            print(f"prune to {cutoff}: {counts} in {time.perf_counter() - started:.1f} s")
            started = time.perf_counter()
            counts = await prune(engine, cutoff)
            print(f"prune again (nothing to do): {counts} in {time.perf_counter() - started:.2f} s")
        finally:
            await engine.dispose()

    asyncio.run(run())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    p.add_argument("--keep", action="store_true", help="keep the database at the end")
    p.add_argument("--reuse", metavar="NAME", help="measure this existing database, no fill")
    p.add_argument("--no-prune", action="store_true", help="skip the (destructive) prune timing")
    args = p.parse_args()
    name = args.reuse or f"convbus_scale_{uuid.uuid4().hex[:8]}"
    base = args.admin_url.rsplit("/", 1)[0]
    url = f"{base}/{name}"
    if not args.reuse:
        with psycopg.connect(args.admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        print(f"database {name}")
    try:
        if not args.reuse:
            fill(url)
        explain_all(url)
        if not args.no_prune:
            time_prune(url)
    finally:
        if not args.keep and not args.reuse:
            with psycopg.connect(args.admin_url, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            print(f"dropped {name}")


if __name__ == "__main__":
    main()
