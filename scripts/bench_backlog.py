"""The backlog cases of `make bench` (`scripts/bench_local.py --catchup N`, `--memory N`).

catch-up: N events wait in the tracker's queue (half task sends, half their `callback` events,
published as the API publishes them) before the tracker starts; measures how fast it drains
them into the database, and its RSS and CPU meanwhile.
memory: N tasks sent through the API by 64 clients with no child to take them, then one child
drains them; the RSS of every process through both phases shows whether a backlog grows any.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import aiohttp
import aiormq
import orjson
import psycopg
from aio_pika.abc import AbstractChannel
from local_bus import BENCH_HANDLERS, POOL, LocalBus  # scripts/, beside this file

from cli.bench import handlers
from cli.processes import BusProcess
from shared import amqp
from shared.contract import API_KEY_HEADER, SEND_PATH
from shared.ids import TaskIds, callback_event_id, derive_secret, utcnow
from shared.schemas import Event, TaskMessage
from shared.topology import Declared, Topology, declare_core

RSS_METRIC = "process_resident_memory_bytes"
CPU_METRIC = "process_cpu_seconds_total"
EVENTS_METRIC = "convbus_tracker_events_total"
SAMPLE_EVERY = 0.5
#: A long case says how far it got this often.
REPORT_EVERY = 10.0
#: Before the tracker's first delivery, its start is looked for this often (resolution).
FAST_POLL = 0.05
#: No progress for this long ends a case with an error (the tracker or a child is stuck).
STALL_LIMIT = 60.0
#: Publishes in flight while filling the tracker's queue (one confirm each).
FILL_WINDOW = 1000
PUBLISH_TIMEOUT = 30.0
#: Quorum queues report a confirmed message in their depth a moment later.
DEPTH_SETTLE = 60.0
#: A pool with no queue: its sends reach the tracker's queue only (bound to the tasks with #).
CATCHUP_POOL = "catchup-nowhere"
CONCURRENCY = 64


def _max_wait(n: int) -> float:
    """The longest any case's wait may take: generous (50 events/s), besides the stall check."""
    return 600.0 + n / 50


# ---------------------------------------------------------------------------------------------
# Reading the processes, the queues and the database


async def read_metrics(http: aiohttp.ClientSession, url: str) -> dict[str, float]:
    """The unlabelled samples of a service's /metrics ({} when it does not answer)."""
    try:
        async with http.get(url) as response:
            if response.status != 200:
                return {}
            text = await response.text()
    except (aiohttp.ClientError, TimeoutError, UnicodeDecodeError):
        return {}
    found: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in (RSS_METRIC, CPU_METRIC, EVENTS_METRIC):
            with contextlib.suppress(ValueError):
                found[name] = float(value.split()[0])
    return found


async def queue_depth(channel: AbstractChannel, name: str) -> tuple[int, int]:
    """(ready messages, consumers) of a queue, by a passive declare: it creates nothing."""
    try:
        queue = await channel.declare_queue(name, passive=True)
    except aiormq.exceptions.ChannelNotFoundEntity as exc:
        raise RuntimeError(f"queue {name!r} does not exist") from exc
    result = queue.declaration_result
    return result.message_count or 0, result.consumer_count or 0


class TaskCounts:
    """Counts the tracker's task rows, on a connection of its own (read-only use)."""

    def __init__(self, database_url: str) -> None:
        self.url = database_url
        self._pg: psycopg.Connection[Any] | None = None
        self._sqlite: sqlite3.Connection | None = None

    def count(self, state: str | None = None) -> int:
        """Tasks in `state` (every task: None)."""
        sql = "SELECT count(*) FROM tasks" + (" WHERE state = %s" if state else "")
        params = (state,) if state else ()
        if self.url.startswith("sqlite:///"):
            if self._sqlite is None:
                # Each count may run on another worker thread (to_thread), never two at once.
                self._sqlite = sqlite3.connect(
                    self.url.removeprefix("sqlite:///"), timeout=10, check_same_thread=False
                )
            row = self._sqlite.execute(sql.replace("%s", "?"), params).fetchone()
        else:
            if self._pg is None:
                self._pg = psycopg.connect(self.url, autocommit=True)
            row = self._pg.execute(sql, params).fetchone()
        return int(row[0]) if row else 0

    def close(self) -> None:
        if self._pg is not None:
            self._pg.close()
        if self._sqlite is not None:
            self._sqlite.close()


