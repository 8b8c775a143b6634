"""Health, readiness, metrics and structured logs of every service, on the real processes."""

from __future__ import annotations

import json
import socket
import subprocess

import httpx
import pytest

from cli.processes import free_port
from tests.support.api import finished, send, send_task
from tests.support.bus import FAST_RETRY, Bus, wait_for
from tests.support.ops import answers, metric, ops, sample

pytestmark = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)


def test_every_service_serves_health_readiness_and_metrics(bus: Bus) -> None:
    tracker = bus.start_tracker(RELAY_QUEUE_STATS_EVERY="0.2")
    child = bus.start_child("child", "--handlers", "bus_handlers:handlers")
    bus.start_api()
    for proc in (tracker, child):
        ready = wait_for(lambda p=proc: answers(p, "/readyz"), what=f"{proc.name} to answer")
        wait_for(lambda p=proc: ops(p, "/readyz").status_code == 200, what=f"{proc.name} ready")
        assert ready is not None
        assert ops(proc, "/healthz").json() == {"status": "ok"}
    assert ops(tracker, "/readyz").json() == {"status": "ok", "broker": True, "database": True}
    assert ops(child, "/readyz").json() == {"status": "ok", "broker": True}
    assert httpx.get(f"{bus.api}/healthz", timeout=5).json() == {"status": "ok"}
    api_ready = httpx.get(f"{bus.api}/readyz", timeout=5)
    assert api_ready.json() == {"status": "ok", "broker": True, "database": True}

    ids = [send_task(bus, "echo", payload={"n": n}) for n in range(3)]
    counter = str(bus.workdir / "never.count")
    refused = send_task(bus, "never", payload={"counter": counter})  # failed at once
    parked = send_task(bus, "boom", payload={"why": "metrics"})  # retried twice, then parked
    for task_id in [*ids, refused, parked]:
        wait_for(lambda t=task_id: finished(bus, t), what=f"{task_id} to finish")
    wrong_key = {"X-Relay-API-Key": "wrong"}
    body = {"from": "master", "to": "child", "type": "task", "cmd": "echo"}
    assert httpx.post(f"{bus.api}/api/relay/send", json=body, headers=wrong_key).status_code == 401

    def count(outcome: str) -> float | None:
        return metric(child, "convbus_tasks_total", pool="child", outcome=outcome)

    wait_for(lambda: count("parked") == 1, what="the child to count the parked task")
    assert (count("completed"), count("failed"), count("retried")) == (3, 1, 2)
    assert metric(child, "convbus_tasks_consumed_total", pool="child") == 7
    assert metric(child, "convbus_handler_seconds_count", pool="child") == 7
    assert metric(child, "convbus_callback_seconds_count", pool="child") == 4
    assert metric(child, "convbus_tasks_in_flight", pool="child") == 0

    api = httpx.get(f"{bus.api}/metrics", timeout=5).text
    assert sample(api, "convbus_sends_total", outcome="accepted") == 5
    assert sample(api, "convbus_sends_total", outcome="401") == 1
    assert sample(api, "convbus_callbacks_received_total", outcome="accepted") == 4
    assert sample(api, "convbus_publish_confirm_seconds_count", kind="task") == 5
    assert sample(api, "convbus_publish_confirm_seconds_count", kind="event") == 4

    # 5 sends, 4 callbacks, 7 processing, 2 retries and 1 dead: 19 entries in the log.
    wait_for(lambda: metric(tracker, "convbus_tracker_events_total") == 19, what="19 entries")
    assert (metric(tracker, "convbus_tracker_batch_size_count") or 0) >= 1
    wait_for(
        lambda: metric(tracker, "convbus_queue_consumers", kind="pool", pool="child") == 1,
        what="the tracker to read the pool's queue",
    )
    assert metric(tracker, "convbus_queue_messages", kind="pool", pool="child") == 0
    wait_for(
        lambda: metric(tracker, "convbus_queue_messages", kind="parked", pool="child") == 1,
        what="the tracker to see the parked task",
    )
    assert metric(tracker, "convbus_tracker_lag_events") == 0


def test_readiness_says_what_is_unreachable(bus: Bus) -> None:
    closed = free_port()
    tracker = bus.start_tracker(
        RELAY_DATABASE_URL=f"postgresql://postgres@127.0.0.1:{closed}/nothing"
    )
    child = bus.start_child("child", RELAY_AMQP_URL=f"amqp://guest:guest@127.0.0.1:{closed}/")
    for proc, down in ((tracker, "database"), (child, "broker")):
        answer = wait_for(lambda p=proc: answers(p, "/readyz"), what=f"{proc.name} to answer")
        assert answer is not None
        assert answer.status_code == 503
        body = answer.json()
        assert body["status"] == "error" and body[down] is False and down in body["msg"]
        assert ops(proc, "/healthz").status_code == 200  # alive, only not ready


def test_json_logs_carry_the_task_and_its_conversation(bus: Bus) -> None:
    bus.start_tracker()
    child = bus.start_child(
        "child",
        "--handlers",
        "bus_handlers:handlers",
        RELAY_LOG_FORMAT="json",
        RELAY_RETRY=FAST_RETRY,
    )
    bus.start_api()
    response = send(
        bus, type="task", cmd="boom", payload={"why": "secret-payload-value"}, conversation_id="c-9"
    )
    task_id = response.json()["task_id"]
    wait_for(lambda: finished(bus, task_id), what="the task to fail")
    child.stop()
    records = [json.loads(line) for line in child.output().splitlines() if line.strip()]
    assert all({"ts", "level", "service", "logger", "msg"} <= r.keys() for r in records)
    about = [r for r in records if r.get("task_id") == task_id]
    assert about and all(r["conversation_id"] == "c-9" for r in about)
    assert any("retry at" in r["msg"] for r in about)
    info = [r for r in records if r["level"] == "INFO"]
    assert not any("secret-payload-value" in json.dumps(r) for r in info)


def test_a_taken_ops_port_stops_the_child_with_a_clear_message(bus: Bus) -> None:
    first = bus.start_child("child")
    wait_for(lambda: answers(first, "/healthz"), what="the first child to serve")
    second = bus.start_child("child", RELAY_OPS_PORT=str(first.port))
    assert second.popen.wait(30) != 0
    assert f"RELAY_OPS_PORT {first.port}" in second.output()


def test_the_api_on_a_taken_port_exits_instead_of_hanging(bus: Bus) -> None:
    # Its broker link was connecting when uvicorn gave up: the half-made connection's reconnect
    # loop kept the event loop, and the process, alive for good (shared/amqp.py closes it now).
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        api = bus.start("api", "api", "--port", str(port))
        try:
            code = api.popen.wait(30)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running:\n{api.output()[-3000:]}") from None
    assert code != 0
    assert "address already in use" in api.output()
