"""docs/wire.md is enough: a child written from the page alone, with a plain AMQP client.

The child below uses only the blocking `pika` client, JSON and HTTP, as a program in another
language would: no import from services.child or shared. It builds every name from the
namespace string as the page says; the bus's own Topology is used in assertions only.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime
from functools import partial
from typing import Any

import httpx
import pika

from tests.support.bus import API_KEY, Bus, Namespace, wait_for

POOL = "foreign"
CHILD_ID = "foreign-1"
AUTH = {"X-Relay-API-Key": API_KEY}


# ---------------------------------------------------------------- the child, from the page


def names(ns: str, pool: str) -> dict[str, str]:
    """Every name the page lists, built from RELAY_NAMESPACE and the pool."""
    return {
        "tasks": f"{ns}.tasks",
        "events": f"{ns}.events",
        "dead": f"{ns}.dead",
        "tracker": f"{ns}.tracker",
        "pool": f"{ns}.pool.{pool}",
        "pool_parked": f"{ns}.pool.{pool}.parked",
        "tracker_parked": f"{ns}.tracker.parked",
    }


def work_queue_arguments(ns: str, queue: str) -> dict[str, Any]:
    """The page's argument table for a pool queue (and, plus one, the tracker's)."""
    return {
        "x-queue-type": "quorum",
        "x-dead-letter-exchange": f"{ns}.dead",
        "x-dead-letter-routing-key": f"{queue}.parked",
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
        "x-delivery-limit": 20,
    }


PARKED_ARGUMENTS = {"x-queue-type": "quorum", "x-delivery-limit": 1_000_000}


def declare(channel: Any, ns: str, pool: str) -> str:
    """Declare what the page says a child declares, in its order; the pool queue's name."""
    n = names(ns, pool)
    channel.exchange_declare(n["tasks"], exchange_type="topic", durable=True)
    channel.exchange_declare(n["events"], exchange_type="topic", durable=True)
    channel.exchange_declare(n["dead"], exchange_type="topic", durable=True)
    channel.queue_declare(n["pool_parked"], durable=True, arguments=PARKED_ARGUMENTS)
    channel.queue_bind(n["pool_parked"], n["dead"], routing_key=n["pool_parked"])
    channel.queue_declare(n["pool"], durable=True, arguments=work_queue_arguments(ns, n["pool"]))
    channel.queue_bind(n["pool"], n["tasks"], routing_key=pool)
    return n["pool"]


def declare_tracker_queue(channel: Any, ns: str) -> None:
    """The tracker's queue, with the page's arguments (optional for a child)."""
    n = names(ns, POOL)
    channel.queue_declare(n["tracker_parked"], durable=True, arguments=PARKED_ARGUMENTS)
    channel.queue_bind(n["tracker_parked"], n["dead"], routing_key=n["tracker_parked"])
    args = {**work_queue_arguments(ns, n["tracker"]), "x-single-active-consumer": True}
    channel.queue_declare(n["tracker"], durable=True, arguments=args)
    channel.queue_bind(n["tracker"], n["dead"], routing_key=f"{ns}.pool.#")


def publish_processing(channel: Any, ns: str, task: dict[str, Any], attempt: int) -> None:
    event_id = "e_" + uuid.uuid4().hex
    event = {
        "event_id": event_id,
        "event": "processing",
        "ts": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "task_id": task["task_id"],
        "conversation_id": task.get("conversation_id"),
        "child_id": CHILD_ID,
        "attempt": attempt,
    }
    channel.basic_publish(
        f"{ns}.events",
        "processing",
        json.dumps({k: v for k, v in event.items() if v is not None}).encode(),
        pika.BasicProperties(
            content_type="application/json",
            delivery_mode=2,
            message_id=event_id,
            type="event",
        ),
        mandatory=True,
    )


def call_back(api_base: str, body: dict[str, Any]) -> httpx.Response:
    """POST the outcome: 3 attempts, 1 s then 2 s apart, while the answer may change."""
    url = api_base.rstrip("/") + "/api/relay/callback"
    response: httpx.Response | None = None
    for delay in (0.0, 1.0, 2.0):
        time.sleep(delay)
        try:
            response = httpx.post(url, json=body, headers=AUTH, timeout=10)
        except httpx.HTTPError:
            continue
        if response.status_code < 500 and response.status_code not in (408, 429):
            return response
    assert response is not None, "the API never answered"
    return response


def handle(task: dict[str, Any]) -> dict[str, Any]:
    return {"by": "foreign", "cmd": task.get("cmd"), "n": (task.get("payload") or {}).get("n")}


