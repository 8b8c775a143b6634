"""Cancellation over HTTP: a task canceled never starts, on any child, and a running handler is
cancelled; who may cancel; a callback after the cancel is recorded and changes nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.e2e.test_keys import KEYS, assert_error, keys_json
from tests.support.api import AUTH, finished, logs, record, send_task
from tests.support.bus import Bus, wait_for

pytestmark = pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)


def cancel(bus: Bus, task_id: str, key: str | None = None) -> httpx.Response:
    headers = AUTH if key is None else {"X-Relay-API-Key": key}
    return httpx.post(f"{bus.api}/api/relay/tasks/{task_id}/cancel", headers=headers, timeout=10)


def canceled(bus: Bus, task_id: str) -> dict[str, object]:
    row = wait_for(lambda: finished(bus, task_id), timeout=30, what=f"{task_id} to end")
    assert row["task_status"] == "canceled", row
    return row


def child(bus: Bus, **env: str) -> None:
    bus.start_child("child", "--handlers", "bus_handlers:handlers", **env)


def test_a_task_canceled_before_any_child_runs_never_starts(bus: Bus, tmp_path: Path) -> None:
    bus.start_tracker()
    bus.start_api()
    runs = tmp_path / "runs"
    task_id = send_task(bus, "counted_nap", payload={"counter": str(runs), "seconds": 0})
    answer = cancel(bus, task_id)
    assert answer.status_code == 200 and answer.json() == {"status": "ok", "task_id": task_id}
    assert cancel(bus, task_id).status_code == 200  # again: the same, one entry
    row = canceled(bus, task_id)
    assert row["error"] == "canceled by relay"
    child(bus)  # starts after the cancel, with the task waiting in its queue
    after = send_task(bus, "echo")
    wait_for(lambda: finished(bus, after))
    assert not runs.exists()
    assert [e["event"] for e in logs(bus, task_id=task_id)] == ["send", "cancel"]


@pytest.mark.parametrize("cmd", ["sleepy", "sleepy_sync"])
def test_a_running_handler_is_cancelled(bus: Bus, tmp_path: Path, cmd: str) -> None:
    bus.start_tracker()
    child(bus)
    bus.start_api()
    mark = tmp_path / "mark"
    task_id = send_task(bus, cmd, payload={"seconds": 3, "mark": str(mark)})
    wait_for(lambda: record(bus, task_id)["task_status"] == "processing", what="the run")
    assert cancel(bus, task_id).status_code == 200
    canceled(bus, task_id)
    if cmd == "sleepy":
        wait_for(mark.exists, what="the handler's CancelledError")
        assert mark.read_text() == "cancelled"
    else:  # a sync handler is abandoned: it finishes, and its result is dropped
        wait_for(mark.exists, what="the abandoned thread to end")
    after = send_task(bus, "echo")
    wait_for(lambda: finished(bus, after))
    events = [e["event"] for e in logs(bus, task_id=task_id)]
    assert "callback" not in events and events.count("cancel") == 1, events
    assert record(bus, task_id)["task_status"] == "canceled"


def test_a_task_canceled_while_it_waits_for_a_retry_never_runs_again(
    bus: Bus, tmp_path: Path
) -> None:
    bus.start_tracker()
    child(bus, RELAY_RETRY='{"default": {"max_retries": 3, "backoff": 2}}')
    bus.start_api()
    runs = tmp_path / "runs"
    task_id = send_task(bus, "flaky", payload={"counter": str(runs), "fail_times": 5})
    wait_for(lambda: record(bus, task_id)["task_status"] == "retrying", what="the retry")
    assert cancel(bus, task_id).status_code == 200
    canceled(bus, task_id)
    # The copy comes back from its delay queue after 2 s, and is left.
    wait_for(lambda: bus.namespace.queue_depth(bus.namespace.topo.pool_queue("child")) == 0)
    wait_for(lambda: not _delay_queues_hold_anything(bus), timeout=30, what="the delay queue")
    after = send_task(bus, "echo")
    wait_for(lambda: finished(bus, after))
    assert runs.read_text() == "1"


def _delay_queues_hold_anything(bus: Bus) -> bool:
    name = bus.namespace.topo.delay_queue("child", 2000)
    try:
        return bus.namespace.queue_depth(name) > 0
    except Exception:  # deleted once empty and idle
        return False


def test_a_callback_after_the_cancel_is_recorded_and_changes_nothing(bus: Bus) -> None:
    bus.start_tracker()
    bus.start_api()
    task_id = send_task(bus, "echo")  # no child: a foreign one answers late, below
    assert cancel(bus, task_id).status_code == 200
    canceled(bus, task_id)
    late = httpx.post(
        f"{bus.api}/api/relay/callback",
        json={"task_id": task_id, "status": "done", "result": {"late": True}},
        headers=AUTH,
        timeout=10,
    )
    assert late.status_code == 200
    wait_for(lambda: "callback" in [e["event"] for e in logs(bus, task_id=task_id)])
    row = record(bus, task_id)
    assert (row["task_status"], row["result"]) == ("canceled", None)
    assert_error(cancel(bus, "t_forged0000000000000000000000000000000000000000"), 404)
    assert_error(cancel(bus, "never-sent"), 404)


def test_who_may_cancel(bus: Bus) -> None:
    bus.namespace.pools.add("child_bazi")
    bus.start_tracker()
    bus.start_api(RELAY_KEYS=keys_json())
    sent = httpx.post(
        f"{bus.api}/api/relay/send",
        json={"from": "user:u123", "to": "child_bazi", "type": "task", "cmd": "echo"},
        headers={"X-Relay-API-Key": KEYS["user"]},
        timeout=10,
    )
    task_id = sent.json()["task_id"]
    wait_for(lambda: record(bus, task_id)["from"] == "user:u123", what="the tracker's row")
    assert_error(cancel(bus, task_id, KEYS["master"]), 403)  # another sender
    assert_error(cancel(bus, task_id, KEYS["reader"]), 403)  # no send scope
    assert_error(cancel(bus, task_id, KEYS["bazi"]), 403)  # a child's key
    assert cancel(bus, task_id, KEYS["user"]).status_code == 200  # its sender
    assert cancel(bus, task_id, KEYS["ops"]).status_code == 200  # an admin, again
    canceled(bus, task_id)


def test_convbus_cancel_and_a_finished_task(bus: Bus) -> None:
    bus.start_tracker()
    child(bus)
    bus.start_api()
    done = send_task(bus, "echo")
    wait_for(lambda: finished(bus, done))
    refused = _convbus(bus, "cancel", done)
    assert refused.returncode == 1
    assert refused.stderr.strip() == "convbus cancel: HTTP 409: task already completed"
    waiting = send_task(bus, "sleepy", payload={"seconds": 30})
    ok = _convbus(bus, "cancel", waiting)
    assert ok.returncode == 0, ok.stderr
    assert f'"task_id":"{waiting}"' in ok.stdout
    canceled(bus, waiting)


def _convbus(bus: Bus, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args, "--api", bus.api],
        env=bus.env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
