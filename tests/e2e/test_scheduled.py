"""Delayed start over HTTP: a task sent with `delay_s` or `not_before` is `scheduled`, waits in
RabbitMQ, then runs once, never before its time; a cancel and a deadline apply while it waits."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared.ids import utc_iso
from tests.support.api import AUTH, finished, logs, record, send, send_task, status
from tests.support.bus import Bus, Proc, wait_for
from tests.support.ops import answers, sample

pytestmark = pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)


def _child(bus: Bus, **env: str) -> Proc:
    return bus.start_child("child", "--handlers", "bus_handlers:handlers", **env)


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _seen(bus: Bus, task_id: str) -> dict[str, Any]:
    """The task's record once the tracker has its send."""
    row: dict[str, Any] = wait_for(
        lambda: (r := record(bus, task_id))["created_at"] and r, what=f"the send of {task_id}"
    )
    return row


@pytest.mark.parametrize("how", ["delay_s", "not_before", "not_before, high"])
def test_a_delayed_task_is_scheduled_until_its_time_then_runs_once(bus: Bus, how: str) -> None:
    bus.start_tracker()
    _child(bus)
    bus.start_api()
    start = datetime.now(UTC) + timedelta(seconds=2.5)
    if how == "delay_s":
        task_id = send_task(bus, "echo", delay_s=2.5)
    else:
        priority = {"priority": "high"} if how.endswith("high") else {}
        task_id = send_task(bus, "echo", not_before=utc_iso(start), **priority)
    row = _seen(bus, task_id)
    not_before = _at(row["not_before"])
    assert row["task_status"] == "scheduled" and status(bus, task_id) == "scheduled", row
    assert abs((not_before - start).total_seconds()) < 1, row
    done = wait_for(lambda: finished(bus, task_id), timeout=30, what="the task to run")
    assert done["task_status"] == "completed", done
    entries = logs(bus, task_id=task_id)
    assert [e["event"] for e in entries] == ["send", "processing", "callback"], entries
    started = _at(entries[1]["ts"])
    assert started >= not_before, (started, not_before)  # never before its time
    # Late by a hop of 250 ms and RabbitMQ's latency; a generous bound catches a wrong hop.
    assert started - not_before < timedelta(seconds=10), (started, not_before)


def test_a_task_canceled_while_scheduled_never_starts(bus: Bus, tmp_path: Path) -> None:
    bus.start_tracker()
    child = _child(bus)
    bus.start_api()
    runs = tmp_path / "runs"
    task_id = send_task(bus, "counted_nap", delay_s=2, payload={"counter": str(runs)})
    assert _seen(bus, task_id)["task_status"] == "scheduled"
    answer = httpx.post(f"{bus.api}/api/relay/tasks/{task_id}/cancel", headers=AUTH, timeout=10)
    assert answer.status_code == 200, answer.text
    row = wait_for(lambda: finished(bus, task_id), what="the cancel")
    assert row["task_status"] == "canceled", row

    # The child met the task again, and dropped it.
    wait_for(lambda: _settled(child, "canceled") == 1, timeout=30, what="the task to be dropped")
    assert not runs.exists()
    assert [e["event"] for e in logs(bus, task_id=task_id)] == ["send", "cancel"]


def test_a_task_whose_deadline_passes_while_scheduled_expires(bus: Bus, tmp_path: Path) -> None:
    bus.start_tracker(RELAY_LEASE_SWEEP_EVERY="0.5")
    bus.start_api()
    runs = tmp_path / "runs"
    now = datetime.now(UTC)
    task_id = send_task(
        bus,
        "counted_nap",
        not_before=utc_iso(now + timedelta(seconds=1)),
        deadline=utc_iso(now + timedelta(seconds=1.5)),
        payload={"counter": str(runs)},
    )
    assert _seen(bus, task_id)["task_status"] == "scheduled"
    # No child serves the pool: the tracker ends it, a grace of 5 s after its deadline.
    row = wait_for(lambda: finished(bus, task_id), timeout=30, what="the expiry")
    assert row["task_status"] == "expired" and "not started by its deadline" in row["error"]
    _child(bus)  # it gets the task now, and leaves it: its own `expired` is the same entry
    after = send_task(bus, "echo")
    wait_for(lambda: finished(bus, after))
    wait_for(lambda: bus.namespace.queue_depth(bus.namespace.topo.pool_queue("child")) == 0)
    assert not runs.exists()
    assert [e["event"] for e in logs(bus, task_id=task_id)] == ["send", "expired"]


