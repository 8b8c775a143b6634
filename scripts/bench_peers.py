"""`make bench-peers`: the bus side by side with what a user would build instead, on this machine.

    .venv/bin/python scripts/bench_peers.py [--rounds R] [--tasks N] [--concurrency C]
        [--only bus,dramatiq,celery]

Each round runs, one after the other, the same echo case with the same load generator
(`convbus bench -n N -c C`, after a warm-up of 200 tasks at C=16) against:
  bus       the bus as `make bench` starts it (PostgreSQL tracker, one child, every default);
  dramatiq  FastAPI in front of Dramatiq 2.2 on the same RabbitMQ, publisher confirms on, one
            worker process with 8 threads, the actor writing the task's completion row to
            PostgreSQL (scripts/peers/dramatiq_peer.py);
  celery    FastAPI in front of Celery 5.7, publisher confirms on, prefork with 4 processes,
            acks late, the SQL result backend in PostgreSQL (scripts/peers/celery_peer.py).
A task counts as done when its completion is visible through the API, for the peers as for the
bus (their API pages through their completions as the bus's log). The peers run from a venv of
their own, `.venv-peers` (`make bench-peers` makes it from scripts/peers/requirements.txt).
Each run has a fresh database and fresh queues, deleted after it. The table at the end gives
every run's tasks/s and the whole machine's CPU per task (every process, broker and database
included), the median per system, and the bus's ratio to each peer.

What the bus does per task that the peers do not: the task's id signed, the child's callback
over HTTP, the send and the callback each in the tracker's log, quorum queues (the peers use
their own default: classic queues).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import bench_local  # scripts/, beside this file
import psycopg
from local_bus import delete_queues  # scripts/, beside this file

from cli.processes import CONVBUS, free_port

ROOT = Path(__file__).resolve().parent.parent
PEERS_PYTHON = ROOT / ".venv-peers" / "bin" / "python"
KINDS = ("bus", "dramatiq", "celery")
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0


def _peer_commands(kind: str, port: int) -> list[list[str]]:
    """The API and the worker of a peer."""
    python = str(PEERS_PYTHON)
    api = [python, "-m", "uvicorn", f"scripts.peers.{kind}_peer:app", "--port", str(port)]
    api += ["--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "warning"]
    if kind == "dramatiq":
        worker = [python, "-m", "dramatiq", "scripts.peers.dramatiq_peer"]
        worker += ["--processes", "1", "--threads", "8"]
    else:
        worker = [python, "-m", "celery", "-A", "scripts.peers.celery_peer:celery", "worker"]
        worker += ["--pool", "prefork", "--concurrency", "4", "--loglevel", "WARNING"]
    return [worker, api]


def _wait_ready(base: str, procs: list[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            raise RuntimeError("a peer process exited while starting")
        try:
            with urllib.request.urlopen(f"{base}/api/relay/logs?limit=1", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the peer's API at {base} was not ready in {READY_TIMEOUT:g} s")


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    for proc in procs:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def bench(base: str, key: str, args: list[str], env: dict[str, str]) -> dict[str, Any] | None:
    """`convbus bench` against `base`: its figures (the JSON line), its table passed through."""
    command = [*CONVBUS, "bench", "--api", base, *args]
    done = subprocess.run(
        command, env={**env, "RELAY_API_KEY": key}, stdout=subprocess.PIPE, text=True, check=False
    )
    figures = None
    for line in done.stdout.splitlines():
        if line.startswith("{"):
            figures = json.loads(line)
        else:
            print(line)
    if figures is not None:
        print(json.dumps(figures))
    if done.returncode not in (0, 1):
        raise RuntimeError(f"convbus bench exited with {done.returncode}")
    return figures


def run_peer(kind: str, opts: argparse.Namespace) -> dict[str, Any] | None:
    """One run of a peer on a fresh database and queue, cleaned up after."""
    unique = uuid.uuid4().hex[:10]
    database, queue = f"peer_{kind}_{unique}", f"peer_{kind}_{unique}"
    with psycopg.connect(opts.pg_admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{database}"')
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = dict(os.environ)
    env.update(
        PEER_AMQP_URL=opts.amqp_url,
        PEER_DATABASE_URL=f"{opts.pg_admin_url.rsplit('/', 1)[0]}/{database}",
        PEER_QUEUE=queue,
        PYTHONPATH=str(ROOT),
    )
    procs: list[subprocess.Popen[bytes]] = []
    figures = None
    with tempfile.TemporaryDirectory(prefix="convbus-peer-") as workdir:
        try:
            for index, command in enumerate(_peer_commands(kind, port)):
                log = open(Path(workdir) / f"{index}.log", "wb")  # noqa: SIM115 (closed with the process)
                procs.append(
                    subprocess.Popen(
                        command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )  # fmt: skip
            _wait_ready(base, procs)
            time.sleep(1)  # the worker's own start, after the API's: it must not have failed
            if any(p.poll() is not None for p in procs):
                raise RuntimeError(f"a process of the {kind} peer exited while starting")
            print(f"\n=== {kind}: warm-up", flush=True)
            bench(base, "peer", ["-n", "200", "-c", "16"], env)
            case = ["-n", str(opts.tasks), "-c", str(opts.concurrency)]
            print(f"\n=== {kind}: convbus bench {' '.join(case)}", flush=True)
            figures = bench(base, "peer", case, env)
        finally:
            _stop(procs)
            if figures is None or figures["errors"]:
                for index in range(len(procs)):
                    print((Path(workdir) / f"{index}.log").read_text(errors="replace")[-3000:])
            delete_queues(opts.amqp_url, [queue, f"{queue}.DQ", f"{queue}.XQ"], [queue])
            with psycopg.connect(opts.pg_admin_url, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    return figures


def run_bus(opts: argparse.Namespace) -> dict[str, Any] | None:
    """One run of the bus, as `make bench` starts it."""
    found: list[dict[str, Any]] = []
    case = ["-n", str(opts.tasks), "-c", str(opts.concurrency)]

    def work(bus: bench_local.LocalBus) -> None:
        api = bus.start_bus(1)
        bench_local.run_case(bus, api, "bus: warm-up", ["-n", "200", "-c", "16"])
        figures = bench_local.run_case(bus, api, f"bus: convbus bench {' '.join(case)}", case)
        bus.check_alive()
        if figures is not None:
            found.append(figures)

    bench_args = argparse.Namespace(
        amqp_url=opts.amqp_url, pg_admin_url=opts.pg_admin_url, sqlite=False
    )
    bench_local.on_own_bus(bench_args, "side by side", work)
    return found[0] if found else None


def _cpu_per_task(figures: dict[str, Any]) -> str:
    """The whole machine's CPU over the run (every process: the system's, the broker, the
    database, the load generator) per task completed."""
    machine, rate = figures["machine"], figures["tasks_per_s"]
    if not machine.get("cpu_busy") or not rate:
        return "-"
    return f"{machine['cpu_busy'] * machine['cpus'] * 1000 / rate:.2f}"


def render(runs: dict[str, list[dict[str, Any]]], opts: argparse.Namespace) -> str:
    rows = [
        f"echo N={opts.tasks} C={opts.concurrency}, everything on this machine "
        f"({os.cpu_count()} CPUs)",
        "| system | tasks/s, each run | median | p50 / p99 of the median run "
        "| machine CPU ms per task | errors |",
        "|---|---|---|---|---|---|",
    ]
    medians: dict[str, float] = {}
    for kind, figures in runs.items():
        if not figures:
            continue
        rates = [f["tasks_per_s"] or 0.0 for f in figures]
        medians[kind] = statistics.median(rates)
        middle = sorted(figures, key=lambda f: f["tasks_per_s"] or 0.0)[len(figures) // 2]
        lat = {k: v or 0.0 for k, v in middle["latency_ms"].items()}
        rows.append(
            f"| {kind} | {', '.join(f'{r:.0f}' for r in rates)} | {medians[kind]:.0f} | "
            f"{lat['p50']:.0f} / {lat['p99']:.0f} ms | "
            f"{', '.join(_cpu_per_task(f) for f in figures)} | "
            f"{sum(f['errors'] for f in figures)} |"
        )
    if "bus" in medians:
        for kind, median in medians.items():
            if kind != "bus" and median:
                rows.append(f"bus / {kind}: {medians['bus'] / median:.2f}x")
    speeds = sorted(
        s for fs in runs.values() for f in fs if (s := f["machine"].get("cpu_speed_ms"))
    )
    if speeds:
        rows.append(
            f"CPU speed (a fixed Python loop, lower is faster): {speeds[0]}-{speeds[-1]} ms"
        )
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=2, help="runs of each system, in turn (2)")
    p.add_argument("--tasks", type=int, default=5000)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--only", default=",".join(KINDS), help="bus,dramatiq,celery (all)")
    p.add_argument("--amqp-url", default="amqp://guest:guest@127.0.0.1:5672/")
    p.add_argument("--pg-admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    opts = p.parse_args()
    kinds = [k for k in opts.only.split(",") if k]
    if unknown := set(kinds) - set(KINDS):
        p.error(f"unknown systems {sorted(unknown)}: choose among {', '.join(KINDS)}")
    if set(kinds) - {"bus"} and not PEERS_PYTHON.exists():
        sys.exit(f"{PEERS_PYTHON} is missing: `make bench-peers` makes it")
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
    for round_ in range(opts.rounds):
        for kind in kinds if round_ % 2 == 0 else reversed(kinds):
            figures = run_bus(opts) if kind == "bus" else run_peer(kind, opts)
            if figures is not None:
                runs[kind].append(figures)
    print("\n" + render(runs, opts))


if __name__ == "__main__":
    main()
