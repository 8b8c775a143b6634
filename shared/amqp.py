"""Connecting to RabbitMQ and publishing durably: persistent, confirmed, mandatory."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractRobustConnection
from aio_pika.connection import make_url
from pydantic import BaseModel
from yarl import URL

from shared.backoff import Backoff, retry
from shared.errors import BrokerUnavailable, ConfigError, PublishRefused
from shared.settings import BusSettings

log = logging.getLogger(__name__)

#: Header carrying the attempt number of a task (1 for the first delivery).
ATTEMPT_HEADER = "x-attempt"
#: Header of a retried task: the error of the attempt before.
LAST_ERROR_HEADER = "x-last-error"
#: Headers of a parked task: why, and the id of the parking (an event id).
DEAD_REASON_HEADER = "x-dead-reason"
PARKED_ID_HEADER = "x-parked-id"
#: Header of a replayed task: how many times it was replayed.
REPLAYS_HEADER = "x-replays"
#: Header of a scheduled task that may have a twin (its hop was delivered again: the first
#: delivery's copy may be waiting too): 1 while it waits, 2 once given a head start
#: (services/child/worker.py, Worker._put_off).
MAYBE_COPY_HEADER = "x-maybe-copy"


def header_text(value: object) -> str:
    """A header value as text ("" when absent)."""
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return "" if value is None else str(value)


def newest_death(headers: dict[str, Any]) -> dict[str, Any]:
    """RabbitMQ's newest x-death record of a dead-lettered message ({} when there is none)."""
    deaths = headers.get("x-death")
    if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict):
        return deaths[0]
    return {}


def amqp_urls(settings: BusSettings) -> list[URL]:
    """The broker's URLs (one per node of a cluster, in RELAY_AMQP_URL's order), each with
    this bus's heartbeat unless it sets its own."""
    urls = []
    for text in settings.amqp_url.get_secret_value().split(","):
        if not text.strip():
            continue
        url = URL(text.strip())
        if "heartbeat" not in url.query:
            url = url.update_query(heartbeat=settings.heartbeat)
        urls.append(url)
    if not urls:
        raise ConfigError("RELAY_AMQP_URL: no broker URL")
    return urls


def redact(url: URL) -> str:
    """The URL without its password, for logs."""
    return str(url.with_password("***") if url.password else url)


class FailoverConnection(aio_pika.RobustConnection):
    """A robust connection to one node of a cluster or another: an attempt to connect that
    fails moves on to the next URL at once, so a node that stopped is not waited for."""

    def __init__(self, urls: list[URL], **kwargs: Any) -> None:
        super().__init__(make_url(urls[0]), **kwargs)
        self._urls = [make_url(url) for url in urls]
        self._current = 0

    # aio-pika makes each attempt in this (name-mangled) method of RobustConnection, with
    # `self.url`; tests/integration/test_failover.py fails if a new aio-pika stops calling it.
    async def _RobustConnection__connect_transport(self) -> None:
        for left in reversed(range(len(self._urls))):
            try:
                await super()._RobustConnection__connect_transport()  # type: ignore[misc]
                return
            except Exception as exc:
                if not left:
                    raise  # every node refused: aio-pika waits, then tries again
                failed = self.url
                self._current = (self._current + 1) % len(self._urls)
                self.url = self._urls[self._current]
                log.warning(
                    "RabbitMQ at %s: %r; trying %s",
                    redact(URL(str(failed))), exc, redact(URL(str(self.url))),
                )  # fmt: skip


async def connect(
    settings: BusSettings,
    name: str,
    timeout: float = 10.0,  # noqa: ASYNC109  (the connection's own timeout)
) -> AbstractRobustConnection:
    """A connection that reconnects by itself and restores its channels and declarations; to
    the first of the broker's URLs that answers, then to the others in turn when it is lost."""
    urls = amqp_urls(settings)
    connection = FailoverConnection(urls, client_properties={"connection_name": name})
    try:
        await connection.connect(timeout=timeout)
    except BaseException as exc:
        # Closed, also when cancelled (a service stopping while it connects): its reconnect
        # loop would otherwise live on and keep the process from exiting.
        await connection.close()
        if isinstance(exc, OSError | aiormq.exceptions.AMQPError | TimeoutError):
            where = ", ".join(redact(url) for url in urls)
            raise BrokerUnavailable(f"cannot connect to RabbitMQ at {where}: {exc!r}") from exc
        raise
    return connection


#: Waits between attempts to reach RabbitMQ: 1 s, doubling up to 10 s (with jitter).
RECONNECT = Backoff(first=1.0, factor=2.0, cap=10.0)


async def connect_with_retry(
    settings: BusSettings, name: str, stop: asyncio.Event | None = None
) -> AbstractRobustConnection:
    """Connect, retrying until it works or `stop` is set (then BrokerUnavailable)."""
    return await retry(
        lambda _: connect(settings, name),
        BrokerUnavailable,
        RECONNECT,
        log=log,
        what="RabbitMQ unreachable",
        stop=stop,
    )


@contextlib.contextmanager
def broker_errors(timeout_msg: str) -> Iterator[None]:
    """Translate the AMQP library's errors (and a timeout) into the bus's own."""
    try:
        yield
    except TimeoutError as exc:
        raise BrokerUnavailable(timeout_msg) from exc
    except aiormq.exceptions.DeliveryError as exc:
        raise PublishRefused(f"RabbitMQ refused the message: {exc!r}") from exc
    except (
        aiormq.exceptions.AMQPError,
        aiormq.exceptions.ChannelInvalidStateError,
        ConnectionError,
        OSError,
    ) as exc:
        raise BrokerUnavailable(f"RabbitMQ is unreachable: {exc!r}") from exc


def encode(model: BaseModel) -> bytes:
    """The JSON body of a wire model (aliases, so `from` is spelled as in the contract)."""
    return model.model_dump_json(by_alias=True, exclude_none=True).encode()


async def publish(
    exchange: AbstractExchange,
    routing_key: str,
    body: BaseModel | bytes,
    message_id: str,
    *,
    timeout: float,  # noqa: ASYNC109  (bounds the confirm, as the caller's setting says)
    message_type: str,
    headers: dict[str, Any] | None = None,
) -> None:
    """Publish a persistent JSON message (a wire model, or a body as it came) and wait for
    RabbitMQ's confirm.

    Raises BrokerUnavailable when the broker is unreachable or does not confirm in `timeout`,
    PublishRefused when it returns (unroutable) or nacks the message.
    """
    message = aio_pika.Message(
        body if isinstance(body, bytes) else encode(body),
        content_type="application/json",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=message_id,
        type=message_type,
        headers=headers or {},
    )
    with broker_errors(f"RabbitMQ did not confirm within {timeout:g} s"):
        async with asyncio.timeout(timeout):
            confirmation = await exchange.publish(message, routing_key, mandatory=True)
    if not isinstance(confirmation, aiormq.spec.Basic.Ack):
        raise PublishRefused(f"RabbitMQ did not acknowledge the message: {confirmation!r}")


async def open_publisher_channel(connection: AbstractRobustConnection) -> AbstractChannel:
    """A channel with publisher confirms on, where returned messages raise."""
    return await connection.channel(publisher_confirms=True, on_return_raises=True)
