"""The tracker's batch ack: one frame per channel, and no crash on a closed channel."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

from aio_pika.abc import AbstractIncomingMessage
from aiormq.exceptions import ChannelInvalidStateError

from services.tracker.consumer import _ack_batch


@dataclass
class FakeMessage:
    tag: int
    chan: object | None
    acks: list[tuple[int, bool]] = field(default_factory=list)
    message_id: str = "m"

    @property
    def channel(self) -> object:
        if self.chan is None:
            raise ChannelInvalidStateError
        return self.chan

    async def ack(self, multiple: bool = False) -> None:
        self.acks.append((self.tag, multiple))


def _messages(*items: FakeMessage) -> list[AbstractIncomingMessage]:
    return [cast(AbstractIncomingMessage, item) for item in items]


async def test_one_multiple_ack_per_channel_at_its_last_delivery() -> None:
    old, new = object(), object()
    batch = [FakeMessage(1, old), FakeMessage(2, old), FakeMessage(1, new), FakeMessage(2, new)]
    await _ack_batch(_messages(*batch))
    assert [m.acks for m in batch] == [[], [(2, True)], [], [(2, True)]]


async def test_deliveries_of_a_closed_channel_are_left_for_redelivery() -> None:
    live: Any = object()
    batch = [FakeMessage(7, None), FakeMessage(8, None), FakeMessage(3, live)]
    await _ack_batch(_messages(*batch))  # no ChannelInvalidStateError
    assert [m.acks for m in batch] == [[], [], [(3, True)]]
