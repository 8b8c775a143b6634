"""The dashboard's queries (GET /tasks, GET /overview) on SQLite and PostgreSQL: pages in order
and complete across ties, the overview's counts, and every filter answered from its index."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import insert, text
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.models import Task
from shared.readmodel import Reader, TaskFilter, tasks_query

TASKS = Task.__table__  # type: ignore[attr-defined]
T0 = datetime(2026, 11, 1, tzinfo=UTC)
STATES = ["completed", "failed", "pending", "processing", "retrying", "scheduled"]


def _row(n: int, created_at: datetime, **fields: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "task_id": f"t{n:06d}", "sender": f"agent-{n % 3}", "recipient": f"pool-{n % 4}",
        "type": "task", "cmd": f"cmd-{n % 5}", "conversation_id": f"c-{n % 7}",
        "state": STATES[n % len(STATES)], "attempts": 1, "send_seen": True,
        "created_at": created_at, "updated_at": created_at, "input_round": 0,
        # Scheduled tasks: half of them due already (they read as pending).
        "not_before": created_at + timedelta(days=3650 * (n % 2)),
        "completed_at": None, "error": None,
    }  # fmt: skip
    row.update(fields)
    return row


async def _insert(engine: AsyncEngine, rows: list[dict[str, Any]]) -> None:
    async with engine.begin() as conn:
        await conn.execute(insert(TASKS), rows)


def _state_now(row: dict[str, Any]) -> str:
    due = row["not_before"] <= datetime.now(UTC)
    return "pending" if row["state"] == "scheduled" and due else row["state"]


async def _all_pages(reader: Reader, f: TaskFilter) -> list[str]:
    """Every task id the filter selects, page by page, as the API's cursor walks them."""
    ids: list[str] = []
    where = f
    while True:
        page = await reader.tasks(where)
        ids += [row["task_id"] for row in page]
        if len(page) < f.limit:
            return ids
        last = page[-1]
        where = replace(f, before=last["created_at"], before_id=last["task_id"])


