"""A send RabbitMQ refuses, or does not confirm: 503, and what became of the task.

A refusal (a queue turned the task away) leaves no task: the copy that reached the tracker's
queue is withdrawn. A confirm withheld (the broker paused mid-publish) is a 503 whose task may
still land: a retry under the same key returns that task, and it runs once.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from tests.support.api import AUTH, logs, send, send_task
from tests.support.bus import Bus, wait_for
from tests.support.ledger import assert_exactly_once
from tests.support.ops import metric
from tests.support.servers import PrivateRabbit


@contextmanager
def queue_policy(name: str, queue: str, definition: dict[str, Any]) -> Iterator[None]:
    """An operator's policy on one queue of the shared broker, for the test's duration."""
    subprocess.run(
        ["rabbitmqctl", "set_policy", "--apply-to", "queues", "--priority", "10",
         name, f"^{re.escape(queue)}$", json.dumps(definition)],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    try:
        yield
    finally:
        subprocess.run(
            ["rabbitmqctl", "clear_policy", name], check=False, capture_output=True, timeout=30
        )


def recorded(bus: Bus, task_id: str) -> bool:
    """Whether the tracker has recorded the task's send (it has read its queue that far)."""
    return any(e["event"] == "send" for e in logs(bus, task_id=task_id))


def task_answer(bus: Bus, task_id: str) -> int:
    url = f"{bus.api}/api/relay/tasks/{task_id}"
    return httpx.get(url, headers=AUTH, timeout=5).status_code


# SQLite only: tests/integration/test_store.py writes withdrawals to both databases.
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_send_its_pool_refuses_is_a_503_and_leaves_no_task(bus: Bus) -> None:
    """A pool capped by a length limit (`reject-publish`): RabbitMQ nacks the task, though the
    tracker's queue took its copy. The client gets 503, the tracker keeps nothing of it, and
    the same task_id sent again once there is room runs once."""
    bus.start_tracker()
    bus.start_api()
    pool = "capped"
    bus.namespace.pools.add(pool)
    queue = bus.namespace.topo.pool_queue(pool)
    body = {"type": "task", "cmd": "echo", "to": pool}
    assert send(bus, **body, task_id="capped-0").status_code == 200  # the API declares the pool
    accepted, refused = ["capped-0"], None
    cap = {"max-length": 1, "overflow": "reject-publish"}
    with queue_policy(f"{bus.namespace.name}-cap", queue, cap):
        for n in range(1, 60):  # the policy applies within moments; no child takes the tasks
            answer = send(bus, **body, task_id=f"capped-{n}")
            if answer.status_code == 503:
                refused = f"capped-{n}"
                break
            assert answer.status_code == 200, answer.text
            accepted.append(f"capped-{n}")
            wait_for(lambda: bus.namespace.queue_depth(queue) >= len(accepted), what="the queue")
        assert refused is not None, "RabbitMQ never refused a task"
        assert answer.json() == {
            "status": "error",
            "msg": "message bus refused the message, nothing was sent",
        }
        # The tracker's queue is read in order: once a later send is recorded, so is the
        # refused task's withdrawal.
        marker = send(bus, type="task", cmd="echo", task_id="marker").json()["task_id"]
        wait_for(lambda: recorded(bus, marker), what="the marker's send to be recorded")
        assert task_answer(bus, refused) == 404
        assert logs(bus, task_id=refused) == []
        assert all(recorded(bus, t) for t in accepted)

        bus.namespace.purge(queue)  # room again (the accepted tasks are sent again below)
        again = send(bus, **body, task_id=refused)
        assert again.status_code == 200, again.text
    bus.start_child(pool)
    for task_id in accepted:
        assert send(bus, **body, task_id=task_id).status_code == 200  # known: not published
    assert_exactly_once(bus.database_url, [refused])


