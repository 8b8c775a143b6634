"""Webhooks as pure rules: which URLs a send may name, the signature a receiver checks, which
changes of state call for a delivery, and a listed name that resolves to a private address."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from services.child.webhooks import _check_resolution
from services.tracker.lifecycle import Entry, TaskRow
from services.tracker.webhooks import delivery_for, delivery_id
from shared import webhooks
from shared.errors import NeverRetry
from shared.schemas import Event

T0 = datetime(2026, 12, 4, tzinfo=UTC)
HOSTS = webhooks.allowed_hosts(" hooks.example.com , 10.0.0.5:8443,")


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://hooks.example.com/a?b=1", True),
        ("http://HOOKS.example.com:80/a", True),
        ("https://10.0.0.5:8443/x", True),
        ("https://10.0.0.5/x", False),  # listed with a port: only that port
        ("https://evil.example.com/", False),
        ("https://hooks.example.com.evil.net/", False),
        ("http://169.254.169.254/latest/meta-data", False),
        ("ftp://hooks.example.com/", False),
        ("https:///nohost", False),
    ],
)
def test_a_webhook_goes_only_to_a_listed_host(url: str, allowed: bool) -> None:
    assert (webhooks.refusal(url, HOSTS) is None) == allowed, webhooks.refusal(url, HOSTS)


def test_no_host_listed_means_webhooks_are_off() -> None:
    assert "off" in (webhooks.refusal("https://hooks.example.com/", set()) or "")


def test_a_receiver_verifies_the_signature_and_refuses_a_stale_one() -> None:
    body, now = b'{"task_id":"t"}', time.time()
    signed = webhooks.signature("s3cret", int(now), body)
    assert webhooks.verify("s3cret", str(int(now)), body, signed, now=now)
    assert not webhooks.verify("other", str(int(now)), body, signed, now=now)
    assert not webhooks.verify("s3cret", str(int(now)), body + b" ", signed, now=now)
    assert not webhooks.verify("s3cret", str(int(now)), body, signed, now=now + 301)
    assert not webhooks.verify("s3cret", "soon", body, signed, now=now)


def _row(state: str, events: list[str] | None = None) -> TaskRow:
    notify = {"url": "https://hooks.example.com/", "events": events} if events else None
    return TaskRow(task_id="t1", state=state, created_at=T0, updated_at=T0, notify=notify)


def _entry(event: str) -> Entry:
    return Entry.from_event(
        Event.model_validate({"event_id": f"e-{event}", "event": event, "task_id": "t1", "ts": T0})
    )


def test_a_delivery_for_each_change_into_a_named_state_only() -> None:
    named = ["processing", "completed"]
    into_processing = delivery_for(_row("pending", named), _row("processing", named),
                                   _entry("processing"), 5)  # fmt: skip
    assert into_processing is not None and into_processing.task_id == delivery_id("t1", 5)
    assert into_processing.payload is not None
    assert into_processing.payload["delivery"]["task_status"] == "processing"
    assert into_processing.payload["delivery"]["entry"]["id"] == 5
    # Not a change of state, not a named state, no notify: nothing.
    assert delivery_for(_row("processing", named), _row("processing", named),
                        _entry("progress"), 6) is None  # fmt: skip
    assert delivery_for(_row("processing", named), _row("retrying", named),
                        _entry("retry"), 7) is None  # fmt: skip
    assert delivery_for(_row("processing"), _row("completed"), _entry("callback"), 8) is None
    # The same entry, recorded again: the same delivery (a second copy runs once).
    assert delivery_id("t1", 5) == delivery_id("t1", 5) != delivery_id("t1", 6)


def test_an_ipv6_address_carrying_a_private_ipv4_one_is_not_public() -> None:
    for address in ("::ffff:127.0.0.1", "64:ff9b::a00:1", "2002:a00:1::1", "fe80::1%eth0"):
        assert not webhooks.is_public(address), address
    assert webhooks.is_public("64:ff9b::808:808") and webhooks.is_public("8.8.8.8")


async def test_a_listed_name_that_resolves_to_a_private_address_is_refused() -> None:
    with pytest.raises(NeverRetry, match="non-public"):
        await _check_resolution("http://localhost:9/hook")
    await _check_resolution("http://127.0.0.1:9/hook")  # an address listed as such: as meant
