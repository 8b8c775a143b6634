"""The API's side of the commit notices (services/api/commits.py), over a log held in memory:
a stream gives each entry once and in order, however the log's pages and the live entries
overlap; a client that lags is dropped; a gap in the notices wakes every wait."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from services.api.commits import CommitFeed, StreamFilter, inbox_key
from shared.readmodel import LogFilter
from shared.schemas import CommitNotice
from shared.topology import Topology


class MemoryLog:
    """The Reader's queries the feed uses, over a list of entries."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.page_reads = 0

    def commit(self, **fields: Any) -> dict[str, Any]:
        row = {
            "id": len(self.rows) + 1, "event": "message", "task_id": None, "sender": "m",
            "recipient": "u", "conversation_id": None, "task_conversation_id": None,
            "task_sender": None, "task_outcome_id": None, **fields,
        }  # fmt: skip
        self.rows.append(row)
        return row

    async def last_log_id(self) -> int:
        return len(self.rows)

    async def entries_after(self, after: int, limit: int) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["id"] > after][:limit]

    async def logs(self, f: LogFilter) -> list[dict[str, Any]]:
        self.page_reads += 1
        where = StreamFilter(f.task_id, f.conversation_id, f.sender, f.recipient, f.event)
        assert f.after is not None
        return [r for r in self.rows if r["id"] > f.after and where.matches(r)][: f.limit]


@dataclass
class Delivered:
    body: bytes


def _notice(seq: int, last_id: int, task_ids: list[str] = (), tracker: str = "r_1") -> Delivered:  # type: ignore[assignment]
    body = CommitNotice(tracker=tracker, seq=seq, last_id=last_id, task_ids=list(task_ids))
    return Delivered(body.model_dump_json().encode())


async def _feed(log: MemoryLog, buffer: int = 100) -> CommitFeed:
    return CommitFeed(Topology("ns"), log, buffer)  # type: ignore[arg-type]


async def test_a_stream_gives_each_entry_once_where_the_log_and_the_live_entries_overlap() -> None:
    log = MemoryLog()
    feed = await _feed(log)
    for n in range(3):
        log.commit(text=f"old {n}")
    subscription = await feed.subscribe(StreamFilter(), after=0)
    # Committed after the subscription: both in the log's page and handed out live.
    log.commit(text="new 0")
    log.commit(text="new 1")
    await feed._on_message(_notice(1, 5))  # type: ignore[arg-type]
    entries = subscription.entries(keepalive=0.05)
    got = [await anext(entries) for _ in range(5)]
    assert [r["id"] for r in got] == [1, 2, 3, 4, 5]
    assert await anext(entries) is None  # nothing more: a keep-alive, not a repeat
    await entries.aclose()
    assert feed.streams == 0
    await feed.close()


async def test_a_stream_from_now_gives_only_what_is_committed_after_it() -> None:
    log = MemoryLog()
    feed = await _feed(log)
    log.commit(text="before")
    subscription = await feed.subscribe(StreamFilter(recipient="u"), after=None)
    log.commit(text="to someone else", recipient="v")
    log.commit(text="after")
    await feed._on_message(_notice(1, 3))  # type: ignore[arg-type]
    entries = subscription.entries(keepalive=0.05)
    assert (await anext(entries))["text"] == "after"
    assert log.page_reads == 0  # from now: the log's pages are not read
    await entries.aclose()
    await feed.close()


async def test_a_client_that_lets_its_buffer_fill_is_dropped() -> None:
    log = MemoryLog()
    feed = await _feed(log, buffer=10)
    subscription = await feed.subscribe(StreamFilter(), after=None)
    for n in range(11):
        log.commit(text=str(n))
    await feed._on_message(_notice(1, 11))  # type: ignore[arg-type]
    async with asyncio.timeout(5):
        await subscription.dropped.wait()
    entries = subscription.entries(keepalive=5)
    assert [row async for row in entries] == []  # ends at once: its connection is cut
    assert feed.streams == 0
    await feed.close()


async def test_a_notice_wakes_the_waits_on_its_tasks_and_a_gap_wakes_every_wait() -> None:
    log = MemoryLog()
    feed = await _feed(log)
    reads: dict[str, int] = {"t_a": 0, "t_b": 0, inbox_key("u"): 0}

    def reader(key: str) -> Any:
        async def read() -> int:
            reads[key] += 1
            return reads[key]

        return read

    waits = [
        asyncio.create_task(feed.wait(key, 30, reader(key), lambda n: n >= 2)) for key in reads
    ]
    await _until(lambda: reads == dict.fromkeys(reads, 1))  # each has read once and waits
    await feed._on_message(_notice(1, 1, ["t_a"]))  # type: ignore[arg-type]
    await _until(waits[0].done)
    assert reads == {"t_a": 2, "t_b": 1, inbox_key("u"): 1}
    await feed._on_message(_notice(3, 2))  # type: ignore[arg-type]  # seq 2 was lost
    async with asyncio.timeout(5):
        assert await asyncio.gather(*waits) == [2, 2, 2]
    await feed.close()


async def _until(condition: Any) -> None:
    async with asyncio.timeout(5):
        while not condition():  # noqa: ASYNC110  (yields to the tasks under test)
            await asyncio.sleep(0)
