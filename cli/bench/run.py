"""`convbus bench`: drive a running bus over HTTP as masters would, and measure it.

C clients, each with one keep-alive connection of its own, send N tasks (as fast as they can,
or at an offered rate spread over them). One poller pages through the tracker's log
(`GET /api/relay/logs?event=callback&after=…`), reading again at once while there is news, so
a task counts as done when its completion is visible through the API, as a master would see
it. Parked tasks (`dead` entries) and failed callbacks count as failed. Only the tasks this run
sent count: other traffic may share the namespace.
"""

from __future__ import annotations

import asyncio
import math
import os
import platform
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson

from cli.bench import handlers
from cli.bench.usage import (
    busy_share,
    cpu_speed_ms,
    machine_cpu,
    own_cpu,
    own_peak_rss,
    sample,
)
from shared.contract import API_KEY_HEADER, LOGS_PATH, SEND_PATH
from shared.errors import BusError

#: The most entries GET /logs returns at once.
PAGE = 1000
#: The poller's default pause when the log had nothing new.
IDLE_POLL = 0.0015
#: The poller's pause after a failed read of the log.
ERROR_POLL = 0.05
#: Parked tasks are rare: their entries are looked for four times a second.
DEAD_POLL_EVERY = 0.25
#: With tasks missing and no completion for this long, the log is read again from the start,
#: in case an entry was committed under an id below the cursor (concurrent writers).
RESCAN_AFTER = 2.0
REQUEST_TIMEOUT = 30.0
#: Completions read before their send's answer (or of other traffic), kept for matching.
MAX_UNMATCHED = 100_000


class BenchError(BusError):
    """The benchmark cannot run: the API is unreachable or refuses the key."""


@dataclass(frozen=True)
class BenchConfig:
    """What to send, where, and how hard."""

    api: str
    key: str
    tasks: int = 5000
    concurrency: int = 64
    #: Offered sends a second over all clients; None: as fast as they can.
    rate: float | None = None
    pool: str = "child"
    cmd: str = "echo"
    #: The handler's wait in ms (cli/bench/handlers.py); None: the `cmd` given, no wait.
    handler_ms: int | None = None
    #: With `handler_ms`: the blocking handler (time.sleep on a thread), not the async one.
    sync: bool = False
    sender: str = "master"
    #: Seconds to wait for completions after the last send answered.
    timeout: float = 120.0
    #: Service name → its /metrics URL, to sample RSS and CPU from.
    metrics: dict[str, str] = field(default_factory=dict)
    #: The poller's pause when the log had nothing new: short, as it adds to every latency,
    #: but each read of the log costs the API some CPU.
    poll_interval: float = IDLE_POLL

    def task_fields(self, index: int) -> dict[str, Any]:
        """The `cmd` and `payload` of task number `index`."""
        return handlers.task_fields(index, self.handler_ms, self.sync, self.cmd)

    @property
    def task_cmd(self) -> str:
        return str(self.task_fields(0)["cmd"])


@dataclass
class _Feed:
    """One event's entries in the log, read in order of id."""

    event: str
    start: int
    cursor: int = 0
    high: int = 0  # the highest id read so far

    def __post_init__(self) -> None:
        self.cursor = self.high = self.start