@dataclass
class Point:
    """One sample: seconds since the phase began, its progress (0-1), each service's usage."""

    t: float
    progress: float
    rss: dict[str, float | None]  # MB
    cpu: dict[str, float | None]  # seconds since the process started


def _point(t: float, progress: float, read: dict[str, dict[str, float]]) -> Point:
    rss = {name: _mb(m.get(RSS_METRIC)) for name, m in read.items()}
    return Point(t, progress, rss, {name: m.get(CPU_METRIC) for name, m in read.items()})


def _mb(value: float | None) -> float | None:
    return None if value is None else round(value / 1e6, 1)


def at_progress(series: list[Point], share: float) -> Point | None:
    """The first sample at or past `share` of the progress (the last one if none is)."""
    for point in series:
        if point.progress >= share:
            return point
    return series[-1] if series else None


def rss_at(
    series: list[Point], service: str, shares: dict[str, float | None]
) -> dict[str, float | None]:
    """The service's RSS (MB) at these progress shares (0: its first sample, None: the last),
    with the min and max of the series."""
    read = [p for p in series if p.rss.get(service) is not None]
    out: dict[str, float | None] = {}
    for label, share in shares.items():
        if not read:
            point = None
        elif share is None or share == 0:
            point = read[-1] if share is None else read[0]
        else:
            point = at_progress(read, share)
        out[label] = None if point is None else point.rss[service]
    values = [v for p in read if (v := p.rss[service]) is not None]
    out["min"], out["max"] = (min(values), max(values)) if values else (None, None)
    return out


def report(label: str, point: Point) -> None:
    """One line of progress, for a person watching a long case."""
    rss = ", ".join(f"{name} {_num(mb)} MB" for name, mb in point.rss.items())
    print(f"{label}: {point.progress:.0%} after {point.t:.0f} s; RSS {rss}", flush=True)


class Sampler:
    """Reads the services' /metrics every SAMPLE_EVERY s into a series, in the background."""

    def __init__(self, http: aiohttp.ClientSession, urls: dict[str, str], label: str) -> None:
        self.http = http
        self.urls = urls
        self.label = label
        self.series: list[Point] = []

    async def read(self) -> dict[str, dict[str, float]]:
        values = await asyncio.gather(*(read_metrics(self.http, u) for u in self.urls.values()))
        return dict(zip(self.urls, values, strict=True))

    async def run(self, t0: float, progress: Callable[[], float], stop: asyncio.Event) -> None:
        """Sample until `stop`, then once more (the end of the phase)."""
        reported = t0
        while True:
            read = await self.read()
            now = time.perf_counter()
            self.series.append(_point(now - t0, progress(), read))
            if now - reported >= REPORT_EVERY:
                report(self.label, self.series[-1])
                reported = now
            if stop.is_set():
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), SAMPLE_EVERY)


class Stall:
    """Raises when the watched state has not changed for STALL_LIMIT s, or past a deadline."""

    def __init__(self, what: str, max_wait: float) -> None:
        self.what = what
        self.deadline = time.perf_counter() + max_wait
        self.max_wait = max_wait
        self.state: object = None
        self.changed = time.perf_counter()

    def check(self, state: object, detail: str) -> None:
        now = time.perf_counter()
        if state != self.state:
            self.state, self.changed = state, now
        elif now - self.changed > STALL_LIMIT:
            raise RuntimeError(f"{self.what}: no progress for {STALL_LIMIT:g} s ({detail})")
        if now > self.deadline:
            raise RuntimeError(f"{self.what}: not done after {self.max_wait:.0f} s ({detail})")


def _alive(proc: BusProcess) -> None:
    if not proc.running:
        raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.output()}")


# ---------------------------------------------------------------------------------------------
# catch-up


