"""`convbus bench` against the real processes: a tiny run, its figures whole and consistent."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from cli.processes import free_port
from tests.support.api import send_task
from tests.support.bus import FAST_RETRY, Bus

pytestmark = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)


def bench(bus: Bus, *args: str) -> subprocess.CompletedProcess[str]:
    """`convbus bench --json-only` against the bus, with the bus's key in its environment."""
    return subprocess.run(
        [sys.executable, "-m", "cli", "bench", "--json-only", *args],
        env=bus.env(),
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


def figures(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    lines = done.stdout.splitlines()
    assert len(lines) == 1, done.stdout + done.stderr
    result: dict[str, Any] = json.loads(lines[0])
    return result


def test_bench_measures_the_tasks_it_sent(bus: Bus) -> None:
    bus.start_all()
    # Other traffic in the namespace, finishing while the bench sends (at 10/s, for 3 s after
    # its start-up): it must not be counted.
    for _ in range(3):
        send_task(bus, "nap", payload={"seconds": 2})
    metrics = f"api={bus.api}/metrics"
    done = bench(bus, "--api", bus.api, "-n", "30", "-c", "4", "--rate", "10", "--metrics", metrics)
    assert done.returncode == 0, done.stdout + done.stderr
    f = figures(done)
    assert (f["n"], f["c"], f["rate"]) == (30, 4, 10)
    assert f["accepted"] == f["completed"] == 30
    assert (f["errors"], f["failed"], f["not_completed"], f["send_errors"]) == (0, 0, 0, {})
    lat, send = f["latency_ms"], f["send_latency_ms"]
    assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"]
    assert 0 < send["p50"] <= send["p99"] <= send["max"]
    # Every latency fits within the run, first send to last completion (rounding aside).
    assert lat["max"] <= f["seconds"] * 1000 + 1
    assert f["tasks_per_s"] > 0
    assert f["tasks_per_s"] == pytest.approx(30 / f["seconds"], rel=0.01)
    assert f["sends_per_s"] == pytest.approx(30 / f["send_seconds"], rel=0.01)
    assert f["rss_peak_mb"]["api"] > 0
    assert f["rss_peak_mb"]["bench"] > 0
    assert f["cpu_s"]["api"] > 0
    assert f["cpu_s"]["bench"] > 0
    assert f["polls"] > 0
    assert f["machine"]["cpus"] >= 1


# `boom` raises every time. By default it is retried twice (FAST_RETRY), then parked: the log
# has a `dead` entry. Without retries of errors the child reports it: a failed callback.
REPORTED_FAILED = (
    '{"default": {"max_retries": 2, "backoff": 0.1, "factor": 2},'
    ' "cmds": {"boom": {"retry_errors": false}}}'
)


@pytest.mark.parametrize("retry", [FAST_RETRY, REPORTED_FAILED], ids=["parked", "reported"])
def test_bench_counts_failed_tasks_as_errors(bus: Bus, retry: str) -> None:
    bus.start_all(RELAY_RETRY=retry)
    done = bench(bus, "--api", bus.api, "-n", "3", "-c", "2", "--cmd", "boom", "--timeout", "60")
    assert done.returncode == 1, done.stdout + done.stderr
    f = figures(done)
    assert (f["accepted"], f["completed"], f["failed"], f["not_completed"]) == (3, 0, 3, 0)
    assert f["errors"] == 3
    assert f["latency_ms"]["p50"] is None


def test_bench_says_why_it_cannot_run(bus: Bus) -> None:
    bus.start_api()
    refused = bench(bus, "--api", bus.api, "--key", "not-the-key", "-n", "1")
    assert refused.returncode == 2
    assert "refused the key (401" in refused.stderr
    assert refused.stdout == ""
    nowhere = f"http://127.0.0.1:{free_port()}"
    unreachable = bench(bus, "--api", nowhere, "-n", "1")
    assert unreachable.returncode == 2
    assert f"the API at {nowhere} is unreachable" in unreachable.stderr


@pytest.mark.parametrize("sync", [False, True], ids=["async", "sync"])
def test_bench_measures_handlers_that_wait(bus: Bus, sync: bool) -> None:
    bus.start_tracker()
    bus.start_child("child", "--handlers", "cli.bench.handlers:registry")
    bus.start_api()
    waits = ["--handler-ms", "400", *(["--sync"] if sync else [])]
    done = bench(bus, "--api", bus.api, "-n", "20", "-c", "4", *waits)
    assert done.returncode == 0, done.stdout + done.stderr
    f = figures(done)
    assert (f["completed"], f["errors"]) == (20, 0)
    assert (f["cmd"], f["handler_ms"], f["sync"]) == (
        "bench.wait_sync" if sync else "bench.wait",
        400,
        sync,
    )
    assert f["latency_ms"]["p50"] >= 400  # every task waited
    assert f["after_last_send_s"] >= 0.4
    quarters = f["latency_by_quarter_ms"]
    assert len(quarters) == 4 and all(q["p50"] >= 400 for q in quarters)
    assert 0 < f["machine"]["cpu_busy"] <= 1


def test_bench_refuses_a_child_whose_tasks_do_not_wait(bus: Bus) -> None:
    bus.start_all()  # no benchmark handlers: the echo fallback answers at once
    done = bench(bus, "--api", bus.api, "-n", "3", "-c", "1", "--handler-ms", "300")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "start the child with --handlers cli.bench.handlers:registry" in done.stderr
