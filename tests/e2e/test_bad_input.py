"""Malformed requests get the contract's error and publish nothing; poison messages are parked."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import httpx
import pytest

from tests.support.api import AUTH, finished, logs, send_task
from tests.support.bus import Bus, wait_for

JSON = {**AUTH, "Content-Type": "application/json"}

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

# (path, headers, raw body, expected status)
BAD_REQUESTS: list[tuple[str, dict[str, str], bytes, int]] = [
    ("/api/relay/send", JSON, b"{not json", 400),
    ("/api/relay/send", JSON, b"", 400),
    ("/api/relay/send", JSON, b"[1, 2]", 422),
    ("/api/relay/send", JSON, b'"just a string"', 422),
    ("/api/relay/send", JSON, b"{}", 400),
    ("/api/relay/send", JSON, b'{"from": "master"}', 400),
    ("/api/relay/send", JSON, b'{"to": "child"}', 400),
    ("/api/relay/send", JSON, b'{"from": 5, "to": "child"}', 422),
    ("/api/relay/send", JSON, b'{"from": "m", "to": "child", "type": "job"}', 422),
    ("/api/relay/send", JSON, b'{"from": "m", "to": "child", "payload": [1]}', 422),
    ("/api/relay/send", JSON, b'{"from": "m", "to": "child", "paylod": {}}', 422),
    ("/api/relay/send", JSON, b'{"from": "m a s", "to": "child"}', 422),
    ("/api/relay/send", JSON, b'{"from": "m", "to": "child#"}', 422),
    ("/api/relay/send", JSON, b'{"from": "m", "to": "' + b"c" * 65 + b'"}', 422),
    ("/api/relay/send", JSON, b'{"from":"m","to":"child","type":"task","task_id":"a b"}', 422),
    ("/api/relay/send", JSON, b'{"from":"m","to":"u","text":"hi","task_id":"x1"}', 400),
    ("/api/relay/send", JSON, b"\xff\xfe{}", 400),
    ("/api/relay/send", JSON, b'{"from":"m","to":"c","text":"a\\u0000b"}', 422),
    ("/api/relay/send", JSON, b'{"from":"m","to":"c","payload":{"k\\u0000":1}}', 422),
    (
        "/api/relay/send",
        JSON,
        b'{"from":"m","to":"c","payload":' + b"[" * 5000 + b"]" * 5000 + b"}",
        400,
    ),
    (
        "/api/relay/send",
        JSON,
        b'{"from":"m","to":"c","text":"' + b"x" * (2 * 1024 * 1024) + b'"}',
        413,
    ),
    ("/api/relay/send", {"Content-Type": "application/json"}, b'{"from":"m","to":"c"}', 401),
    ("/api/relay/send", {**JSON, "X-Relay-API-Key": "wrong"}, b'{"from":"m","to":"c"}', 401),
    ("/api/relay/send", {**JSON, "Idempotency-Key": "a b"}, b'{"from":"m","to":"c"}', 400),
    ("/api/relay/send", JSON, b'{"from":"m","to":"child","type":"task","timeout_s":0}', 422),
    ("/api/relay/send", JSON, b'{"from":"m","to":"child","type":"task","timeout_s":-1}', 422),
    ("/api/relay/send", JSON, b'{"from":"m","to":"child","type":"task","timeout_s":"1"}', 422),
    ("/api/relay/send", JSON, b'{"from":"m","to":"child","type":"task","timeout_s":1e9}', 422),
    ("/api/relay/send", JSON, b'{"from":"m","to":"child","type":"task","timeout_s":true}', 422),
    ("/api/relay/send", JSON, b'{"from":"m","to":"u","text":"hi","timeout_s":5}', 422),
    ("/api/relay/send", JSON, b'{"from":"m","to":"child","type":"task","ttl_s":0}', 422),
    ("/api/relay/send", JSON, b'{"from":"m","to":"child","type":"task","ttl_s":"5"}', 422),
    ("/api/relay/send", JSON, b'{"from":"m","to":"child","type":"task","ttl_s":9e9}', 422),
    ("/api/relay/send", JSON, b'{"from":"m","to":"u","text":"hi","ttl_s":5}', 422),
    (
        "/api/relay/send",
        JSON,
        b'{"from":"m","to":"u","text":"hi","deadline":"2099-01-01T00:00:00Z"}',
        422,
    ),
    (
        "/api/relay/send",
        JSON,
        b'{"from":"m","to":"child","type":"task","deadline":"2020-01-01T00:00:00Z"}',
        422,
    ),
    (
        "/api/relay/send",
        JSON,
        b'{"from":"m","to":"child","type":"task","deadline":"2099-01-01T00:00:00Z"}',
        422,
    ),
    (
        "/api/relay/send",
        JSON,
        b'{"from":"m","to":"child","type":"task","deadline":"2099-01-01T00:00:00"}',
        422,
    ),
    (
        "/api/relay/send",
        JSON,
        b'{"from":"m","to":"child","type":"task","deadline":"tomorrow"}',
        422,
    ),
    (
        "/api/relay/send",
        JSON,
        b'{"from":"m","to":"child","type":"task","deadline":4102444800}',
        422,
    ),
    (
        "/api/relay/send",
        JSON,
        b'{"from":"m","to":"child","type":"task","ttl_s":60,"deadline":"2099-01-01T00:00:00Z"}',
        422,
    ),
    ("/api/relay/send", JSON, b'{"from":"m","to":"child","type":"task","delay_s":0}', 422),
    ("/api/relay/send", JSON, b'{"from":"m","to":"child","type":"task","delay_s":-5}', 422),
    ("/api/relay/send", JSON, b'{"from":"m","to":"child","type":"task","delay_s":"5"}', 422),
    ("/api/relay/send", JSON, b'{"from":"m","to":"child","type":"task","delay_s":9e9}', 422),
    ("/api/relay/send", JSON, b'{"from":"m","to":"u","text":"hi","delay_s":5}', 422),
    ("/api/relay/send", JSON, b'{"from":"m","to":"c","type":"task","delay_s":5,"ttl_s":5}', 422),
    ("/api/relay/send", JSON, b'{"from":"m","to":"c","type":"task","delay_s":9,"ttl_s":5}', 422),
    (
        "/api/relay/send",
        JSON,
        b'{"from":"m","to":"u","text":"hi","not_before":"2099-01-01T00:00:00Z"}',
        422,
    ),
    (
        "/api/relay/send",
        JSON,
        b'{"from":"m","to":"child","type":"task","not_before":"2099-01-01T00:00:00Z"}',
        422,
    ),
    (
        "/api/relay/send",
        JSON,
        b'{"from":"m","to":"child","type":"task","not_before":"soon"}',
        422,
    ),
    (
        "/api/relay/send",
        JSON,
        b'{"from":"m","to":"child","type":"task","not_before":"2099-01-01T00:00:00Z","delay_s":5}',
        422,
    ),
    ("/api/relay/send", JSON, b'{"from":"m","to":"child","type":"task","priority":"urgent"}', 422),
    ("/api/relay/send", JSON, b'{"from":"m","to":"child","type":"task","priority":1}', 422),
    ("/api/relay/send", JSON, b'{"from":"m","to":"u","text":"hi","priority":"high"}', 422),
    (
        "/api/relay/send",
        JSON,
        b'{"from":"m","to":"u","text":"hi","notify":{"url":"http://h/"}}',
        422,
    ),
    (
        "/api/relay/send",
        JSON,
        b'{"from":"m","to":"c","type":"task","notify":{"url":"ftp://h/"}}',
        422,
    ),
    (
        "/api/relay/send",
        JSON,
        b'{"from":"m","to":"c","type":"task","notify":{"url":"http://h/"}}',
        422,
    ),
    ("/api/relay/send", JSON, b'{"from":"m","to":"c","type":"task","notify":"http://h/"}', 422),
    (
        "/api/relay/send",
        JSON,
        b'{"from":"m","to":"c","type":"task","notify":{"url":"http://h/","events":["done"]}}',
        422,
    ),
    (
        "/api/relay/send",
        JSON,
        b'{"from":"m","to":"c","type":"task","notify":{"url":"http://h/","events":[]}}',
        422,
    ),
    ("/api/relay/send", JSON, b'{"from":"m","to":"_webhooks","type":"task","cmd":"x"}', 422),
    ("/api/relay/tasks/t_x/progress", JSON, b'{"progress": 1.5}', 422),
    ("/api/relay/tasks/t_x/progress", JSON, b'{"progress": -0.1}', 422),
    ("/api/relay/tasks/t_x/progress", JSON, b'{"progress": "half"}', 422),
    ("/api/relay/tasks/t_x/progress", JSON, b'{"note": "a\\u0000b"}', 422),
    ("/api/relay/tasks/t_x/progress", JSON, b'{"note": "' + b"n" * 1001 + b'"}', 422),
    ("/api/relay/tasks/t_x/progress", JSON, b'{"progres": 0.5}', 422),
    ("/api/relay/tasks/t_x/progress", JSON, b'{"progress": 0.5}', 404),
    ("/api/relay/tasks/t_x/progress", {"Content-Type": "application/json"}, b"{}", 401),
    ("/api/relay/callback", JSON, b"{}", 400),
    ("/api/relay/callback", JSON, b'{"task_id": 7}', 422),
    ("/api/relay/callback", JSON, b'{"task_id": "t_x", "status": "great"}', 422),
    ("/api/relay/callback", {"Content-Type": "application/json"}, b'{"task_id": "t_x"}', 401),
    ("/api/relay/ack", JSON, b'{"ack_by": "master"}', 400),
]

#: Reads with a bad parameter: (path, query, headers, expected status); the key is added.
BAD_READS: list[tuple[str, dict[str, str], dict[str, str], int]] = [
    ("/api/relay/task-status/t_x", {"wait": "-1"}, {}, 400),
    ("/api/relay/task-status/t_x", {"wait": "soon"}, {}, 400),
    ("/api/relay/task-status/t_x", {"wait": "nan"}, {}, 400),
    ("/api/relay/task-status/t_x", {"wait": "inf"}, {}, 400),
    ("/api/relay/task-status/t_x", {"wait": "3601"}, {}, 400),
    ("/api/relay/tasks/t_x", {"wait": "1e9"}, {}, 400),
    ("/api/relay/tasks/t_x", {"wait": "-0.5"}, {}, 400),
    ("/api/relay/stream", {"after": "-1"}, {}, 400),
    ("/api/relay/stream", {"after": "x"}, {}, 400),
    ("/api/relay/stream", {"after": str(2**64)}, {}, 400),
    ("/api/relay/stream", {"limit": "5"}, {}, 400),
    ("/api/relay/stream", {"task_id": "t" * 129}, {}, 400),
    ("/api/relay/stream", {}, {"Last-Event-ID": "seven"}, 400),
    ("/api/relay/stream", {}, {"Last-Event-ID": "-3"}, 400),
    ("/api/relay/stream", {}, {"X-Relay-API-Key": "wrong"}, 401),
]


def test_bad_requests_get_the_contract_error_and_publish_nothing(bus: Bus) -> None:
    bus.start_tracker()
    bus.start_api()
    with httpx.Client(base_url=bus.api, timeout=10) as client:
        for path, headers, body, expected in BAD_REQUESTS:
            response = client.post(path, content=body, headers=headers)
            assert response.status_code == expected, (body[:80], response.text[:300])
            answer = response.json()
            assert answer["status"] == "error" and isinstance(answer["msg"], str), answer
            assert answer["msg"] and "detail" not in answer and "Traceback" not in response.text
        seed_error = client.post(path := "/api/relay/send", content=b"{}", headers=JSON).json()
        assert seed_error["msg"] == "missing from/to", path
        unauthorized = client.post("/api/relay/send", json={}, headers={}).json()
        assert unauthorized == {
            "status": "error",
            "msg": "Unauthorized: Invalid or missing API key",
        }
        for path in ("/nope", "/api/relay/tasks/t_unknown"):
            missing = client.get(path)
            assert missing.status_code == 404 and missing.json()["status"] == "error"
        assert client.get("/api/relay/send").status_code == 405
        for path, query, headers, expected in BAD_READS:
            response = client.get(path, params=query, headers={**AUTH, **headers})
            assert response.status_code == expected, (path, query, headers, response.text[:300])
            answer = response.json()
            assert answer["status"] == "error" and answer["msg"] and "detail" not in answer

        # A marker: once it is in the log, everything sent before it is too; it must be alone.
        marker = client.post(
            "/api/relay/send", json={"from": "m", "to": "u", "text": "marker"}, headers=AUTH
        )
        assert marker.status_code == 200
    entries = wait_for(lambda: logs(bus), what="the marker in the log")
    assert [e.get("text") for e in entries] == ["marker"]


def test_poison_messages_are_parked_and_the_rest_flows(bus: Bus) -> None:
    bus.start_all()
    topo = bus.namespace.topo
    pool_queue = topo.pool_queue("child")
    poison: list[tuple[bytes, dict[str, Any]]] = [
        (b"\x00not json", {}),
        (json.dumps({"task_id": "t_x", "cmd": "echo"}).encode(), {"message_id": "t_x"}),
        (b"[]", {"content_type": "application/json"}),
    ]
    for body, props in poison:
        bus.namespace.publish_raw(pool_queue, body, **props)
        bus.namespace.publish_raw(topo.tracker_queue, body, **props)

    task_id = send_task(bus, "echo", payload={"after": "poison"})
    assert wait_for(lambda: finished(bus, task_id))["task_status"] == "completed"
    wait_for(lambda: bus.namespace.queue_depth(topo.parked_queue(pool_queue)) == 3)
    wait_for(lambda: bus.namespace.queue_depth(topo.parked_queue(topo.tracker_queue)) == 3)
    assert bus.namespace.queue_depth(pool_queue) == 0
    assert bus.namespace.queue_depth(topo.tracker_queue) == 0
    assert all(p.popen.poll() is None for p in bus.procs)


def test_a_namespace_declared_otherwise_is_refused_with_a_clear_message(bus: Bus) -> None:
    """RabbitMQ refuses to redeclare with other arguments; the services say what that means."""
    channel = bus.namespace.channel()
    try:
        channel.exchange_declare(bus.namespace.topo.dead_exchange, "direct", durable=True)
    finally:
        channel.connection.close()
    api = bus.start("api", "api", "--port", str(bus.api_port))
    child = bus.start_child("child")
    assert child.popen.wait(60) != 0
    assert "RabbitMQ refused the topology" in child.output()
    wait_for(lambda: "RabbitMQ refused the topology" in api.output(), what="the API to say why")
    ready = httpx.get(f"{bus.api}/readyz", timeout=5)
    assert ready.status_code == 503 and api.popen.poll() is None


def test_injection_looking_input_is_refused_or_inert(bus: Bus) -> None:
    bus.start_tracker()
    bus.start_api()
    with httpx.Client(base_url=bus.api, timeout=10, headers=AUTH) as client:
        for name in ("master\r\nX-Injected: 1", "a\nb", "master%0d%0a", "x'; DROP TABLE tasks;--"):
            body = {"from": name, "to": "child", "text": "hi"}
            response = client.post("/api/relay/send", json=body)
            assert response.status_code == 422, (name, response.text)
            assert "X-Injected" not in response.headers
        marker = client.post("/api/relay/send", json={"from": "m", "to": "u", "text": "mark"})
        assert marker.status_code == 200
        wait_for(lambda: client.get("/api/relay/logs").json()["logs"], what="the marker")
        for hostile in ("' OR '1'='1", 'x"; DROP TABLE log_entries; --', "%", "_", "*"):
            for field in ("from", "to", "event", "task_id", "conversation_id"):
                answer = client.get("/api/relay/logs", params={field: hostile})
                assert answer.status_code == 200 and answer.json()["logs"] == [], (field, hostile)
            status = client.get(f"/api/relay/task-status/{hostile}")
            assert status.status_code in (404, 400) and status.json()["status"] == "error"
        # The tables are intact: the marker is still there.
        assert [e["text"] for e in client.get("/api/relay/logs").json()["logs"]] == ["mark"]


def test_a_streamed_body_is_cut_off_whatever_it_announces(bus: Bus) -> None:
    bus.start_api()

    def chunks() -> Any:
        yield b'{"from":"m","to":"c","text":"'
        for _ in range(64):
            yield b"x" * 65536  # 4 MiB in all, sent without a Content-Length (chunked)
        yield b'"}'

    # Chunked, so no Content-Length to trust (a lying one is tested on the guard itself).
    response = httpx.post(
        f"{bus.api}/api/relay/send",
        content=chunks(),
        headers={**AUTH, "Content-Type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 413 and response.json()["status"] == "error"


def test_a_client_that_writes_its_whole_body_first_still_reads_the_413(bus: Bus) -> None:
    # Python's urllib (and requests) send the whole body before reading the answer. An answer
    # sent, and the connection closed, with the body still unread makes the kernel reset the
    # connection: the client saw "connection reset", never the 413, until the API read the
    # rest of the body (up to a bound) before answering.
    bus.start_api()
    body = b'{"from":"m","to":"c","text":"' + b"x" * (3 * 1024 * 1024) + b'"}'
    for _ in range(3):
        request = urllib.request.Request(
            f"{bus.api}/api/relay/send",
            data=body,
            headers={**AUTH, "Content-Type": "application/json"},
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=30)
        assert refused.value.code == 413
        assert json.loads(refused.value.read())["msg"] == "request body larger than 1048576 bytes"