async def fill_tracker_queue(declared: Declared, topo: Topology, ids: TaskIds, pairs: int) -> None:
    """Publish `pairs` task sends and their callbacks, as the API does (confirmed, mandatory)."""
    pending: list[Coroutine[Any, Any, None]] = []
    in_flight: asyncio.Future[list[None]] | None = None
    for i in range(pairs):
        task = TaskMessage(
            from_="master",
            to=CATCHUP_POOL,
            type="task",
            cmd="echo",
            payload={"n": i},
            task_id=ids.new(CATCHUP_POOL),
            created_at=utcnow(),
        )
        callback = Event(
            event_id=callback_event_id(task.task_id),
            event="callback",
            ts=utcnow(),
            task_id=task.task_id,
            child_id="bench-child",
            status="done",
            result={"echo": {"cmd": "echo", "payload": {"n": i}}},
        )
        pending.append(
            amqp.publish(
                declared.tasks,
                topo.task_routing_key(CATCHUP_POOL),
                task,
                task.task_id,
                timeout=PUBLISH_TIMEOUT,
                message_type="task",
                headers={amqp.ATTEMPT_HEADER: 1},
            )
        )
        pending.append(
            amqp.publish(
                declared.events,
                topo.event_routing_key("callback"),
                callback,
                callback.event_id,
                timeout=PUBLISH_TIMEOUT,
                message_type="event",
            )
        )
        if len(pending) >= FILL_WINDOW:
            # Two windows in flight: the next is published while the last one's confirms come.
            window = asyncio.gather(*pending)
            if in_flight is not None:
                try:
                    await in_flight
                except BaseException:
                    window.cancel()
                    raise
            in_flight, pending = window, []
    if in_flight is not None:
        await in_flight
    # amqp.publish raises unless RabbitMQ acked the message (not a nack, a return, a timeout).
    await asyncio.gather(*pending)


async def wait_for_depth(channel: AbstractChannel, queue: str, n: int) -> float:
    """Seconds until the queue reports `n` ready messages; raises if it cannot."""
    started = time.perf_counter()
    ready = consumers = 0
    while time.perf_counter() - started < DEPTH_SETTLE:
        ready, consumers = await queue_depth(channel, queue)
        if consumers:
            raise RuntimeError(f"{queue} has {consumers} consumer(s): something else drains it")
        if ready == n:
            return time.perf_counter() - started
        if ready > n:
            raise RuntimeError(f"{queue} holds {ready} messages, more than the {n} published")
        await asyncio.sleep(0.1)
    raise RuntimeError(
        f"{queue} reports {ready} ready messages {DEPTH_SETTLE:g} s after {n} were confirmed"
    )


async def catchup(bus: LocalBus, n: int) -> dict[str, Any]:
    """Fill the tracker's queue with n events, start the tracker, time it to the last task."""
    pairs = n // 2
    n = 2 * pairs
    topo = Topology(bus.namespace)
    queue = topo.tracker_queue
    ids = TaskIds(derive_secret(os.environ.get("RELAY_ID_SECRET") or bus.key))
    counts = TaskCounts(bus.database_url())
    connection = await aio_pika.connect(bus.amqp_url, timeout=10)
    try:
        # The API's publishing channel: confirms on, a returned (unroutable) message raises.
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        declared = await declare_core(channel, topo)
        probe = await connection.channel()  # passive declares only
        ready, consumers = await queue_depth(probe, queue)
        if ready or consumers:
            raise RuntimeError(f"{queue} is not fresh: {ready} messages, {consumers} consumers")
        print(f"catch-up: filling {queue} with {n} events ({pairs} sends + {pairs} callbacks)")
        started = time.perf_counter()
        await fill_tracker_queue(declared, topo, ids, pairs)
        fill_s = time.perf_counter() - started
        settle_s = await wait_for_depth(probe, queue, n)
        print(f"catch-up: {n} events confirmed in {fill_s:.1f} s ({n / fill_s:.0f}/s), depth {n}")
        result = await _drain(bus, probe, queue, counts, n)
    finally:
        await connection.close()
        counts.close()
    return {
        "case": "catchup",
        "n": n,
        "sends": pairs,
        "callbacks": pairs,
        "fill_s": round(fill_s, 2),
        "fill_per_s": round(n / fill_s),
        "depth_settle_s": round(settle_s, 2),
        **result,
    }