def test_a_start_after_the_deadline_or_too_far_ahead_is_refused(bus: Bus) -> None:
    bus.start_tracker()
    bus.start_api(RELAY_MAX_DEADLINE_S="3600")
    now = datetime.now(UTC)
    refused = [
        send(bus, type="task", cmd="echo", not_before=utc_iso(now + timedelta(minutes=2)),
             deadline=utc_iso(now + timedelta(minutes=1))),
        send(bus, type="task", cmd="echo", not_before=utc_iso(now + timedelta(hours=2))),
        send(bus, type="task", cmd="echo", delay_s=7200),
    ]  # fmt: skip
    for answer in refused:
        assert answer.status_code == 422, answer.text
        assert answer.json()["status"] == "error", answer.text
    messages = [a.json()["msg"] for a in refused]
    assert "may start only after its deadline" in messages[0]
    assert "RELAY_MAX_DEADLINE_S" in messages[1] and messages[2].startswith("delay_s")
    # A time already past starts the task at once (it is not `scheduled`).
    past = send_task(bus, "echo", not_before=utc_iso(now - timedelta(minutes=1)))
    row = _seen(bus, past)
    assert row["task_status"] == "pending" and row["not_before"] is None, row
    # Nothing else was published: the past one is the only task in the log.
    assert send(bus, text="marker").status_code == 200
    wait_for(lambda: any(e.get("text") == "marker" for e in logs(bus)))
    assert {e["task_id"] for e in logs(bus) if e["event"] == "send"} == {past}


def _settled(child: Proc, outcome: str) -> float | None:
    """The child's count of deliveries settled with `outcome` (None before it serves)."""
    answer = answers(child, "/metrics")
    return sample(answer.text, "convbus_tasks_total", outcome=outcome) if answer else None


def _twin(bus: Bus, task_id: str, counter: Path, seconds: float) -> None:
    """Put a possible twin of the task in its pool's queue, as a child does with a hop that was
    delivered again (its first delivery's copy, published before the ack was lost, waits too)."""
    row = _seen(bus, task_id)
    body = {"task_id": task_id, "from": row["from"], "to": row["to"], "type": "task",
            "cmd": row["cmd"], "payload": {"counter": str(counter), "seconds": seconds},
            "created_at": row["created_at"], "not_before": row["not_before"]}  # fmt: skip
    bus.namespace.publish_raw(
        bus.namespace.topo.pool_queue("child"),
        json.dumps(body).encode(),
        message_id=task_id,
        type="task",
        content_type="application/json",
        headers={"x-attempt": 1, "x-maybe-copy": 1},
    )


@pytest.mark.parametrize("seconds", [0, 4])
def test_a_possible_twin_of_a_scheduled_task_leaves_it_to_its_twin(
    bus: Bus, tmp_path: Path, seconds: float
) -> None:
    """The twin's run on one child, done (0) or still running (4 s); the marked copy on another
    child, with a record of its own: it leaves the task. Without the mark it runs it again."""
    bus.start_tracker()
    first = _child(bus, RELAY_CONCURRENCY="1", RELAY_PREFETCH="1")
    bus.start_api()
    counter = tmp_path / "runs"
    task_id = send_task(
        bus, "counted_nap", delay_s=1, payload={"counter": str(counter), "seconds": seconds}
    )
    wait_for(lambda: record(bus, task_id)["task_status"] in ("processing", "completed"))
    if not seconds:
        first.stop()  # else it takes the copy, and its own record of the run answers
    (tmp_path / "other").mkdir()
    other = _child(bus, RELAY_STATE_DIR=str(tmp_path / "other"))
    _twin(bus, task_id, counter, seconds)
    wait_for(lambda: _settled(other, "skipped") == 1, timeout=30, what="the copy to be left")
    row = wait_for(lambda: finished(bus, task_id), timeout=30, what="the task to finish")
    assert row["task_status"] == "completed" and counter.read_text() == "1"


def test_a_possible_twin_with_none_runs_once(bus: Bus, tmp_path: Path) -> None:
    bus.start_tracker()
    bus.start_api()
    counter = tmp_path / "runs"
    task_id = send_task(bus, "counted_nap", delay_s=1.5, payload={"counter": str(counter)})
    _seen(bus, task_id)
    # The child died after taking the task and before its hop's publish: only the copy of the
    # delivery RabbitMQ gave again waits, marked.
    bus.namespace.purge(bus.namespace.topo.pool_queue("child"))
    _twin(bus, task_id, counter, 0)
    _child(bus)
    row = wait_for(lambda: finished(bus, task_id), timeout=30, what="the copy to run")
    assert row["task_status"] == "completed" and counter.read_text() == "1"
    started = [_at(e["ts"]) for e in logs(bus, task_id=task_id) if e["event"] == "processing"]
    assert len(started) == 1 and started[0] >= _at(row["not_before"]) + timedelta(seconds=1)