@pytest.mark.slow
def test_a_confirm_withheld_is_a_503_and_the_keyed_retry_runs_the_task_once(
    rabbit_bus: Bus, private_rabbit: PrivateRabbit
) -> None:
    """The broker stops answering mid-publish (SIGSTOP): 503 within RELAY_PUBLISH_TIMEOUT. The
    task lands once the broker resumes; the client's retry under its Idempotency-Key returns
    it, and its handler runs once though two copies of it reach the pool."""
    bus = rabbit_bus
    bus.start_all(RELAY_PUBLISH_TIMEOUT="2", RELAY_HEARTBEAT="30")
    warm_up = send(bus, type="task", cmd="echo")  # the API declares the pool: the pause below
    assert_exactly_once(bus.database_url, [warm_up.json()["task_id"]])  # catches the publish
    counter = bus.workdir / "runs.count"
    body = {"from": "master", "to": "child", "type": "task", "cmd": "flaky",
            "payload": {"counter": str(counter)}}  # fmt: skip
    headers = {**AUTH, "Idempotency-Key": "withheld-1"}
    url = f"{bus.api}/api/relay/send"
    pid = int((private_rabbit.root / "pid").read_text().strip())
    os.kill(pid, signal.SIGSTOP)
    try:
        refused = httpx.post(url, json=body, headers=headers, timeout=10)
    finally:
        os.kill(pid, signal.SIGCONT)
    assert refused.status_code == 503, refused.text
    assert "did not confirm" in refused.json()["msg"]

    def retried() -> str | None:
        answer = httpx.post(url, json=body, headers=headers, timeout=10)
        return str(answer.json()["task_id"]) if answer.status_code == 200 else None

    task_id = wait_for(retried, timeout=60, interval=0.5, what="the retry to be accepted")
    assert_exactly_once(bus.database_url, [task_id])
    child = next(p for p in bus.procs if p.name.startswith("child"))
    # The warm-up, the copy that landed after the pause, the retry's: one run of the handler.
    wait_for(lambda: metric(child, "convbus_tasks_consumed_total", pool="child") == 3,
             what="both copies of the task to reach the child")  # fmt: skip
    assert counter.read_text() == "1"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_send_no_queue_takes_is_a_503(bus: Bus) -> None:
    """Published `mandatory`: a message or task that would reach no queue (an operator deleted
    them) comes back, and the client gets 503, not a 200 for something nobody will read."""
    bus.start_api()  # no tracker: nothing declares its queue again
    topo = bus.namespace.topo
    bus.namespace.pools.add("gone")
    assert send(bus, type="task", cmd="echo", to="gone").status_code == 200  # declares the pool
    channel = bus.namespace.channel()
    try:
        channel.queue_delete(topo.tracker_queue)
        channel.queue_delete(topo.pool_queue("gone"))
    finally:
        channel.connection.close()
    for body in ({"type": "message", "text": "hello"}, {"type": "task", "to": "gone"}):
        answer = send(bus, **body)
        assert answer.status_code == 503, answer.text
        assert answer.json()["msg"] == "message bus refused the message, nothing was sent"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_batched_callback_no_queue_takes_is_answered_503_alone(bus: Bus) -> None:
    """In a batch, a callback whose completion RabbitMQ returns (the tracker's queue deleted)
    is answered 503, as /callback would answer it, not 200 with the rest."""
    bus.start_api()  # no tracker: nothing declares its queue again
    first, second = send_task(bus), send_task(bus)
    channel = bus.namespace.channel()
    try:
        channel.queue_delete(bus.namespace.topo.tracker_queue)
    finally:
        channel.connection.close()
    batch = {"callbacks": [{"callback": {"task_id": t}} for t in (first, "t_unknown", second)]}
    url = f"{bus.api}/api/relay/callbacks"
    answer = httpx.post(url, json=batch, headers=AUTH, timeout=10)
    assert answer.status_code == 200, answer.text
    refused = {
        "code": 503,
        "status": "error",
        "msg": "message bus refused the message, nothing was sent",
    }
    not_found = {"code": 404, "status": "error", "msg": "task not found"}
    assert answer.json()["results"] == [refused, not_found, refused]
