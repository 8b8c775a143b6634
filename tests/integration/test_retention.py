"""Retention on SQLite and PostgreSQL: what `prune` deletes, what it keeps, the CLI, the loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import subprocess
import sys
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from services.api.answers import Answers
from services.api.cancels import Cancels
from services.api.send_keys import SendKeys
from services.tracker.lifecycle import Entry
from services.tracker.pruning import pruning
from services.tracker.store import Store
from shared.db import make_engine
from shared.errors import DatabaseUnavailable
from shared.ids import utcnow
from shared.migrate import migrate, migrate_blocking
from shared.models import LogEntry, SendKey, Task
from shared.readmodel import Reader
from shared.retention import PruneCounts, prune
from shared.schemas import Event, TaskMessage
from shared.settings import TrackerSettings
from tests.support.bus import Bus, wait_for

TASKS = Task.__table__  # type: ignore[attr-defined]
LOG = LogEntry.__table__  # type: ignore[attr-defined]
KEYS = SendKey.__table__  # type: ignore[attr-defined]
NOW = utcnow()
OLD = NOW - timedelta(days=40)
RECENT = NOW - timedelta(days=1)
CUTOFF = NOW - timedelta(days=30)


def send(task_id: str, at: datetime) -> Entry:
    return Entry.from_task(
        TaskMessage.model_validate(
            {"task_id": task_id, "from": "master", "to": "child", "cmd": "echo",
             "conversation_id": "conv-1", "created_at": at}
        )
    )  # fmt: skip


def event(kind: str, task_id: str | None, at: datetime, **fields: Any) -> Entry:
    return Entry.from_event(
        Event.model_validate(
            {"event_id": f"{kind}-{task_id}-{at.timestamp()}-{fields.get('n', '')}",
             "event": kind, "task_id": task_id, "ts": at,
             **{k: v for k, v in fields.items() if k != "n"}}
        )
    )  # fmt: skip


def message(n: int, at: datetime) -> Entry:
    return Entry.from_event(
        Event.model_validate(
            {"event_id": f"m-{n}-{at.timestamp()}", "event": "message", "ts": at,
             "from": "master", "to": "user", "text": f"hello {n}", "conversation_id": "conv-1"}
        )
    )  # fmt: skip


def history(task_id: str, state: str, at: datetime) -> list[Entry]:
    """The entries that leave a task in `state`, starting at `at`."""
    s = timedelta(seconds=1)
    entries = [send(task_id, at)]
    if state != "pending":
        entries.append(event("processing", task_id, at + s, attempt=1, child_id="c1"))
    if state == "retrying":
        entries.append(event("retry", task_id, at + 2 * s, attempt=1, error="boom"))
    if state == "completed":
        entries.append(event("callback", task_id, at + 2 * s, status="done", result={"ok": 1}))
    if state == "failed":
        entries.append(event("dead", task_id, at + 2 * s, attempt=1, error="out of retries"))
    entries.append(event("ack", task_id, at + 3 * s, ack_by="master"))
    return entries


async def states(engine: AsyncEngine) -> dict[str, str]:
    async with engine.connect() as conn:
        return {r.task_id: r.state for r in await conn.execute(select(TASKS))}


async def entries_of(engine: AsyncEngine) -> dict[str | None, int]:
    """How many log entries each task has (None: entries of no task)."""
    async with engine.connect() as conn:
        found: dict[str | None, int] = {}
        for (task_id,) in await conn.execute(select(LOG.c.task_id)):
            found[task_id] = found.get(task_id, 0) + 1
        return found


async def keys(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as conn:
        return set((await conn.execute(select(KEYS.c.key))).scalars())


async def add_key(
    engine: AsyncEngine, key: str, task_id: str, at: datetime, confirmed: bool
) -> None:
    keys = SendKeys(engine)
    assert await keys.reserve(key, task_id, "hash", at, "child")
    if confirmed:
        await keys.confirm(key)


async def seed(engine: AsyncEngine) -> None:
    """Old and recent tasks in every state, messages, and send keys."""
    store = Store(engine)
    for state in ("completed", "failed", "pending", "processing", "retrying"):
        await store.write(history(f"old-{state}", state, OLD))
    await store.write(history("recent-completed", "completed", RECENT))
    await store.write(history("recent-failed", "failed", RECENT))
    await store.write([message(n, OLD) for n in range(3)] + [message(9, RECENT)])
    await store.write([event("dead", None, OLD, error="poison message")])  # parked, no task
    await add_key(engine, "task/old-completed", "old-completed", OLD, confirmed=True)
    await add_key(engine, "idem/k-failed", "old-failed", OLD, confirmed=True)
    await add_key(engine, "task/old-pending", "old-pending", OLD, confirmed=True)
    await add_key(engine, "task/recent-completed", "recent-completed", RECENT, confirmed=True)
    # Sends RabbitMQ never confirmed (a 503 not retried), and one the tracker has yet to record.
    await add_key(engine, "idem/lost-old", "t_never-published", OLD, confirmed=False)
    await add_key(engine, "idem/lost-recent", "t_never-published-2", RECENT, confirmed=False)
    await add_key(engine, "idem/unrecorded", "t_not-recorded-yet", OLD, confirmed=True)


async def test_finished_old_tasks_go_with_their_entries_and_keys(engine: AsyncEngine) -> None:
    await seed(engine)
    counts = await prune(engine, CUTOFF)
    assert counts == PruneCounts(tasks=2, task_entries=8, send_keys=3, other_entries=4)
    assert await states(engine) == {
        "old-pending": "pending",
        "old-processing": "processing",
        "old-retrying": "retrying",
        "recent-completed": "completed",
        "recent-failed": "failed",
    }
    logged = await entries_of(engine)
    assert "old-completed" not in logged and "old-failed" not in logged
    # Unfinished tasks keep every entry however old; recent ones keep theirs; one message stays.
    assert logged == {
        "old-pending": 2,
        "old-processing": 3,
        "old-retrying": 4,
        "recent-completed": 4,
        "recent-failed": 4,
        None: 1,
    }
    assert await keys(engine) == {
        "task/old-pending",
        "task/recent-completed",
        "idem/lost-recent",
        "idem/unrecorded",
    }
    assert await prune(engine, CUTOFF) == PruneCounts()


async def test_what_the_api_reads_after_a_prune(engine: AsyncEngine) -> None:
    await seed(engine)
    await prune(engine, CUTOFF)
    reader = Reader(engine)
    assert await reader.task("old-completed") is None
    assert await reader.task_state("old-retrying") == "retrying"
    assert not await reader.has_event("cb_old-completed")
    assert await SendKeys(engine).find("task/old-completed") is None
    assert await reader.pools() == ["child"]


async def test_many_batches(engine: AsyncEngine) -> None:
    store = Store(engine)
    await store.write([e for i in range(23) for e in history(f"t{i}", "completed", OLD)])
    await store.write([e for i in range(4) for e in history(f"u{i}", "processing", OLD)])
    await store.write([message(n, OLD) for n in range(12)])
    for i in range(7):
        await add_key(engine, f"idem/lost-{i}", f"t_never-{i}", OLD, confirmed=False)
    counts = await prune(engine, CUTOFF, batch_size=5)
    assert counts == PruneCounts(tasks=23, task_entries=23 * 4, send_keys=7, other_entries=12)
    assert set(await states(engine)) == {f"u{i}" for i in range(4)}
    assert await keys(engine) == set()


async def test_a_dry_run_counts_and_changes_nothing(engine: AsyncEngine) -> None:
    await seed(engine)
    before = (await states(engine), await entries_of(engine), await keys(engine))
    would = await prune(engine, CUTOFF, dry_run=True)
    assert (await states(engine), await entries_of(engine), await keys(engine)) == before
    assert would == await prune(engine, CUTOFF)
    assert would.total > 0


async def test_a_task_replayed_before_the_prune_stays(engine: AsyncEngine) -> None:
    store = Store(engine)
    await store.write(history("parked", "failed", OLD))
    await store.write([event("replay", "parked", NOW, queue="relay.pool.child.parked")])
    assert (await states(engine))["parked"] == "pending"
    assert await prune(engine, CUTOFF) == PruneCounts()
    assert (await entries_of(engine))["parked"] == 5


async def test_a_task_being_replayed_during_the_prune_stays(
    engine: AsyncEngine, database_url: str
) -> None:
    """The tracker holds the row (moving it from failed to pending): the prune passes it over."""
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite has one writer at a time: a prune waits for the tracker's commit")
    store = Store(engine)
    await store.write(history("parked", "failed", OLD))
    await store.write(history("done", "completed", OLD))
    async with engine.begin() as tracker:
        await tracker.execute(
            update(TASKS).where(TASKS.c.task_id == "parked").values(state="pending", updated_at=NOW)
        )
        counts = await asyncio.wait_for(prune(engine, CUTOFF), timeout=30)
    assert counts.tasks == 1
    assert await states(engine) == {"parked": "pending"}
    assert (await entries_of(engine))["parked"] == 4


async def test_news_of_a_pruned_task_makes_a_new_record(engine: AsyncEngine) -> None:
    """A late callback makes a bare record; a replay of a parked task makes a whole one."""
    store = Store(engine)
    await store.write(history("done", "completed", OLD))
    await store.write(history("parked", "failed", OLD))
    await prune(engine, CUTOFF)
    assert await states(engine) == {}

    assert await store.write([event("callback", "done", NOW, status="done", result=2)]) == 1
    replayed = [
        event("replay", "parked", NOW, queue="relay.pool.child.parked"),
        send("parked", OLD),
    ]
    assert await store.write(replayed) == 2
    reader = Reader(engine)
    late = await reader.task("done")
    assert late is not None
    assert (late["state"], late["result"], late["send_seen"]) == ("completed", 2, False)
    again = await reader.task("parked")
    assert again is not None
    assert (again["state"], again["recipient"], again["send_seen"]) == ("pending", "child", True)


async def test_a_prune_without_its_tables_is_a_database_error(empty_database_url: str) -> None:
    engine = make_engine(empty_database_url)
    try:
        with pytest.raises(DatabaseUnavailable):
            await prune(engine, CUTOFF)
    finally:
        await engine.dispose()


async def eventually(condition: Callable[[], Awaitable[Any]]) -> Any:
    """Poll an async `condition` until it is truthy; fail after 20 seconds."""
    async with asyncio.timeout(20):
        while True:
            if value := await condition():
                return value
            await asyncio.sleep(0.05)  # the database gives no notice: poll it


async def test_the_tracker_prunes_periodically_and_survives_a_database_error(
    empty_database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    database_url = empty_database_url
    caplog.set_level(logging.INFO, logger="services.tracker.pruning")
    settings = TrackerSettings.model_validate(
        {"database_url": database_url, "prune_after": "30d", "prune_every": "0.1s"}
    )
    engine = make_engine(database_url)
    try:
        async with pruning(engine, settings):
            # No tables yet: the prune fails, is logged, and runs again the next period.
            await eventually(lambda: _logged(caplog, "prune failed"))
            await migrate(database_url)
            await seed(engine)
            await eventually(lambda: _gone(engine, "old-completed"))
            await Store(engine).write(history("later", "completed", OLD))
            await eventually(lambda: _gone(engine, "later"))
        assert "old-pending" in await states(engine)
        assert any(r.getMessage().startswith("pruned ") for r in caplog.records)
    finally:
        await engine.dispose()


async def _logged(caplog: pytest.LogCaptureFixture, text: str) -> bool:
    return any(text in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


async def _gone(engine: AsyncEngine, task_id: str) -> bool:
    found = await states(engine)
    return bool(found) and task_id not in found


async def test_no_pruning_without_an_age(engine: AsyncEngine) -> None:
    await seed(engine)
    async with pruning(engine, TrackerSettings()):
        assert not [t for t in asyncio.all_tasks() if t.get_name() == "prune"]
    assert "old-completed" in await states(engine)


def test_the_command_line_on_a_sqlite_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'bus.db'}"

    migrate_blocking(url)

    async def prepare() -> None:
        engine = make_engine(url)
        try:
            await seed(engine)
        finally:
            await engine.dispose()

    asyncio.run(prepare())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RELAY_", "LYNKER_"))}
    env["RELAY_DATABASE_URL"] = url

    def convbus(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cli", "prune", *args],
            env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    dry = convbus("--older-than", "30d", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.startswith("would prune 2 tasks, 8 of their log entries, 3 send keys, "
                                 "4 log entries of no task")  # fmt: skip
    assert _count(tmp_path / "bus.db", "tasks") == 7
    done = convbus("--older-than", "30d")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("pruned 2 tasks, 8 of their log entries")
    assert _count(tmp_path / "bus.db", "tasks") == 5
    for bad in ("0d", "-3d", "30", "10m", "soon"):
        refused = convbus(f"--older-than={bad}")
        assert refused.returncode == 2 and "--older-than" in refused.stderr, bad
    assert _count(tmp_path / "bus.db", "tasks") == 5


def _count(path: Path, table: str) -> int:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        count: int = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    return count


def test_the_tracker_process_prunes(bus: Bus) -> None:
    async def prepare() -> None:
        engine = make_engine(bus.database_url)
        try:
            await seed(engine)
        finally:
            await engine.dispose()

    async def remaining() -> dict[str, str]:
        engine = make_engine(bus.database_url)
        try:
            return await states(engine)
        finally:
            await engine.dispose()

    asyncio.run(prepare())
    tracker = bus.start_tracker(RELAY_PRUNE_AFTER="30d", RELAY_PRUNE_EVERY="1s")
    wait_for(lambda: "old-completed" not in asyncio.run(remaining()), what="the tracker to prune")
    assert "old-pending" in asyncio.run(remaining())
    assert tracker.stop() == 0
    assert "pruned 2 tasks" in tracker.output()


async def test_expired_and_canceled_tasks_go_with_their_cancel(engine: AsyncEngine) -> None:
    store = Store(engine)
    await store.write([send("old-canceled", OLD), send("old-expired", OLD),
                       send("recent-canceled", RECENT)])  # fmt: skip
    await store.write(
        [
            event("cancel", "old-canceled", OLD, canceled_by="master"),
            event("expired", "old-expired", OLD, error="not started by its deadline"),
            event("cancel", "recent-canceled", RECENT, canceled_by="master"),
        ]
    )
    cancels = Cancels(engine)
    await cancels.record("old-canceled", "master", OLD)
    await cancels.record("recent-canceled", "master", RECENT)
    answers = Answers(engine)  # (answers to questions they asked, say, before the end)
    await answers.claim("old-canceled", 1, "master", "yes", OLD)
    await answers.claim("recent-canceled", 1, "master", "yes", RECENT)
    counts = await prune(engine, CUTOFF)
    assert (counts.tasks, counts.task_entries) == (2, 4)
    assert await states(engine) == {"recent-canceled": "canceled"}
    assert await cancels.since(OLD - timedelta(days=1)) == ["recent-canceled"]
    assert not await answers.is_recorded("old-canceled", 1, None, "yes")
    assert await answers.is_recorded("recent-canceled", 1, None, "yes")
