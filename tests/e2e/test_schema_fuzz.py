"""The API against its own OpenAPI, as an outside tester runs it: Schemathesis, every check.

Every check Schemathesis has (5xx, status codes, content types, response schemas and headers,
schema-valid requests accepted and schema-invalid ones refused, 405s and their `Allow`,
authentication…) over its examples, coverage, fuzzing and stateful phases: a drift between what
the OpenAPI says and what the API does fails it. On top, the contract's own rules, read from
the run's report: every error is `{"status":"error","msg":…}`, and a refused send publishes
nothing.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared.contract import API_KEY_HEADER, LOGS_PATH, SEND_PATH, STREAM_PATH
from shared.topology import Topology
from tests.support.bus import API_KEY, Bus, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)]

#: Cases per operation and phase: 20-30 s of requests on two cores, the whole test under 40 s.
EXAMPLES_PER_OPERATION = 75
#: The run is cut off after this (a machine too busy for the test's budget); the test then fails.
RUN_TIMEOUT = 80


@dataclass
class Exchange:
    """One request Schemathesis made and the API's answer, from its NDJSON report."""

    method: str
    path: str
    body: Any
    status: int
    answer: bytes


def schemathesis(bus: Bus, report_dir: Path) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable, "-m", "schemathesis.cli", "run", f"{bus.api}/openapi.json",
        "--checks", "all",
        "--phases", "examples,coverage,fuzzing,stateful",
        "--header", f"{API_KEY_HEADER}: {API_KEY}",
        "--max-examples", str(EXAMPLES_PER_OPERATION),
        "--workers", "1",  # two cores for the API, the tracker and Schemathesis
        "--request-timeout", "10",
        # Hypothesis's own health check on how fast it generates: a busy machine, not the API.
        "--suppress-health-check", "too_slow",
        "--generation-database", "none",  # every run from its seed (printed) alone
        "--report", "ndjson", "--report-dir", str(report_dir),
        "--no-color", "--output-truncate", "false",
        # A stream answers for as long as the client stays: tests/e2e/test_stream.py and
        # test_bad_input.py test it.
        "--exclude-path", STREAM_PATH,
    ]  # fmt: skip
    hooks = {"SCHEMATHESIS_HOOKS": str(Path(__file__).with_name("schemathesis_hooks.py"))}
    return subprocess.run(
        command, capture_output=True, text=True, timeout=RUN_TIMEOUT, cwd=report_dir, check=False,
        env={**os.environ, **hooks},
    )  # fmt: skip


def exchanges(report_dir: Path) -> Iterator[Exchange]:
    """Every request of the run, with its answer (the NDJSON report records them all)."""
    for report in report_dir.glob("*.ndjson"):
        for line in report.read_text().splitlines():
            event = json.loads(line)
            recorder = event.get("ScenarioFinished", {}).get("recorder", {})
            for case_id, interaction in recorder.get("interactions", {}).items():
                response = interaction.get("response")
                if response is None:
                    continue  # the request itself failed: Schemathesis reports that
                case = recorder["cases"][case_id]["value"]
                yield Exchange(
                    method=case["method"],
                    path=case["path"],
                    body=case.get("body"),
                    status=response["status_code"],
                    answer=_decoded(response.get("content")),
                )


def _decoded(content: dict[str, str] | None) -> bytes:
    if not content:
        return b""
    return base64.b64decode(content["$base64"]) if "$base64" in content else b""


def test_the_api_does_what_its_openapi_says(bus: Bus, tmp_path: Path) -> None:
    bus.start_tracker()
    bus.start_api()
    report_dir = tmp_path / "schemathesis"
    report_dir.mkdir()
    started = time.monotonic()
    try:
        run = schemathesis(bus, report_dir)
    finally:
        # Whatever happened, the pools a send may have declared are deleted with the namespace.
        seen = list(exchanges(report_dir))
        for exchange in seen:
            if exchange.path == SEND_PATH and isinstance(exchange.body, dict):
                pool = exchange.body.get("to")
                if isinstance(pool, str) and Topology.is_pool_name(pool):
                    bus.namespace.pools.add(pool)
    print(f"schemathesis: {time.monotonic() - started:.1f} s, {len(seen)} requests")
    print(run.stdout[-20_000:], run.stderr[-5000:])
    assert run.returncode == 0, f"schemathesis found problems:\n{run.stdout[-20_000:]}"
    assert len(seen) > 500  # it did test something

    accepted_tasks: set[str] = set()
    accepted_messages = 0
    for exchange in seen:
        where = (exchange.method, exchange.path, exchange.status, exchange.answer[:300])
        assert exchange.status < 500, where
        if exchange.status >= 400 and exchange.method != "HEAD":
            body = json.loads(exchange.answer)
            assert body["status"] == "error" and isinstance(body["msg"], str), where
            assert "detail" not in body, where
        elif exchange.path == SEND_PATH and exchange.status == 200:
            task_id = json.loads(exchange.answer)["task_id"]
            if task_id is None:
                accepted_messages += 1
            else:
                accepted_tasks.add(task_id)

    # Once the tracker has everything, the log holds only what was accepted.
    tracker = bus.namespace.topo.tracker_queue
    wait_for(lambda: bus.namespace.queue_depth(tracker) == 0, what="the tracker to drain")
    logs = httpx.get(
        f"{bus.api}{LOGS_PATH}", params={"limit": 1000}, headers={API_KEY_HEADER: API_KEY}
    ).json()["logs"]
    sends = {e["task_id"] for e in logs if e["event"] == "send"}
    assert sends <= accepted_tasks
    assert sum(e["event"] == "message" for e in logs) <= accepted_messages