def serve(channel: Any, ns: str, api_base: str, queue: str, want: int) -> list[dict[str, Any]]:
    """Take `want` tasks off the pool queue and finish them; what each delivery looked like."""
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + 30
    while len(seen) < want:
        assert time.monotonic() < deadline, f"only {len(seen)} of {want} tasks arrived"
        method, props, body = channel.basic_get(queue, auto_ack=False)
        if method is None:
            time.sleep(0.05)
            continue
        try:
            task = json.loads(body)
            task_id = task["task_id"]
        except (ValueError, KeyError):
            channel.basic_reject(method.delivery_tag, requeue=False)  # poison: parked
            continue
        attempt = (props.headers or {}).get("x-attempt", 1)
        publish_processing(channel, ns, task, attempt)
        answer = call_back(
            api_base,
            {"task_id": task_id, "child_id": CHILD_ID, "status": "done", "result": handle(task)},
        )
        if answer.is_success:
            channel.basic_ack(method.delivery_tag)
        elif answer.status_code == 404:
            channel.basic_reject(method.delivery_tag, requeue=False)
        else:
            channel.basic_nack(method.delivery_tag, requeue=True)
        seen.append({"task": task, "props": props, "answer": answer})
    return seen


# ---------------------------------------------------------------- the tests


def _get(bus: Bus, path: str, **params: Any) -> dict[str, Any]:
    headers = {"X-Relay-API-Key": API_KEY}
    response = httpx.get(f"{bus.api}/api/relay/{path}", params=params, headers=headers, timeout=5)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _completed(bus: Bus, task_id: str) -> dict[str, Any] | None:
    record = _get(bus, f"tasks/{task_id}")
    return record if record["task_status"] == "completed" else None


def _log_of(bus: Bus, task_id: str, n: int) -> list[dict[str, Any]] | None:
    entries: list[dict[str, Any]] = _get(bus, "logs", task_id=task_id)["logs"]
    return entries if len(entries) >= n else None