async def _drain(
    bus: LocalBus, probe: AbstractChannel, queue: str, counts: TaskCounts, n: int
) -> dict[str, Any]:
    """Start the tracker; sample it until the queue is empty and every task is completed."""
    pairs = n // 2
    started = time.perf_counter()
    tracker = bus.start("tracker", "tracker")
    url = f"{tracker.base}/metrics"
    series: list[Point] = []
    first_consumed: float | None = None
    first_written: float | None = None
    cpu_at_first: float | None = None
    stall = Stall("catch-up", _max_wait(n))
    completed = 0
    reported = started
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
        while True:
            tick = time.perf_counter()
            _alive(tracker)
            metrics, (ready, consumers) = await asyncio.gather(
                read_metrics(http, url), queue_depth(probe, queue)
            )
            now = time.perf_counter()
            written = metrics.get(EVENTS_METRIC)
            if first_consumed is None and ready < n:
                first_consumed, cpu_at_first = now, metrics.get(CPU_METRIC)
            if first_written is None and written:
                first_written = now
            # The tracker's own count of entries written; the queue's depth if it has none.
            progress = min(1.0, written / n if written is not None else (n - ready) / n)
            series.append(_point(now - started, progress, {"tracker": metrics}))
            if now - reported >= REPORT_EVERY:
                report("catch-up", series[-1])
                reported = now
            if ready == 0:  # the last deliveries may still be in the tracker's hands
                completed = await asyncio.to_thread(counts.count, "completed")
                if completed >= pairs:
                    break
            stall.check(
                (ready, written, completed),
                f"depth {ready}, consumers {consumers}, entries written {written}, "
                f"tasks completed {completed} of {pairs}",
            )
            pause = FAST_POLL if first_consumed is None else SAMPLE_EVERY
            await asyncio.sleep(max(0.0, tick + pause - time.perf_counter()))
    done = series[-1].t + started
    assert first_consumed is not None
    total_s, steady_s = done - started, done - first_consumed
    cpu_end = series[-1].cpu.get("tracker")
    during = [p for p in series if p.t >= first_consumed - started]
    rss = rss_at(during, "tracker", {"10%": 0.1, "50%": 0.5, "90%": 0.9, "100%": 1.0})
    rss["start"] = next((p.rss["tracker"] for p in series if p.rss["tracker"]), None)
    cpu_catchup = None if cpu_end is None or cpu_at_first is None else cpu_end - cpu_at_first
    return {
        "tasks_completed": completed,
        "startup_s": round(first_consumed - started, 2),
        "first_written_s": None if first_written is None else round(first_written - started, 2),
        "total_s": round(total_s, 2),
        "steady_s": round(steady_s, 2),
        "events_per_s_total": round(n / total_s),
        "events_per_s_steady": round(n / steady_s),
        "tasks_per_s_steady": round(pairs / steady_s),
        "tracker_rss_mb": rss,
        "tracker_cpu_s": {
            "since_start": _round(cpu_end),
            "catchup": _round(cpu_catchup),
            "ms_per_event": None if cpu_catchup is None else round(cpu_catchup * 1000 / n, 3),
        },
        "samples": len(series),
    }


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


def render_catchup(f: dict[str, Any], database: str) -> str:
    """The catch-up's figures as a table a person reads."""
    rss, cpu = f["tracker_rss_mb"], f["tracker_cpu_s"]
    shares = " · ".join(f"{k} {_num(rss[k])}" for k in ("start", "10%", "50%", "90%", "100%"))
    return "\n".join(
        [
            f"catch-up · {f['n']} events ({f['sends']} sends + {f['callbacks']} callbacks) "
            f"· {database}",
            f"  fill              {f['fill_s']:.1f} s ({f['fill_per_s']}/s confirmed); depth "
            f"{f['n']} read back after {f['depth_settle_s']:.2f} s",
            f"  tracker start     first delivery after {f['startup_s']:.2f} s, first entry "
            f"written after {_num(f['first_written_s'], 2)} s",
            f"  incl. startup     {f['total_s']:.1f} s  {f['events_per_s_total']:>6} events/s",
            f"  steady            {f['steady_s']:.1f} s  {f['events_per_s_steady']:>6} events/s "
            f"({f['tasks_per_s_steady']} tasks/s); {f['tasks_completed']} tasks completed",
            f"  tracker RSS MB    {shares} · min {_num(rss['min'])} / max {_num(rss['max'])} "
            "during catch-up",
            f"  tracker CPU       {_num(cpu['catchup'], 1)} s during catch-up "
            f"({_num(cpu['ms_per_event'], 3)} ms/event), {_num(cpu['since_start'], 1)} s "
            "since its start",
        ]
    )