async def test_pages_hold_every_match_once_newest_first(engine: AsyncEngine) -> None:
    # Three tasks per timestamp: the cursor must break ties by id, or a page boundary inside
    # a timestamp would skip or repeat tasks.
    rows = [_row(n, T0 + timedelta(seconds=n // 3)) for n in range(90)]
    random.Random(7).shuffle(rows)
    await _insert(engine, rows)
    reader = Reader(engine)
    newest_first = sorted(rows, key=lambda r: (r["created_at"], r["task_id"]), reverse=True)
    filters: list[tuple[TaskFilter, Any]] = [
        (TaskFilter(limit=4), lambda r: True),
        (TaskFilter(limit=4, pool="pool-1"), lambda r: r["recipient"] == "pool-1"),
        (TaskFilter(limit=2, sender="agent-2", cmd="cmd-3"),
         lambda r: r["sender"] == "agent-2" and r["cmd"] == "cmd-3"),
        (TaskFilter(limit=5, conversation_id="c-3"), lambda r: r["conversation_id"] == "c-3"),
        (TaskFilter(limit=3, state="failed"), lambda r: _state_now(r) == "failed"),
        (TaskFilter(limit=3, state="pending"), lambda r: _state_now(r) == "pending"),
        (TaskFilter(limit=3, state="scheduled"), lambda r: _state_now(r) == "scheduled"),
        (TaskFilter(limit=4, since=T0 + timedelta(seconds=5), before=T0 + timedelta(seconds=20)),
         lambda r: T0 + timedelta(seconds=5) <= r["created_at"] < T0 + timedelta(seconds=20)),
    ]  # fmt: skip
    for f, wanted in filters:
        expected = [r["task_id"] for r in newest_first if wanted(r)]
        assert expected, f
        assert await _all_pages(reader, f) == expected, f
    # A page's rows carry the state readers see.
    page = await reader.tasks(TaskFilter(limit=100, state="pending"))
    assert {row["state"] for row in page} == {"pending"}


async def test_the_overviews_counts(engine: AsyncEngine) -> None:
    now = datetime.now(UTC)
    recent, old = now - timedelta(seconds=20), now - timedelta(minutes=10)
    await _insert(
        engine,
        [
            _row(0, recent, recipient="a", state="completed", completed_at=recent),
            _row(1, recent, recipient="a", state="failed", completed_at=recent, error="e1"),
            _row(2, recent, recipient="a", state="processing"),
            _row(3, old, recipient="b", state="completed", completed_at=recent),
            _row(4, old, recipient="b", state="failed", completed_at=old, error="e4"),
            _row(5, old, recipient="b", state="retrying"),
            _row(6, old, recipient="b", state="scheduled", not_before=old),  # due: pending
            _row(7, old, recipient="b", state="scheduled", not_before=now + timedelta(hours=1)),
        ],
    )
    reader = Reader(engine)
    since = now - timedelta(seconds=60)
    assert await reader.activity(since) == {
        "a": {"sent": 3, "completed": 1, "failed": 1},
        "b": {"completed": 1},
    }
    assert await reader.unfinished() == {
        "scheduled": 1, "pending": 1, "processing": 1, "retrying": 1, "input_required": 0,
    }  # fmt: skip
    failures = await reader.recent_failures(5)
    assert [(f["task_id"], f["error"]) for f in failures] == [("t000001", "e1"), ("t000004", "e4")]


#: (filter, the index it must be answered from): every filter of the task list.
PLANS: list[tuple[TaskFilter, str]] = [
    (TaskFilter(), "ix_tasks_created"),
    (TaskFilter(state="failed"), "ix_tasks_state_created"),
    (TaskFilter(pool="pool-17"), "ix_tasks_recipient"),
    (TaskFilter(sender="agent-123"), "ix_tasks_sender_created"),
    (TaskFilter(cmd="cmd-42"), "ix_tasks_cmd_created"),
    (TaskFilter(conversation_id="c-1234"), "ix_tasks_conversation"),
    (TaskFilter(since=T0 + timedelta(hours=1), before=T0 + timedelta(hours=2)), "ix_tasks_created"),
    (TaskFilter(before=T0 + timedelta(hours=3), before_id="t001000"), "ix_tasks_created"),
]


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
async def test_every_filter_reads_its_index(engine: AsyncEngine) -> None:
    # Enough tasks, spread as on a busy bus, that reading them all would cost more than the
    # index: each filter's plan must then name its index and read no table whole.
    spread = random.Random(3)
    rows = [
        _row(n, T0 + timedelta(seconds=n), recipient=f"pool-{spread.randrange(40)}",
             sender=f"agent-{spread.randrange(200)}", cmd=f"cmd-{spread.randrange(100)}",
             conversation_id=f"c-{spread.randrange(2000)}",
             state="failed" if n % 50 == 0 else "completed")
        for n in range(20_000)
    ]  # fmt: skip
    await _insert(engine, rows)
    postgres = engine.dialect.name == "postgresql"
    async with engine.connect() as conn:
        await conn.execute(text("ANALYZE"))
        for f, index in PLANS:
            literal = {"literal_binds": True}
            sql = str(tasks_query(f).compile(dialect=engine.dialect, compile_kwargs=literal))
            explain = "EXPLAIN " if postgres else "EXPLAIN QUERY PLAN "
            plan = "\n".join(str(r[-1]) for r in await conn.execute(text(explain + sql)))
            # SQLite's statistics know how many states there are, not how rare one is: for a
            # state it walks the newest tasks instead, which stays cheap for a common one.
            if postgres or f.state is None:
                assert index in plan, (f, plan)
            # (A sort of the rows an index picked is fine: that is what a selective filter gets.)
            assert ("Seq Scan" if postgres else "SCAN tasks\n") not in plan + "\n", (f, plan)
