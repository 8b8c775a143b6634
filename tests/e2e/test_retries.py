"""Retries through delay queues, the parking lot, replay, and no duplicate execution."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.support.api import AUTH, finished, logs, logs_at_least, record, send, send_task
from tests.support.bus import Bus, wait_for

pytestmark = pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)


def counter(bus: Bus, name: str) -> Path:
    return bus.workdir / f"{name}.count"


def runs(path: Path) -> int:
    return int(path.read_text()) if path.exists() else 0


def events(bus: Bus, task_id: str) -> list[str]:
    return [e["event"] for e in logs(bus, task_id=task_id)]


def convbus(bus: Bus, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        env=bus.env(),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=bus.workdir,
        check=False,
    )


def test_a_failing_task_is_retried_with_backoff_then_completes(bus: Bus) -> None:
    bus.start_all()
    count = counter(bus, "flaky")
    task_id = send_task(bus, "flaky", payload={"counter": str(count), "fail_times": 2})
    done = wait_for(lambda: finished(bus, task_id), what="the task to complete")
    assert done["task_status"] == "completed" and done["result"] == {"runs_before": 2}
    assert done["attempts"] == 3 and runs(count) == 3
    entries = logs_at_least(bus, 7, task_id=task_id)
    kinds = [e["event"] for e in entries]
    assert kinds.count("retry") == 2 and kinds.count("processing") == 3
    assert kinds[0] == "send" and kinds[-1] == "callback"
    retries = [e for e in entries if e["event"] == "retry"]
    assert [r["attempt"] for r in retries] == [1, 2]
    assert all("flaky failure" in r["error"] and r["next_at"] > r["ts"] for r in retries)


def test_out_of_retries_the_task_is_parked_failed_and_replay_completes_it(bus: Bus) -> None:
    bus.start_all()
    count = counter(bus, "parked")
    task_id = send_task(bus, "flaky", payload={"counter": str(count), "fail_times": 3})
    failed = wait_for(lambda: finished(bus, task_id), what="the task to fail")
    assert failed["task_status"] == "failed" and runs(count) == 3
    assert "retries exhausted after 3 attempts" in failed["error"]
    assert "flaky failure 3" in failed["error"]
    assert "dead" in events(bus, task_id)
    parked_queue = bus.namespace.topo.parked_queue(bus.namespace.topo.pool_queue("child"))
    wait_for(lambda: bus.namespace.queue_depth(parked_queue) == 1)

    # Inspect: over HTTP and with the CLI.
    listed = httpx.get(f"{bus.api}/api/relay/dlq", headers=AUTH, timeout=10).json()["parked"]
    assert [p["task_id"] for p in listed] == [task_id]
    assert listed[0]["pool"] == "child" and "retries exhausted" in listed[0]["reason"]
    shown = httpx.get(f"{bus.api}/api/relay/dlq/{task_id}", headers=AUTH, timeout=10).json()
    assert shown["parked"]["body"]["cmd"] == "flaky"
    cli = convbus(bus, "dlq", "list", "--pool", "child")
    assert cli.returncode == 0, cli.stderr
    assert [json.loads(line)["task_id"] for line in cli.stdout.splitlines()] == [task_id]
    assert httpx.get(f"{bus.api}/api/relay/dlq", headers={}, timeout=10).status_code == 401

    # Replay: the 4th run succeeds; the task leaves `failed` through the replay only.
    replayed = convbus(bus, "dlq", "replay", task_id)
    assert replayed.returncode == 0 and "replayed 1" in replayed.stdout, replayed.stderr
    done = wait_for(lambda: (r := record(bus, task_id))["task_status"] == "completed" and r)
    assert done["result"] == {"runs_before": 3} and done["task_id"] == task_id
    kinds = events(bus, task_id)
    assert kinds.index("dead") < kinds.index("replay") < len(kinds) - 1
    assert kinds[-1] == "callback" and kinds.count("send") == 1
    assert bus.namespace.queue_depth(parked_queue) == 0
    assert convbus(bus, "dlq", "show", task_id).returncode != 0  # no longer parked


def test_retry_later_and_never_retry(bus: Bus) -> None:
    bus.start_all()
    bus.namespace.delays.add(300)
    later = send_task(bus, "later", payload={"counter": str(counter(bus, "later")), "delay": 0.3})
    never = send_task(bus, "never", payload={"counter": str(counter(bus, "never"))})
    assert wait_for(lambda: finished(bus, later))["task_status"] == "completed"
    assert "retry" in events(bus, later)
    failed = wait_for(lambda: finished(bus, never))
    assert failed["task_status"] == "failed" and "the chart is unreadable" in failed["error"]
    assert runs(counter(bus, "never")) == 1 and "retry" not in events(bus, never)


def test_purge_needs_confirmation(bus: Bus) -> None:
    bus.start_all()
    count = counter(bus, "purge")
    task_id = send_task(bus, "flaky", payload={"counter": str(count), "fail_times": 9})
    wait_for(lambda: finished(bus, task_id), what="the task to be parked")
    refused = httpx.delete(f"{bus.api}/api/relay/dlq", headers=AUTH, timeout=10)
    assert refused.status_code == 400 and refused.json()["status"] == "error"
    assert convbus(bus, "dlq", "purge", "--pool", "child").returncode != 0  # no tty, no --yes
    purged = convbus(bus, "dlq", "purge", "--pool", "child", "--yes")
    assert purged.returncode == 0 and "purged 1" in purged.stdout
    assert httpx.get(f"{bus.api}/api/relay/dlq", headers=AUTH).json()["parked"] == []


def test_idempotency_key_makes_a_retried_send_create_nothing_new(bus: Bus) -> None:
    bus.start_all()
    body = {"from": "master", "to": "child", "type": "task", "cmd": "echo", "payload": {"n": 1}}
    headers = {**AUTH, "Idempotency-Key": "req-7"}
    first = httpx.post(f"{bus.api}/api/relay/send", json=body, headers=headers, timeout=10)
    again = httpx.post(f"{bus.api}/api/relay/send", json=body, headers=headers, timeout=10)
    assert first.status_code == again.status_code == 200
    task_id = first.json()["task_id"]
    assert again.json()["task_id"] == task_id and task_id.startswith("t_")
    other = {**body, "payload": {"n": 2}}
    conflict = httpx.post(f"{bus.api}/api/relay/send", json=other, headers=headers, timeout=10)
    assert conflict.status_code == 409
    message = {"from": "master", "to": "user:u1", "text": "hi", "conversation_id": "idem"}
    for _ in range(2):
        assert send(bus, **message).status_code == 200
    keyed = {**AUTH, "Idempotency-Key": "msg-1"}
    for _ in range(2):
        answer = httpx.post(f"{bus.api}/api/relay/send", json=message, headers=keyed, timeout=10)
        assert answer.status_code == 200
    wait_for(lambda: finished(bus, task_id))
    wait_for(lambda: len(logs(bus, conversation_id="idem")) >= 3)
    assert len(logs(bus, conversation_id="idem")) == 3  # two unkeyed, one for the keyed pair
    assert [e["event"] for e in logs(bus, task_id=task_id, event="send")] == ["send"]


def test_a_task_delivered_again_is_not_run_again(bus: Bus) -> None:
    bus.start_all()
    count = counter(bus, "once")
    task_id = send_task(bus, "flaky", payload={"counter": str(count), "fail_times": 0})
    assert wait_for(lambda: finished(bus, task_id))["task_status"] == "completed"
    parked_or_sent = logs(bus, task_id=task_id, event="send")[0]
    body = {
        "task_id": task_id, "from": "master", "to": "child", "type": "task", "cmd": "flaky",
        "payload": {"counter": str(count), "fail_times": 0}, "created_at": parked_or_sent["ts"],
    }  # fmt: skip
    pool_queue = bus.namespace.topo.pool_queue("child")
    # Again as a first delivery: the child's own record has the outcome; only the callback goes.
    bus.namespace.publish_raw(pool_queue, json.dumps(body).encode(), message_id=task_id)
    # Again as a later attempt, to a child without that record: it asks the bus, and skips.
    bus.start_child(
        "child", "--handlers", "bus_handlers:handlers", RELAY_STATE_DIR=str(bus.workdir / "other")
    )
    bus.namespace.publish_raw(
        pool_queue, json.dumps(body).encode(), message_id=task_id, headers={"x-attempt": 2}
    )
    wait_for(lambda: bus.namespace.queue_depth(pool_queue) == 0, what="both copies settled")
    marker = send_task(bus, "echo")
    wait_for(lambda: finished(bus, marker))
    assert runs(count) == 1
    assert events(bus, task_id).count("processing") == 1
    assert record(bus, task_id)["task_status"] == "completed"