def _num(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


# ---------------------------------------------------------------------------------------------
# memory


@dataclass
class _Sends:
    """What the senders share (one event loop: no locks)."""

    n: int
    #: The handlers' wait (cli/bench/handlers.py); None: echo tasks.
    handler_ms: int | None = None
    sync: bool = False
    next_index: int = 0
    accepted: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    fatal: str | None = None


async def _sender(api: str, key: str, sends: _Sends) -> None:
    """One master with a keep-alive connection of its own: sends the next task until none left."""
    headers = {API_KEY_HEADER: key, "Content-Type": "application/json"}
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=1),
        timeout=aiohttp.ClientTimeout(total=30),
        headers=headers,
    ) as http:
        while sends.fatal is None and sends.next_index < sends.n:
            index = sends.next_index
            sends.next_index += 1
            body = orjson.dumps(
                {"from": "master", "to": POOL, "type": "task",
                 **handlers.task_fields(index, sends.handler_ms, sends.sync)}
            )  # fmt: skip
            try:
                async with http.post(api + SEND_PATH, data=body) as response:
                    status, raw = response.status, await response.read()
            except (aiohttp.ClientError, TimeoutError) as exc:
                sends.errors[exc.__class__.__name__] += 1
                continue
            if status == 200:
                sends.accepted += 1
            else:
                sends.errors[str(status)] += 1
                if status in (401, 403):
                    sends.fatal = f"the API refused the send ({status}): {raw[:200]!r}"


@dataclass
class _Memory:
    """What both phases of the memory case use."""

    bus: LocalBus
    http: aiohttp.ClientSession
    probe: AbstractChannel  # passive declares only
    api: BusProcess
    tracker: BusProcess
    counts: TaskCounts

    def depth(self, queue: str) -> Coroutine[Any, Any, tuple[int, int]]:
        return queue_depth(self.probe, queue)


_QUARTERS: dict[str, float | None] = {
    "start": 0.0,
    "25%": 0.25,
    "50%": 0.5,
    "75%": 0.75,
    "end": None,
}


async def memory(
    bus: LocalBus, n: int, handler_ms: int | None = None, sync: bool = False
) -> dict[str, Any]:
    """Send n tasks with no child, then drain them with one; RSS of each process throughout.
    With `handler_ms`, each handler waits that long (async, or `sync`)."""
    topo = Topology(bus.namespace)
    counts = TaskCounts(bus.database_url())
    api = await asyncio.to_thread(bus.start_bus, 0)  # tracker and API, ready
    tracker = next(p for p in bus.procs if p.name == "tracker")
    connection = await aio_pika.connect(bus.amqp_url, timeout=10)
    try:
        probe = await connection.channel()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
            run = _Memory(bus, http, probe, api, tracker, counts)
            send = await _send_phase(run, topo, _Sends(n, handler_ms, sync))
            drain = await _drain_phase(run, topo, int(send["accepted"]), int(send["pool_depth"]))
    finally:
        await connection.close()
        counts.close()
    return {
        "case": "memory",
        "n": n,
        "c": CONCURRENCY,
        "handler_ms": handler_ms,
        "sync": sync,
        "send": send,
        "drain": drain,
    }


async def _send_phase(run: _Memory, topo: Topology, sends: _Sends) -> dict[str, Any]:
    """C clients send the tasks over HTTP; then the tracker records every send."""
    n = sends.n
    urls = {"api": f"{run.api.base}/metrics", "tracker": f"{run.tracker.base}/metrics"}
    sampler = Sampler(run.http, urls, "memory, send phase")
    stop = asyncio.Event()
    print(f"memory: sending {n} tasks with {CONCURRENCY} clients, no child")
    started = time.perf_counter()
    sampling = asyncio.create_task(sampler.run(started, lambda: sends.accepted / n, stop))
    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(CONCURRENCY):
                group.create_task(_sender(run.api.base, run.bus.key, sends))
        sent_s = time.perf_counter() - started
        if sends.fatal is not None:
            raise RuntimeError(sends.fatal)
        run.bus.check_alive()
        # The tracker's backlog of sends, recorded before the drain starts (a phase apart).
        stall = Stall("memory: the tracker recording the sends", _max_wait(n))
        while True:
            (ready, _), recorded = await asyncio.gather(
                run.depth(topo.tracker_queue), asyncio.to_thread(run.counts.count)
            )
            if ready == 0 and recorded >= sends.accepted:
                break
            stall.check((ready, recorded), f"tracker depth {ready}, {recorded} tasks recorded")
            _alive(run.tracker)
            await asyncio.sleep(SAMPLE_EVERY)
        recorded_s = time.perf_counter() - started
        pool_depth, _ = await run.depth(topo.pool_queue(POOL))
    finally:
        stop.set()
        await sampling
    return {
        "accepted": sends.accepted,
        "errors": dict(sends.errors),
        "seconds": round(sent_s, 2),
        "sends_per_s": round(sends.accepted / sent_s, 1),
        "tracker_done_s": round(recorded_s, 2),
        "pool_depth": pool_depth,
        "rss_mb": {s: rss_at(sampler.series, s, _QUARTERS) for s in sampler.urls},
    }


