"""The broker restarted and killed under a working bus: 503 while down, then everything resumes."""

from __future__ import annotations

import shutil
import time
from urllib.parse import urlsplit

import httpx
import pika.exceptions
import pytest

from tests.support.api import finished, send, send_task
from tests.support.bus import Bus, wait_for
from tests.support.ledger import assert_exactly_once
from tests.support.servers import PrivateRabbit, one_consumer

pytestmark = pytest.mark.slow


def accepted(bus: Bus) -> str | None:
    """A task id once the API accepts sends again (None while it answers 503)."""
    try:
        response = send(bus, type="task", cmd="echo")
    except httpx.HTTPError:
        return None
    if response.status_code == 503:
        return None
    assert response.status_code == 200, response.text
    task_id: str = response.json()["task_id"]
    return task_id


def outage(bus: Bus, node: PrivateRabbit, *, kill: bool) -> None:
    """Take the broker down; check the API refuses quickly; bring it back."""
    node.kill() if kill else node.stop()
    started = time.monotonic()
    refused = send(bus, type="task", cmd="echo")
    assert refused.status_code == 503 and refused.json()["status"] == "error"
    assert time.monotonic() - started < 8  # within the publish timeout, not hanging
    ready = httpx.get(f"{bus.api}/readyz", timeout=5)
    assert ready.status_code == 503
    node.start()


def test_the_bus_rides_out_a_broker_restart_and_a_crash(
    rabbit_bus: Bus, private_rabbit: PrivateRabbit
) -> None:
    bus = rabbit_bus
    # Retries that outlast the API's way back: a child may reconnect up to aio-pika's 5 s
    # reconnect pause before the API does, and its callbacks get 503 meanwhile (the test's
    # usual two quick retries were spent in a slow CI run, and those tasks were parked).
    retry = '{"default": {"max_retries": 5, "backoff": 1, "factor": 2}}'
    bus.start_all(RELAY_HEARTBEAT="2", RELAY_PUBLISH_TIMEOUT="3", RELAY_RETRY=retry)
    ids = [send_task(bus, "nap", payload={"seconds": 0.3}) for _ in range(20)]

    outage(bus, private_rabbit, kill=False)
    ids.append(wait_for(lambda: accepted(bus), timeout=60, what="sends to be accepted again"))
    ids += [send_task(bus, "nap", payload={"seconds": 0.3}) for _ in range(20)]

    outage(bus, private_rabbit, kill=True)
    ids.append(wait_for(lambda: accepted(bus), timeout=60, what="sends to be accepted again"))
    ids += [send_task(bus, "echo") for _ in range(10)]

    assert_exactly_once(bus.database_url, ids, timeout=120)
    assert all(p.popen.poll() is None for p in bus.procs)  # nobody had to be restarted
    # The tracker consumes again after each reconnect, once: not twice, not on a stale channel.
    private_rabbit.one_consumer(bus.namespace.topo.tracker_queue)


def _consumed_again(bus: Bus, queue: str) -> bool:
    """Whether `queue` is back and consumed: declared, bound, then consumed, in that order, so
    a send after this reaches it (the queue alone back, its binding may not be yet)."""
    channel = bus.namespace.channel()
    try:
        return bool(channel.queue_declare(queue, passive=True).method.consumer_count)
    except pika.exceptions.ChannelClosedByBroker:
        return False
    finally:
        channel.connection.close()


def test_the_tracker_consumes_again_after_its_queue_was_deleted(bus: Bus) -> None:
    """RabbitMQ cancels the consumer of a deleted queue: the tracker declares it again and
    consumes on, without a restart."""
    bus.start_all()
    first = send_task(bus, "echo")
    wait_for(lambda: finished(bus, first), what="the first task to be recorded")

    channel = bus.namespace.channel()
    try:
        channel.queue_delete(bus.namespace.topo.tracker_queue)
    finally:
        channel.connection.close()

    wait_for(
        lambda: _consumed_again(bus, bus.namespace.topo.tracker_queue),
        timeout=30,
        what="the tracker queue again, consumed",
    )
    later = send_task(bus, "echo")
    done = wait_for(lambda: finished(bus, later), timeout=30, what="a later task recorded")
    assert done["task_status"] == "completed"
    assert all(p.popen.poll() is None for p in bus.procs)
    if _local_broker(bus):
        one_consumer(bus.namespace.topo.tracker_queue)


def test_a_child_consumes_again_after_its_pool_queue_was_deleted(bus: Bus) -> None:
    """RabbitMQ cancels the consumers of a deleted pool queue: the child declares the queue and
    its binding again and consumes on, without a restart (else every later send to the pool
    would be answered 200 and reach no queue but the tracker's)."""
    bus.start_all()
    first = send_task(bus, "echo")
    wait_for(lambda: finished(bus, first), what="the first task to be recorded")
    pool_queue = bus.namespace.topo.pool_queue("child")

    channel = bus.namespace.channel()
    try:
        channel.queue_delete(pool_queue)
    finally:
        channel.connection.close()

    wait_for(
        lambda: _consumed_again(bus, pool_queue), timeout=30, what="the pool queue again, consumed"
    )
    later = send_task(bus, "echo")
    done = wait_for(lambda: finished(bus, later), timeout=30, what="a later task completed")
    assert done["task_status"] == "completed"
    assert all(p.popen.poll() is None for p in bus.procs)
    if _local_broker(bus):
        one_consumer(pool_queue)


def _local_broker(bus: Bus) -> bool:
    """Whether rabbitmqctl here reaches the tests' broker (not a container's)."""
    url = urlsplit(bus.namespace.amqp_url)
    return shutil.which("rabbitmqctl") is not None and (url.hostname, url.port) in (
        ("127.0.0.1", 5672),
        ("localhost", 5672),
    )
