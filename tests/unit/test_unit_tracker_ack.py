"""The tracker's batch ack: one frame per channel, and no crash on a closed channel."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import cast

from aiormq.abc import DeliveredMessage

from services.tracker.consumer import _ack_batch


@dataclass
class FakeChannel:
    is_closed: bool = False
    acks: list[tuple[int, bool]] = field(default_factory=list)

    async def basic_ack(self, delivery_tag: int, multiple: bool = False) -> None:
        self.acks.append((delivery_tag, multiple))


def _messages(*items: tuple[int, FakeChannel]) -> list[DeliveredMessage]:
    return [
        cast(
            DeliveredMessage,
            SimpleNamespace(
                delivery_tag=tag,
                channel=channel,
                header=SimpleNamespace(properties=SimpleNamespace(message_id="m")),
            ),
        )
        for tag, channel in items
    ]


async def test_one_multiple_ack_per_channel_at_its_last_delivery() -> None:
    old, new = FakeChannel(), FakeChannel()
    await _ack_batch(_messages((1, old), (2, old), (1, new), (2, new)))
    assert old.acks == [(2, True)]
    assert new.acks == [(2, True)]


async def test_deliveries_of_a_closed_channel_are_left_for_redelivery() -> None:
    closed, live = FakeChannel(is_closed=True), FakeChannel()
    await _ack_batch(_messages((7, closed), (8, closed), (3, live)))
    assert closed.acks == []
    assert live.acks == [(3, True)]
