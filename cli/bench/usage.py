"""What the processes of a benchmark use: RSS and CPU, from each service's /metrics and our own."""

from __future__ import annotations

import asyncio
import contextlib
import math
import resource
import time
from dataclasses import dataclass

import aiohttp

#: The process collector's samples (prometheus-client exports them on Linux).
RSS_METRIC = "process_resident_memory_bytes"
CPU_METRIC = "process_cpu_seconds_total"
#: Each service's /metrics is read this often.
SAMPLE_EVERY = 0.5


@dataclass
class Usage:
    """What a service's /metrics told of its process during the run."""

    peak_rss: int | None = None
    last_rss: int | None = None  # at the end of the run: what the process kept
    cpu_first: float | None = None
    cpu_last: float | None = None

    def add(self, rss: int | None, cpu: float | None) -> None:
        if rss is not None:
            self.peak_rss = max(self.peak_rss or 0, rss)
            self.last_rss = rss
        if cpu is not None:
            self.cpu_first = cpu if self.cpu_first is None else self.cpu_first
            self.cpu_last = cpu

    def cpu_seconds(self) -> float | None:
        if self.cpu_first is None or self.cpu_last is None:
            return None
        return self.cpu_last - self.cpu_first


async def _read_process(
    session: aiohttp.ClientSession, url: str
) -> tuple[int | None, float | None]:
    """RSS and CPU seconds of a service's process from its /metrics (None: not readable)."""
    try:
        async with session.get(url) as response:
            if response.status != 200:
                return None, None
            text = await response.text()
    except (aiohttp.ClientError, TimeoutError, UnicodeDecodeError):
        return None, None
    found: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in (RSS_METRIC, CPU_METRIC):
            with contextlib.suppress(ValueError):
                found[name] = float(value.split()[0])
    rss = found.get(RSS_METRIC)
    return None if rss is None else int(rss), found.get(CPU_METRIC)


async def sample(urls: dict[str, str], stop: asyncio.Event) -> dict[str, Usage]:
    """Each service's usage, read every SAMPLE_EVERY seconds until `stop`, then once more."""
    usage = {name: Usage() for name in urls}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        while True:
            values = await asyncio.gather(*(_read_process(session, url) for url in urls.values()))
            for name, (rss, cpu) in zip(urls, values, strict=True):
                usage[name].add(rss, cpu)
            if stop.is_set():
                return usage
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), SAMPLE_EVERY)


def own_peak_rss() -> int:
    """This process's peak RSS in bytes.

    VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec, so a bench started by a large
    process (pytest, a driver script) would report its parent's size.
    """
    with contextlib.suppress(OSError), open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


#: Busy and all CPU seconds of the machine (machine_cpu).
CpuTimes = tuple[float, float]


def machine_cpu() -> CpuTimes | None:
    """The machine's CPU time so far, busy and in all (seconds over every CPU), from /proc/stat;
    None where it cannot be read."""
    try:
        with open("/proc/stat", encoding="ascii") as stat:
            # user nice system idle iowait irq softirq steal (guest time is inside user/nice)
            fields = [float(v) for v in stat.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    idle = sum(fields[3:5])  # idle and iowait
    return sum(fields) - idle, sum(fields)


def busy_share(before: CpuTimes | None, after: CpuTimes | None) -> float | None:
    """How busy the machine's CPUs were between two readings of `machine_cpu` (0 to 1)."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return round((after[0] - before[0]) / (after[1] - before[1]), 3)


def own_cpu() -> float:
    """CPU seconds this process used so far, user and system."""
    used = resource.getrusage(resource.RUSAGE_SELF)
    return used.ru_utime + used.ru_stime


def cpu_speed_ms(rounds: int = 3) -> float:
    """Milliseconds this machine takes for a fixed pure-Python loop (the best of `rounds`).

    Shared virtual machines vary by twofold from day to day; figures from two runs compare
    only when this does too.
    """
    best = math.inf
    for _ in range(rounds):
        started = time.perf_counter()
        total = 0
        for i in range(1_000_000):
            total += i
        best = min(best, time.perf_counter() - started)
    return round(best * 1000, 1)
