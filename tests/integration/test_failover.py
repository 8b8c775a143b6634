"""RELAY_AMQP_URL naming several nodes: a service connects to one that answers, and moves on to
the next when its node goes away."""

from __future__ import annotations

import asyncio
import shutil

import pytest
from yarl import URL

from shared import amqp
from shared.errors import BrokerUnavailable, ConfigError
from shared.settings import BusSettings
from tests.support.servers import PrivateRabbit, port_open

REFUSED = "amqp://guest:guest@127.0.0.1:1/"  # nothing listens on port 1


def settings(urls: str) -> BusSettings:
    return BusSettings(amqp_url=urls, heartbeat=2)


async def test_a_node_that_refuses_is_passed_over(amqp_url: str) -> None:
    connection = await amqp.connect(settings(f"{REFUSED}, {amqp_url}"), "test-failover")
    try:
        assert URL(str(connection.url)).port == URL(amqp_url).port
        channel = await connection.channel()
        await channel.close()
    finally:
        await connection.close()
    with pytest.raises(BrokerUnavailable, match=r"127\.0\.0\.1:1/"):
        await amqp.connect(settings(f"{REFUSED},{REFUSED}"), "test-failover")
    with pytest.raises(ConfigError):
        amqp.amqp_urls(settings(" , "))


@pytest.mark.slow
async def test_a_lost_connection_is_made_again_to_the_next_node(amqp_url: str) -> None:
    """Its node stopped, the connection is made again to the next URL (aio-pika alone would
    try the stopped node again and again)."""
    node = PrivateRabbit.create()
    node.start()
    try:
        connection = await amqp.connect(settings(f"{node.url},{amqp_url}"), "test-failover")
        try:
            assert URL(str(connection.url)).port == node.port
            reconnected = asyncio.Event()
            connection.reconnect_callbacks.add(lambda *_: reconnected.set())
            await asyncio.to_thread(node.stop)
            await asyncio.wait_for(reconnected.wait(), 30)
            assert URL(str(connection.url)).port == URL(amqp_url).port
            channel = await connection.channel()
            await channel.close()
        finally:
            await connection.close()
    finally:
        if port_open(node.port):
            node.stop()
        shutil.rmtree(node.root, ignore_errors=True)