async def _drain_phase(run: _Memory, topo: Topology, n: int, depth: int) -> dict[str, Any]:
    """One child drains the pool; until its queue is empty and every task is completed."""
    print(f"memory: one child drains {depth} tasks")
    started = time.perf_counter()
    child = run.bus.start("child-1", "child", "--pool", POOL, "--handlers", BENCH_HANDLERS)
    urls = {
        "child": f"{child.base}/metrics",
        "tracker": f"{run.tracker.base}/metrics",
        "api": f"{run.api.base}/metrics",
    }
    sampler = Sampler(run.http, urls, "memory, drain phase")
    completed = 0
    first_done: float | None = None
    stop = asyncio.Event()
    sampling = asyncio.create_task(sampler.run(started, lambda: completed / max(n, 1), stop))
    stall = Stall("memory: the child draining the pool", _max_wait(n))
    try:
        while True:
            run.bus.check_alive()
            (ready, _), completed = await asyncio.gather(
                run.depth(topo.pool_queue(POOL)),
                asyncio.to_thread(run.counts.count, "completed"),
            )
            if first_done is None and completed:
                first_done = time.perf_counter()
            if ready == 0 and completed >= n:
                break
            stall.check((ready, completed), f"pool depth {ready}, {completed} of {n} completed")
            await asyncio.sleep(SAMPLE_EVERY)
        done = time.perf_counter()
    finally:
        stop.set()
        await sampling
    steady = None if first_done is None else done - first_done
    return {
        "completed": completed,
        "seconds": round(done - started, 2),
        "tasks_per_s": round(n / (done - started), 1),
        "first_completion_s": None if first_done is None else round(first_done - started, 2),
        "tasks_per_s_steady": None if not steady else round(n / steady, 1),
        "rss_mb": {s: rss_at(sampler.series, s, _QUARTERS) for s in sampler.urls},
    }


def render_memory(f: dict[str, Any], database: str) -> str:
    """The memory case's figures as a table a person reads."""
    send, drain = f["send"], f["drain"]
    errors = ", ".join(f"{k}: {v}" for k, v in sorted(send["errors"].items())) or "none"
    rows = [
        f"memory · {f['n']} tasks · {f['c']} clients · {database}"
        + (
            ""
            if f["handler_ms"] is None
            else f" · each handler waits {f['handler_ms']} ms ({'sync' if f['sync'] else 'async'})"
        ),
        f"  send phase   {send['accepted']} accepted in {send['seconds']:.1f} s "
        f"({send['sends_per_s']:.0f}/s), errors: {errors}; the tracker had recorded them "
        f"{send['tracker_done_s']:.1f} s after the first send; pool depth {send['pool_depth']}",
        f"  drain phase  {drain['completed']} completed in {drain['seconds']:.1f} s "
        f"({drain['tasks_per_s']:.0f} tasks/s incl. the child's start, "
        f"{_num(drain['tasks_per_s_steady'])} from the first completion)",
        "",
        "| phase | service | start | 25% | 50% | 75% | end | min | max |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for phase in ("send", "drain"):
        for service, rss in f[phase]["rss_mb"].items():
            cells = " | ".join(_num(rss[k]) for k in (*_QUARTERS, "min", "max"))
            rows.append(f"| {phase} | {service} | {cells} |")
    rows.append("(RSS in MB at that share of the phase's progress)")
    return "\n".join(rows)