@dataclass
class _Run:
    """What the clients and the poller record (one event loop: no locks needed)."""

    cfg: BenchConfig
    next_index: int = 0
    t0: float = 0.0
    first_start: float = math.inf
    last_answer: float = 0.0
    started: dict[str, float] = field(default_factory=dict)  # accepted task → its send's start
    send_latency: list[float] = field(default_factory=list)
    send_errors: Counter[str] = field(default_factory=Counter)
    seen: dict[str, float] = field(default_factory=dict)  # finished task → completion visible
    failed: set[str] = field(default_factory=set)
    unmatched: dict[str, tuple[float, bool]] = field(default_factory=dict)
    sending_done: bool = False
    deadline: float = math.inf
    fatal: str | None = None
    last_progress: float = 0.0
    last_rescan: float = 0.0
    missed_by_cursor: int = 0
    polls: int = 0
    poll_errors: int = 0
    schedule_lag: float = 0.0

    def answered(self, start: float, end: float, status: int, raw: bytes) -> None:
        """Record a send's answer."""
        self.first_start = min(self.first_start, start)
        self.last_answer = max(self.last_answer, end)
        if status != 200:
            self.send_errors[str(status)] += 1
            if status in (401, 403):
                self.fatal = _refusal(status, "send", raw)
            return
        try:
            task_id = orjson.loads(raw)["task_id"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            task_id = None
        if not isinstance(task_id, str):
            self.send_errors["200 without a task id"] += 1
            return
        self.send_latency.append(end - start)
        self.started[task_id] = start
        early = self.unmatched.pop(task_id, None)
        if early is not None:
            self.finish(task_id, *early)

    def finish(self, task_id: str, seen: float, failed: bool) -> bool:
        """Record a completion read from the log; whether it was one of ours, new."""
        if task_id in self.seen:
            return False
        if task_id not in self.started:
            # Ours before its send's answer was read, or another sender's.
            if len(self.unmatched) >= MAX_UNMATCHED:
                del self.unmatched[next(iter(self.unmatched))]
            self.unmatched[task_id] = (seen, failed)
            return False
        self.seen[task_id] = seen
        if failed:
            self.failed.add(task_id)
        self.last_progress = seen
        return True

    def outstanding(self) -> int:
        return len(self.started) - len(self.seen)

    def done(self, now: float) -> bool:
        if self.fatal is not None:
            return True
        return self.sending_done and (self.outstanding() == 0 or now > self.deadline)

    def rescan_due(self, now: float) -> bool:
        stalled = min(now - self.last_progress, now - self.last_rescan) > RESCAN_AFTER
        return self.sending_done and self.outstanding() > 0 and stalled


def _refusal(status: int, what: str, raw: bytes) -> str:
    try:
        said = str(orjson.loads(raw).get("msg", ""))
    except (orjson.JSONDecodeError, AttributeError):
        said = raw[:200].decode(errors="replace")
    if status == 401:
        return f"the API refused the key (401: {said}): give --key, or set RELAY_API_KEY"
    return f"the key may not {what} ({status}: {said})"


def _session(headers: dict[str, str], timeout: float = REQUEST_TIMEOUT) -> aiohttp.ClientSession:
    """A session with one keep-alive connection of its own."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=1),
        timeout=aiohttp.ClientTimeout(total=timeout),
        headers=headers,
    )


async def _last_id(session: aiohttp.ClientSession, api: str, event: str) -> int:
    """The id of the newest `event` entry in the log (0: none); checks that the key may read."""
    url = api + LOGS_PATH
    try:
        async with session.get(url, params={"event": event, "limit": "1"}) as response:
            status, raw = response.status, await response.read()
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise BenchError(
            f"the API at {api} is unreachable: {exc or exc.__class__.__name__}"
        ) from exc
    if status in (401, 403):
        raise BenchError(_refusal(status, "read the logs (the read scope)", raw))
    if status != 200:
        raise BenchError(f"GET {url} answered {status}: {raw[:200]!r}")
    try:
        entries = orjson.loads(raw)["logs"]
        return int(entries[-1]["id"]) if entries else 0
    except (orjson.JSONDecodeError, KeyError, TypeError, IndexError) as exc:
        raise BenchError(f"{url} does not answer like the bus's API: {raw[:200]!r}") from exc


async def _client(run: _Run, headers: dict[str, str]) -> None:
    """One master: takes the next task and sends it, on its own connection."""
    cfg = run.cfg
    async with _session(headers) as session:
        while run.fatal is None and run.next_index < cfg.tasks:
            index = run.next_index
            run.next_index += 1
            if cfg.rate:
                wait = run.t0 + index / cfg.rate - time.perf_counter()
                if wait > 0:
                    await asyncio.sleep(wait)
                else:
                    run.schedule_lag = max(run.schedule_lag, -wait)
            body = orjson.dumps(
                {"from": cfg.sender, "to": cfg.pool, "type": "task", **cfg.task_fields(index)}
            )  # fmt: skip
            start = time.perf_counter()
            try:
                async with session.post(cfg.api + SEND_PATH, data=body) as response:
                    status, raw = response.status, await response.read()
            except (aiohttp.ClientError, TimeoutError) as exc:
                run.first_start = min(run.first_start, start)
                run.send_errors[exc.__class__.__name__] += 1
                continue
            run.answered(start, time.perf_counter(), status, raw)


async def _read_page(session: aiohttp.ClientSession, run: _Run, feed: _Feed) -> int | None:
    """Read the entries after the feed's cursor; how many, or None when the read failed."""
    params = {"event": feed.event, "after": str(feed.cursor), "limit": str(PAGE)}
    run.polls += 1
    try:
        async with session.get(run.cfg.api + LOGS_PATH, params=params) as response:
            status, raw = response.status, await response.read()
    except (aiohttp.ClientError, TimeoutError):
        run.poll_errors += 1
        return None
    seen = time.perf_counter()
    if status in (401, 403):
        run.fatal = _refusal(status, "read the logs", raw)
        return None
    try:
        entries: list[dict[str, Any]] | None = orjson.loads(raw)["logs"] if status == 200 else None
    except (orjson.JSONDecodeError, KeyError, TypeError):
        entries = None
    if entries is None:
        run.poll_errors += 1
        return None
    for entry in entries:
        feed.cursor = int(entry["id"])
        task_id = entry.get("task_id")
        failed = feed.event == "dead" or entry.get("status") == "failed"
        if isinstance(task_id, str) and run.finish(task_id, seen, failed):
            # Read on a second pass: committed below an id the poller had passed.
            run.missed_by_cursor += feed.cursor <= feed.high
            if not failed and not _waited(run.cfg, entry):
                run.fatal = (
                    f"task {task_id} completed without the wait asked for: start the child "
                    "with --handlers cli.bench.handlers:registry"
                )
    feed.high = max(feed.high, feed.cursor)
    return len(entries)


def _waited(cfg: BenchConfig, entry: dict[str, Any]) -> bool:
    """Whether a completion came from the benchmark's handler, when one was asked for."""
    if cfg.handler_ms is None:
        return True
    result = entry.get("result")
    return isinstance(result, dict) and result.get("waited_ms") == cfg.handler_ms


async def _poll(run: _Run, headers: dict[str, str], callbacks: _Feed, dead: _Feed) -> None:
    """Read completions from the log until every accepted task finished, or the deadline."""
    next_dead = 0.0
    async with _session(headers) as session:
        while not run.done(now := time.perf_counter()):
            if run.rescan_due(now):
                callbacks.cursor, dead.cursor = callbacks.start, dead.start
                run.last_rescan = now
            if now >= next_dead:
                read = await _read_page(session, run, dead)
                if read is None or read < PAGE:
                    next_dead = now + DEAD_POLL_EVERY
            read = await _read_page(session, run, callbacks)
            if read is None:
                await asyncio.sleep(ERROR_POLL)
            elif read == 0:
                await asyncio.sleep(run.cfg.poll_interval)


async def run_bench(cfg: BenchConfig) -> dict[str, Any]:
    """Send the tasks, wait for their completions, and return every figure."""
    headers = {API_KEY_HEADER: cfg.key, "Content-Type": "application/json"}
    load_before = os.getloadavg()[0]
    speed = cpu_speed_ms()
    async with _session(headers, timeout=10) as session:
        callbacks = _Feed("callback", await _last_id(session, cfg.api, "callback"))
        dead = _Feed("dead", await _last_id(session, cfg.api, "dead"))
    run = _Run(cfg)
    cpu_before, machine_before = own_cpu(), machine_cpu()
    stop = asyncio.Event()
    async with asyncio.TaskGroup() as group:
        sampler = group.create_task(sample(cfg.metrics, stop))
        run.t0 = run.last_progress = time.perf_counter()
        poller = group.create_task(_poll(run, headers, callbacks, dead))
        async with asyncio.TaskGroup() as clients:
            for _ in range(cfg.concurrency):
                clients.create_task(_client(run, headers))
        run.sending_done = True
        run.deadline = time.perf_counter() + cfg.timeout
        await poller
        stop.set()
    if run.fatal is not None:
        raise BenchError(run.fatal)
    usage = sampler.result()
    rss = {name: _mb(u.peak_rss) for name, u in usage.items()}
    rss["bench"] = _mb(own_peak_rss())
    rss_end = {name: _mb(u.last_rss) for name, u in usage.items()}
    cpu = {name: _round(u.cpu_seconds(), 2) for name, u in usage.items()}
    cpu["bench"] = round(own_cpu() - cpu_before, 2)
    busy = busy_share(machine_before, machine_cpu())
    return _figures(
        run, rss=rss, rss_end=rss_end, cpu=cpu, load_before=load_before, speed=speed, busy=busy
    )


def _mb(value: int | None) -> float | None:
    return None if value is None else round(value / 1e6, 1)


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def _percentiles(ordered: list[float], *ps: int) -> dict[str, float | None]:
    """Nearest-rank percentiles and the maximum of sorted seconds, in milliseconds."""
    if not ordered:
        return {**{f"p{p}": None for p in ps}, "max": None}
    ranks = {f"p{p}": max(0, math.ceil(p / 100 * len(ordered)) - 1) for p in ps}
    ranks["max"] = len(ordered) - 1
    return {name: round(ordered[rank] * 1000, 2) for name, rank in ranks.items()}


def _by_quarter(run: _Run, done: dict[str, float]) -> list[dict[str, float | None]]:
    """p50 and p99 latency of the tasks sent in each quarter of the sends, in order: a lag that
    grows through the run shows as rising figures."""
    sent = sorted(run.started.items(), key=lambda item: item[1])
    quarters = []
    for q in range(4):
        part = sent[q * len(sent) // 4 : (q + 1) * len(sent) // 4]
        latencies = sorted(done[t] - start for t, start in part if t in done)
        figures = _percentiles(latencies, 50, 99)
        quarters.append({"p50": figures["p50"], "p99": figures["p99"]})
    return quarters


def _figures(
    run: _Run,
    *,
    rss: dict[str, float | None],
    rss_end: dict[str, float | None],
    cpu: dict[str, float | None],
    load_before: float,
    speed: float,
    busy: float | None,
) -> dict[str, Any]:
    cfg = run.cfg
    done = {t: seen for t, seen in run.seen.items() if t not in run.failed}
    latencies = sorted(seen - run.started[t] for t, seen in done.items())
    send_latencies = sorted(run.send_latency)
    send_span = run.last_answer - run.first_start if run.started else 0.0
    span = max(done.values()) - run.first_start if done else 0.0
    not_completed = run.outstanding()
    errors = sum(run.send_errors.values()) + len(run.failed) + not_completed
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "api": cfg.api,
        "n": cfg.tasks,
        "c": cfg.concurrency,
        "rate": cfg.rate,
        "pool": cfg.pool,
        "cmd": cfg.task_cmd,
        "handler_ms": cfg.handler_ms,
        "sync": cfg.sync if cfg.handler_ms is not None else None,
        "accepted": len(run.started),
        "completed": len(done),
        "failed": len(run.failed),
        "not_completed": not_completed,
        "send_errors": dict(run.send_errors),
        "errors": errors,
        "sends_per_s": round(len(run.started) / send_span, 1) if send_span > 0 else 0.0,
        "tasks_per_s": round(len(done) / span, 1) if span > 0 else 0.0,
        "send_seconds": round(send_span, 3),
        "seconds": round(span, 3),
        # The last completion seen, after the last send's answer (the ideal: the handler's wait).
        "after_last_send_s": round(max(done.values()) - run.last_answer, 3) if done else None,
        "latency_ms": _percentiles(latencies, 50, 95, 99),
        "latency_by_quarter_ms": _by_quarter(run, done),
        "send_latency_ms": _percentiles(send_latencies, 50, 99),
        "schedule_lag_max_ms": round(run.schedule_lag * 1000, 1) if cfg.rate else None,
        "rss_peak_mb": rss,
        "rss_end_mb": rss_end,
        "cpu_s": cpu,
        "missed_by_cursor": run.missed_by_cursor,
        "polls": run.polls,
        "poll_errors": run.poll_errors,
        "timeout_s": cfg.timeout,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "load_before": round(load_before, 2),
            "load_after": round(os.getloadavg()[0], 2),
            "cpu_speed_ms": speed,
            # The share of all CPUs busy during the run, with whatever else ran (RabbitMQ, the
            # database, the bench itself): near 1, the machine was the limit.
            "cpu_busy": busy,
        },
    }


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def _s_of_ms(value: float | None) -> str:
    return "-" if value is None else f"{value / 1000:.2f} s"


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def _in_mb(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} MB"