def test_a_child_written_from_the_page_joins_a_pool(bus: Bus) -> None:
    ns = bus.namespace.name
    bus.namespace.pools.add(POOL)
    bus.start_tracker()
    bus.start_api()

    connection = pika.BlockingConnection(pika.URLParameters(bus.namespace.amqp_url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.basic_qos(prefetch_count=1)
        queue = declare(channel, ns, POOL)  # before the API declares the pool (first send)
        declare_tracker_queue(channel, ns)

        ids = []
        for n in range(3):
            response = httpx.post(
                f"{bus.api}/api/relay/send",
                json={
                    "from": "master",
                    "to": POOL,
                    "type": "task",
                    "cmd": "foreign_work",
                    "payload": {"n": n},
                    "conversation_id": "conv-foreign",
                },
                headers=AUTH,
                timeout=10,
            )
            assert response.status_code == 200, response.text  # the API's declare matched ours
            ids.append(response.json()["task_id"])
        assert declare(channel, ns, POOL) == queue  # and ours matches the API's, after it

        seen = serve(channel, ns, bus.api, queue, want=3)
    finally:
        connection.close()

    topo = bus.namespace.topo
    assert queue == topo.pool_queue(POOL)
    assert work_queue_arguments(ns, queue) == topo.pool_queue_arguments(POOL)
    assert [s["task"]["task_id"] for s in seen] == ids  # one pool queue: first in, first out
    for delivery in seen:
        task, props = delivery["task"], delivery["props"]
        assert props.content_type == "application/json" and props.delivery_mode == 2
        assert props.message_id == task["task_id"] and props.type == "task"
        assert props.headers["x-attempt"] == 1  # (the quorum queue adds x-delivery-count)
        assert {"from", "to", "type", "cmd", "payload", "task_id", "created_at"} <= task.keys()
        assert task["to"] == POOL and task["type"] == "task" and task["created_at"].endswith("Z")
        assert delivery["answer"].json() == {"status": "ok"}

    for n, task_id in enumerate(ids):
        done = wait_for(partial(_completed, bus, task_id), what=f"task {task_id} to complete")
        assert done["child_id"] == CHILD_ID and done["attempts"] == 1
        assert done["result"] == {"by": "foreign", "cmd": "foreign_work", "n": n}
        assert _get(bus, f"task-status/{task_id}")["task_status"] == "completed"
        entries = wait_for(partial(_log_of, bus, task_id, 3), what=f"the log of {task_id}")
        assert [e["event"] for e in entries] == ["send", "processing", "callback"]
        assert entries[1]["child_id"] == CHILD_ID and entries[1]["attempt"] == 1
        assert entries[1]["conversation_id"] == "conv-foreign"

    assert bus.namespace.queue_depth(topo.pool_queue(POOL)) == 0
    assert bus.namespace.queue_depth(topo.parked_queue(topo.pool_queue(POOL))) == 0
    assert bus.namespace.queue_depth(topo.parked_queue(topo.tracker_queue)) == 0


def test_rejecting_without_requeue_parks_the_message(namespace: Namespace) -> None:
    """From an empty broker: the page's declarations alone route a poison message to parking."""
    ns = namespace.name
    namespace.pools.add(POOL)
    connection = pika.BlockingConnection(pika.URLParameters(namespace.amqp_url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        queue = declare(channel, ns, POOL)
        channel.basic_publish(
            f"{ns}.tasks",
            POOL,
            b"not json",
            pika.BasicProperties(delivery_mode=2, message_id="poison"),
            mandatory=True,
        )

        def delivery() -> Any:
            method, _, _ = channel.basic_get(queue, auto_ack=False)
            return method

        method = wait_for(delivery, what="the poison message")
        channel.basic_reject(method.delivery_tag, requeue=False)
    finally:
        connection.close()

    parked = namespace.topo.parked_queue(namespace.topo.pool_queue(POOL))
    wait_for(lambda: namespace.queue_depth(parked) == 1, what="the message to be parked")
    assert namespace.queue_depth(queue) == 0


def test_a_child_written_from_the_page_asks_a_question(bus: Bus) -> None:
    """docs/wire.md, "Asking for input": POST …/ask with the task as received, then ack; the
    answer brings the task back with `inputs`, and the child finishes it."""
    ns = bus.namespace.name
    bus.namespace.pools.add(POOL)
    bus.start_tracker()
    bus.start_api()
    connection = pika.BlockingConnection(pika.URLParameters(bus.namespace.amqp_url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        queue = declare(channel, ns, POOL)
        sent = httpx.post(
            f"{bus.api}/api/relay/send",
            json={"from": "master", "to": POOL, "type": "task", "cmd": "plan"},
            headers=AUTH,
            timeout=10,
        )
        task_id = sent.json()["task_id"]

        def delivery() -> Any:
            method, props, body = channel.basic_get(queue, auto_ack=False)
            return (method, props, json.loads(body)) if method is not None else None

        method, props, task = wait_for(delivery, what="the task")
        assert "inputs" not in task
        ask = f"{bus.api}/api/relay/tasks/{task_id}/ask"
        body = {"question": "Which city?", "task": task, "child_id": CHILD_ID, "attempt": 1}
        # The task was recorded by the tracker before it may ask (409 until then: retry).
        asked = wait_for(
            lambda: (
                (r := httpx.post(ask, json=body, headers=AUTH, timeout=10)).status_code != 409 and r
            ),
            what="the question to be taken",
        )
        assert asked.status_code == 200, asked.text
        # A task that asked its last round already (at most 100: docs/wire.md) asks no more
        # (the schema fuzzer's 500).
        rounds = [
            {
                "round": n,
                "question": "?",
                "to": "master",
                "asked_at": task["created_at"],
                "answered_by": "master",
                "answered_at": task["created_at"],
            }
            for n in range(1, 101)
        ]
        too_many = {**body, "task": {**task, "inputs": rounds}}
        refused = httpx.post(ask, json=too_many, headers=AUTH, timeout=10)
        assert refused.status_code == 409, refused.text
        assert "100 questions already" in refused.json()["msg"]
        channel.basic_ack(method.delivery_tag)  # the task waits on the bus now

        def asking() -> Any:
            return _get(bus, f"tasks/{task_id}").get("asking")

        assert wait_for(asking, what="the question")["to"] == "master"
        answered = httpx.post(
            f"{bus.api}/api/relay/tasks/{task_id}/input",
            json={"answer": "Lisbon"},
            headers=AUTH,
            timeout=10,
        )
        assert answered.status_code == 200, answered.text
        method, props, again = wait_for(delivery, what="the task, answered")
        assert props.headers["x-attempt"] == 1
        assert again["task_id"] == task_id and len(again["inputs"]) == 1
        inputs = again["inputs"][0]
        assert (inputs["round"], inputs["question"], inputs["answer"]) == (
            1,
            "Which city?",
            "Lisbon",
        )
        assert inputs["to"] == "master" and inputs["answered_at"].endswith("Z")
        done = call_back(
            bus.api, {"task_id": task_id, "child_id": CHILD_ID, "result": {"city": "Lisbon"}}
        )
        assert done.status_code == 200, done.text
        channel.basic_ack(method.delivery_tag)
    finally:
        connection.close()
    record = wait_for(partial(_completed, bus, task_id), what="the task to complete")
    assert record["result"] == {"city": "Lisbon"}
