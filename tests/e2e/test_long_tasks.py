"""Handler timeouts (the task's, its command's, the child's) and progress reports, over HTTP."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.support.api import AUTH, finished, logs, record, send, send_task
from tests.support.bus import Bus, wait_for

pytestmark = pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)

#: One retry, then the parking lot: a timed-out task fails after two attempts.
ONE_RETRY = '{"default": {"max_retries": 1, "backoff": 0.1}}'


def _start(bus: Bus, **env: str) -> None:
    bus.start_tracker()
    bus.start_child(
        "child", "--handlers", "bus_handlers:handlers", **{"RELAY_RETRY": ONE_RETRY, **env}
    )
    bus.start_api()


def _failed(bus: Bus, task_id: str) -> dict[str, object]:
    row = wait_for(lambda: finished(bus, task_id), timeout=30, what=f"{task_id} to finish")
    assert row["task_status"] == "failed", row
    return row


def test_a_handler_past_its_timeout_is_cancelled_and_retried(bus: Bus, tmp_path: Path) -> None:
    _start(bus)
    mark = tmp_path / "mark"
    task_id = send_task(bus, "sleepy", timeout_s=0.5, payload={"seconds": 60, "mark": str(mark)})
    row = _failed(bus, task_id)
    assert row["attempts"] == 2 and "timeout after 0.5 s" in row["error"], row
    assert mark.read_text() == "cancelled"  # the handler got CancelledError
    retry = [e for e in logs(bus, task_id=task_id) if e["event"] == "retry"]
    assert [e["error"] for e in retry] == ["timeout after 0.5 s"]


def test_the_task_the_command_and_the_child_each_set_a_timeout(bus: Bus) -> None:
    _start(bus, RELAY_HANDLER_TIMEOUT="0.4")
    by_command = send_task(bus, "slow_by_default", payload={"seconds": 1})
    overridden = send_task(bus, "slow_by_default", timeout_s=5, payload={"seconds": 1})
    by_child = send_task(bus, "sleepy", payload={"seconds": 2})
    within = send_task(bus, "sleepy", payload={"seconds": 0.1})
    assert "timeout after 0.3 s" in str(_failed(bus, by_command)["error"])
    assert "timeout after 0.4 s" in str(_failed(bus, by_child)["error"])
    for task_id in (overridden, within):
        row = wait_for(lambda t=task_id: finished(bus, t), timeout=30)
        assert row["task_status"] == "completed", row


def test_a_sync_handler_past_its_timeout_is_abandoned(bus: Bus, tmp_path: Path) -> None:
    _start(bus)
    mark = tmp_path / "mark"
    task_id = send_task(
        bus, "sleepy_sync", timeout_s=0.3, payload={"seconds": 1.5, "mark": str(mark)}
    )
    row = _failed(bus, task_id)
    assert "timeout after 0.3 s" in str(row["error"])
    # Its thread finishes later; what it returns changes nothing.
    wait_for(mark.exists, what="the abandoned threads to end")
    after = send_task(bus, "echo", payload={"after": "abandoned"})
    wait_for(lambda: finished(bus, after))
    assert record(bus, task_id)["task_status"] == "failed"
    assert [e["event"] for e in logs(bus, task_id=task_id)] == [
        "send", "processing", "retry", "processing", "dead"
    ]  # fmt: skip


@pytest.mark.parametrize("cmd", ["reports", "reports_sync"])
def test_progress_reaches_the_task_row_without_flooding_the_bus(bus: Bus, cmd: str) -> None:
    _start(bus)
    task_id = send_task(bus, cmd, payload={"steps": 1000})
    row = wait_for(lambda: finished(bus, task_id), timeout=30)
    assert row["task_status"] == "completed"
    assert (row["progress"], row["progress_note"]) == (1.0, "step 1000 of 1000")
    reported = [e for e in logs(bus, task_id=task_id) if e["event"] == "progress"]
    # 1000 reports in a moment: the first as it came, then at most one a second, the latest.
    assert 1 <= len(reported) <= 3, reported
    assert reported[-1]["progress"] == 1.0 and reported[-1]["note"] == "step 1000 of 1000"


def test_a_foreign_child_reports_progress_over_http(bus: Bus) -> None:
    bus.start_tracker()
    bus.start_api()
    task_id = send_task(bus, "echo")  # no child serves the pool: it stays pending
    url = f"{bus.api}/api/relay/tasks/{task_id}/progress"
    first = httpx.post(url, json={"progress": 0.25, "note": "a quarter", "child_id": "ext"},
                       headers=AUTH, timeout=10)  # fmt: skip
    assert first.status_code == 200, first.text
    answers = [httpx.post(url, json={"progress": 0.5}, headers=AUTH, timeout=10)
               for _ in range(3)]  # fmt: skip
    refused = [a for a in answers if a.status_code == 429]
    assert refused and refused[0].headers["Retry-After"] == "1", [a.text for a in answers]
    assert refused[0].json()["status"] == "error"
    wait_for(lambda: record(bus, task_id)["progress"] is not None, what="the progress")
    row = record(bus, task_id)
    assert row["progress_note"] == "a quarter" and row["progress"] in (0.25, 0.5)
    assert send(bus, text="marker").status_code == 200
    wait_for(lambda: any(e.get("text") == "marker" for e in logs(bus)))
    reported = [e for e in logs(bus, task_id=task_id) if e["event"] == "progress"]
    assert len(reported) == 3 - len(refused) + 1 and reported[0]["child_id"] == "ext"


def _expired(bus: Bus, task_id: str) -> dict[str, object]:
    row = wait_for(lambda: finished(bus, task_id), timeout=30, what=f"{task_id} to end")
    assert row["task_status"] == "expired", row
    return row


def test_a_task_that_waited_past_its_deadline_never_starts(bus: Bus, tmp_path: Path) -> None:
    bus.start_tracker(RELAY_LEASE_SWEEP_EVERY="0.5")
    bus.start_api()
    runs = tmp_path / "runs"
    # No child yet: it waits in the pool's queue, and the tracker ends it (5 s after).
    task_id = send_task(bus, "counted_nap", ttl_s=0.5, payload={"counter": str(runs)})
    row = _expired(bus, task_id)
    assert "not started by its deadline" in str(row["error"]) and row["deadline"]
    # A child that gets it now leaves it: its own `expired` is the same entry.
    bus.start_child("child", "--handlers", "bus_handlers:handlers")
    wait_for(lambda: bus.namespace.queue_depth(bus.namespace.topo.pool_queue("child")) == 0)
    after = send_task(bus, "echo")
    wait_for(lambda: finished(bus, after))
    assert not runs.exists()
    assert [e["event"] for e in logs(bus, task_id=task_id)] == ["send", "expired"]


def test_a_task_picked_up_past_its_deadline_never_starts(bus: Bus, tmp_path: Path) -> None:
    _start(bus, RELAY_CONCURRENCY="1")
    runs = tmp_path / "runs"
    first = send_task(bus, "nap", payload={"seconds": 1.5})
    late = send_task(bus, "counted_nap", ttl_s=0.5, payload={"counter": str(runs)})
    row = _expired(bus, late)
    assert row["attempts"] == 0 and not runs.exists()
    assert wait_for(lambda: finished(bus, first))["task_status"] == "completed"


def test_a_retry_that_would_start_after_the_deadline_expires_at_once(bus: Bus) -> None:
    _start(bus, RELAY_RETRY='{"default": {"max_retries": 3, "backoff": 30}}')
    task_id = send_task(bus, "boom", ttl_s=10)
    row = _expired(bus, task_id)
    assert "attempt 1 failed (RuntimeError: boom" in str(row["error"])
    assert "the next would start after its deadline" in str(row["error"])
    assert [e["event"] for e in logs(bus, task_id=task_id)] == ["send", "processing", "expired"]
