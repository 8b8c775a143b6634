"""The handler of the bus's own pool `_webhooks`: POST one signed webhook delivery.

Run by `convbus webhooks` (a child of that pool). A delivery is a task: a failed POST is
retried with the pool's backoff (RELAY_RETRY), then parked, and can be replayed; its entries
are in the log under the delivery's id. A 2xx answer delivers it. Redirects are never
followed (a 3xx fails it for good), nor is a URL outside RELAY_WEBHOOK_HOSTS or a listed name
that resolves to a non-public address (shared/webhooks.py).
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from functools import cache
from typing import Any

import aiohttp

from services.child.handlers import Registry
from shared import webhooks
from shared.errors import NeverRetry
from shared.schemas import TaskMessage
from shared.settings import BusSettings

handlers = Registry()
#: Seconds one POST may take.
POST_TIMEOUT = 10.0


@cache
def _settings() -> BusSettings:
    return BusSettings()


@handlers.handler("deliver", timeout_s=POST_TIMEOUT * 2)
async def deliver(task: TaskMessage) -> dict[str, Any]:
    payload = task.payload or {}
    url, delivery = payload.get("url"), payload.get("delivery")
    if not isinstance(url, str) or not isinstance(delivery, dict):
        raise NeverRetry("not a webhook delivery: its payload needs `url` and `delivery`")
    settings = _settings()
    if settings.webhook_secret is None:
        raise NeverRetry("RELAY_WEBHOOK_SECRET is not set: set it, then replay the delivery")
    if (why := webhooks.refusal(url, webhooks.allowed_hosts(settings.webhook_hosts))) is not None:
        raise NeverRetry(f"webhook to {url!r} refused: {why}")
    await _check_resolution(url)
    body = json.dumps(delivery, separators=(",", ":")).encode()
    sent_at = int(time.time())
    headers = {
        "Content-Type": "application/json",
        webhooks.DELIVERY_HEADER: task.task_id,
        webhooks.TIMESTAMP_HEADER: str(sent_at),
        webhooks.SIGNATURE_HEADER: webhooks.signature(
            settings.webhook_secret.get_secret_value(), sent_at, body
        ),
    }
    timeout = aiohttp.ClientTimeout(total=POST_TIMEOUT)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.post(url, data=body, headers=headers, allow_redirects=False) as answer,
    ):
        status = answer.status
    if 200 <= status < 300:
        return {"delivered": status}
    if 300 <= status < 400:
        raise NeverRetry(f"webhook answered {status}: redirects are not followed")
    raise RuntimeError(f"webhook answered {status}")  # retried, then parked


async def _check_resolution(url: str) -> None:
    """A listed host given by name must resolve to public addresses only (DNS can be made to
    point a name anywhere); a listed IP address is taken as meant."""
    host, port = webhooks.host_and_port(url)
    if webhooks.is_literal_ip(host):
        return
    try:
        found = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise RuntimeError(f"webhook host {host} not resolved: {exc}") from exc  # retried
    private = sorted({str(info[4][0]) for info in found if not webhooks.is_public(str(info[4][0]))})
    if private:
        raise NeverRetry(f"webhook host {host} resolves to non-public addresses {private}")
