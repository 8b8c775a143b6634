"""`convbus overview` against a real management API (a private node with the plugin), and without.

Nothing is killed here; the private node is needed because the shared broker runs without the
management plugin (and must stay so).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import uuid
from typing import Any

import aio_pika
import pika
import pytest

from cli.processes import free_port
from shared.topology import Topology, declare_core, declare_delay, declare_pool
from tests.support.bus import Namespace, wait_for
from tests.support.servers import PrivateRabbit, port_open

#: Long enough that nothing leaves the delay queue during the test.
DELAY_MS = 600_000


def run_overview(namespace: Namespace, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("RELAY_", "LYNKER_"))}
    clean.update({"RELAY_NAMESPACE": namespace.name, "RELAY_AMQP_URL": namespace.amqp_url, **env})
    return subprocess.run(
        [sys.executable, "-m", "cli", "overview", *args],
        env=clean,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def _declare(namespace: Namespace, pools: list[str], delays: dict[str, int]) -> None:
    connection = await aio_pika.connect(namespace.amqp_url)
    async with connection:
        channel = await connection.channel()
        declared = await declare_core(channel, namespace.topo)
        for pool in pools:
            await declare_pool(channel, namespace.topo, declared, pool)
        for pool, delay_ms in delays.items():
            await declare_delay(channel, namespace.topo, pool, delay_ms)


def declare(namespace: Namespace, pools: list[str], delays: dict[str, int] | None = None) -> None:
    namespace.pools.update(pools)
    namespace.delays.update((delays or {}).values())
    asyncio.run(_declare(namespace, pools, delays or {}))


def publish_tasks(channel: Any, topo: Topology, pool: str, count: int) -> None:
    channel.confirm_delivery()
    for i in range(count):
        channel.basic_publish(
            topo.tasks_exchange,
            topo.task_routing_key(pool),
            json.dumps({"n": i}).encode(),
            pika.BasicProperties(delivery_mode=2),
            mandatory=True,
        )


def settles_to(expected: dict[str, Any], namespace: Namespace, **env: str) -> None:
    """`convbus overview --json` shows `expected` once RabbitMQ's statistics caught up."""
    last: dict[str, Any] = {}

    def check() -> bool:
        done = run_overview(namespace, "--json", **env)
        last["value"] = json.loads(done.stdout) if done.returncode == 0 else done.stderr
        return bool(last["value"] == expected)

    with contextlib.suppress(AssertionError):
        wait_for(check, timeout=60, interval=0.2, what="the overview's numbers")
    assert last["value"] == expected


@pytest.mark.slow
@pytest.mark.parametrize(
    "private_rabbit", [{"management": True}], ids=["management"], indirect=True
)
def test_overview_counts_what_waits_where(private_rabbit: PrivateRabbit) -> None:
    ns = Namespace(name=f"o{uuid.uuid4().hex[:10]}", amqp_url=private_rabbit.url)
    neighbour = Namespace(name=f"n{uuid.uuid4().hex[:10]}", amqp_url=private_rabbit.url)
    topo = ns.topo
    connection = pika.BlockingConnection(pika.URLParameters(private_rabbit.url))
    try:
        declare(ns, ["child", "other"], {"child": DELAY_MS})
        declare(neighbour, ["child"])
        publish_tasks(connection.channel(), neighbour.topo, "child", 3)
        publish_tasks(connection.channel(), topo, "child", 5)
        ns.publish_raw(topo.parked_queue(topo.pool_queue("child")), b"{}")
        for _ in range(2):
            ns.publish_raw(topo.delay_queue("child", DELAY_MS), b"{}")
        ns.publish_raw(topo.parked_queue(topo.tracker_queue), b"not json")
        # A child holding two deliveries unacked, and a tracker holding one.
        child = connection.channel()
        child.basic_qos(prefetch_count=2)
        child.basic_consume(topo.pool_queue("child"), lambda *_: None, auto_ack=False)
        tracker = connection.channel()
        tracker.basic_qos(prefetch_count=1)
        tracker.basic_consume(topo.tracker_queue, lambda *_: None, auto_ack=False)

        env = {"RELAY_MANAGEMENT_URL": private_rabbit.management_url}
        zero = {"ready": 0, "unacked": 0, "consumers": 0, "parked": 0, "retrying": 0, "high": 0}
        settles_to(
            {
                "namespace": ns.name,
                "vhost": "/",
                "pools": {
                    "child": {
                        "ready": 3,
                        "unacked": 2,
                        "consumers": 1,
                        "parked": 1,
                        "retrying": 2,
                        "high": 0,
                        "delays": [
                            {
                                "queue": topo.delay_queue("child", DELAY_MS),
                                "delay_ms": DELAY_MS,
                                "messages": 2,
                            }
                        ],
                    },
                    "other": {**zero, "delays": []},
                },
                "tracker": {"lag": 5, "ready": 4, "unacked": 1, "consumers": 1, "parked": 1},
                "control": {"messages": 0, "consumers": 0},
            },
            ns,
            **env,
        )

        table = run_overview(ns, **env)
        assert table.returncode == 0, table.stderr
        lines = table.stdout.splitlines()
        assert ["child", "3", "2", "1", "1", "2", "0"] in [line.split() for line in lines]
        assert "tracker: lag 5 (ready 4, unacked 1), consumers 1, parked 1" in lines
        assert "cancels: followed by 0 children, 0 waiting" in lines
        assert neighbour.name not in table.stdout

        # The management URL may leave the credentials to RELAY_AMQP_URL; wrong ones are a 401.
        port = private_rabbit.management_port
        wrong = run_overview(
            ns,
            RELAY_AMQP_URL=private_rabbit.url.replace("guest:guest", "guest:wrong"),
            RELAY_MANAGEMENT_URL=f"http://127.0.0.1:{port}",
        )
        assert wrong.returncode != 0
        assert "refused the login of user 'guest' (401)" in wrong.stderr
        assert "wrong" not in wrong.stderr
    finally:
        connection.close()
        ns.delete()
        neighbour.delete()


@pytest.mark.parametrize("where", ["explicit", "derived"])
def test_without_the_management_api_it_says_what_to_do(namespace: Namespace, where: str) -> None:
    if where == "explicit":
        env = {"RELAY_MANAGEMENT_URL": f"http://127.0.0.1:{free_port()}/"}
    else:
        host = pika.URLParameters(namespace.amqp_url).host
        if host != "127.0.0.1" or port_open(15672):
            pytest.skip("the broker under test has a management API on 15672")
        env = {}
    done = run_overview(namespace, "--json", **env)
    assert done.returncode != 0
    assert done.stdout == ""
    assert "cannot reach RabbitMQ's management API" in done.stderr
    assert "connection refused" in done.stderr
    assert "rabbitmq-plugins enable rabbitmq_management" in done.stderr
    assert "RELAY_MANAGEMENT_URL" in done.stderr