def render(f: dict[str, Any]) -> str:
    """The figures as a table a person reads."""
    rate = f"{f['rate']:g} sends/s offered" if f["rate"] else "as fast as possible"
    lat, send = f["latency_ms"], f["send_latency_ms"]
    refused = ", ".join(f"{k}: {v}" for k, v in sorted(f["send_errors"].items())) or "none"
    rss = " · ".join(
        f"{k} {_in_mb(v)}"
        + (f" (at the end {_in_mb(f['rss_end_mb'][k])})" if k in f["rss_end_mb"] else "")
        for k, v in f["rss_peak_mb"].items()
    )
    n = f["completed"]
    cpu = " · ".join(
        f"{k} -"
        if v is None
        else f"{k} {v:.1f} s" + (f" ({v * 1000 / n:.2f} ms/task)" if n else "")
        for k, v in f["cpu_s"].items()
    )
    m, quarters = f["machine"], f["latency_by_quarter_ms"]
    rows = [
        f"convbus bench · {f['n']} tasks · {f['c']} clients · {rate} · {f['api']} "
        f"(pool {f['pool']}, cmd {f['cmd']}"
        + ("" if f["handler_ms"] is None else f", each waits {f['handler_ms']} ms")
        + ")",
        f"  sends accepted   {f['accepted']:>6}  {f['sends_per_s']:>8.1f} /s       "
        f"in {f['send_seconds']:.2f} s; send latency p50 {_ms(send['p50'])}, "
        f"p99 {_ms(send['p99'])}",
        f"  end to end       {f['completed']:>6}  {f['tasks_per_s']:>8.1f} tasks/s  "
        f"in {f['seconds']:.2f} s (first send → last completion seen); the last "
        f"{_s(f['after_last_send_s'])} after the last send",
        f"  latency          send → completion visible: p50 {_ms(lat['p50'])} · "
        f"p95 {_ms(lat['p95'])} · p99 {_ms(lat['p99'])} · max {_ms(lat['max'])}",
        "  by quarter       of the sends, p50 / p99: "
        + " · ".join(f"{_s_of_ms(q['p50'])} / {_s_of_ms(q['p99'])}" for q in quarters),
        f"  errors           {f['errors']:>6}  refused sends: {refused} · failed tasks: "
        f"{f['failed']} · not completed within {f['timeout_s']:g} s: {f['not_completed']}",
        f"  peak RSS         {rss}",
        f"  CPU used         {cpu}",
        f"  log reads        {f['polls']} by the bench's poller ({f['poll_errors']} failed)",
        f"  machine          {m['cpus']} CPUs · Python {m['python']} · load (1 min) "
        f"{m['load_before']} → {m['load_after']} · speed {m['cpu_speed_ms']} ms (a fixed "
        "Python loop: lower is faster)"
        + ("" if m["cpu_busy"] is None else f" · CPUs {m['cpu_busy']:.0%} busy"),
    ]
    if (f["schedule_lag_max_ms"] or 0) >= 10:
        rows.append(f"  behind schedule  up to {f['schedule_lag_max_ms']} ms (rate not held)")
    if f["missed_by_cursor"]:
        rows.append(
            f"  note             {f['missed_by_cursor']} completions were committed below the "
            "log's cursor and found on a second pass: their latencies are overstated"
        )
    return "\n".join(rows)
