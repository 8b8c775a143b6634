"""`make bench`: the benchmark's standard cases on a bus of its own, on this machine.

    .venv/bin/python scripts/bench_local.py [--children N] [--sqlite] [--tasks N] [--rate R]
    .venv/bin/python scripts/bench_local.py [--sqlite] [--catchup [N]] [--memory [N]]

Starts a bus on the local RabbitMQ and PostgreSQL in a fresh namespace and a fresh database
(created, migrated with `convbus migrate`, dropped at the end; `--sqlite`: a SQLite file
instead): the tracker, the API and the children, each serving /readyz and /metrics on a free
port. Once all are ready it warms the bus up with a few tasks, runs the standard cases of
issue #6 with `convbus bench` (N=5000 at C=64, at C=16, and at a fixed rate at C=16 for the
latency below saturation), prints each result and a summary, then stops everything and deletes
the namespace's queues and exchanges and the database, also on Ctrl-C or a failure.

`--catchup [N]` and `--memory [N]` run backlog cases instead of the standard ones, each on a
bus of its own (scripts/bench_backlog.py), and print a table and one JSON line each:
  --catchup N (200000)  N events (half task sends, half their callbacks, published as the API
                        does) fill the tracker's queue before the tracker starts; the time until
                        the queue is empty and every task completed in the database, events/s
                        with and without the tracker's startup, its RSS through the catch-up
                        (at 10, 50, 90, 100 % of it; min, max) and its CPU.
  --memory N (100000)   the tracker and the API with no child; 64 clients send N tasks over
                        HTTP; then one child drains them. RSS of each process at 0, 25, 50, 75,
                        100 % of each phase, and the drain's tasks/s.
Other RELAY_* settings in the environment reach the bus (to try a tuning), except those set
here: the namespace, the broker, the database, the key, the ports, the log level.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bench_backlog  # scripts/, beside this file
import pika
import psycopg

from shared.retry import RetryPolicies
from shared.topology import Topology

CLI = [sys.executable, "-m", "services.cli"]
POOL = "child"
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 40.0  # more than a child's shutdown grace (30 s)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Process:
    """A process of the bus, with where it serves /readyz and /metrics."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    base: str

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


@dataclass
class LocalBus:
    """A namespace, a database and the bus's processes on this machine, and their cleanup."""

    amqp_url: str
    pg_admin_url: str | None  # None: SQLite
    workdir: Path
    namespace: str = field(default_factory=lambda: f"bench{uuid.uuid4().hex[:10]}")
    key: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    api_port: int = field(default_factory=free_port)
    database: str | None = None
    procs: list[Process] = field(default_factory=list)

    def database_url(self) -> str:
        if self.pg_admin_url is None:
            return f"sqlite:///{self.workdir / 'bus.db'}"
        return f"{self.pg_admin_url.rsplit('/', 1)[0]}/{self.database}"

    def create_database(self) -> None:
        if self.pg_admin_url is None:
            return
        name = f"convbus_bench_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.pg_admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        self.database = name

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            RELAY_NAMESPACE=self.namespace,
            RELAY_AMQP_URL=self.amqp_url,
            RELAY_DATABASE_URL=self.database_url(),
            RELAY_API_KEY=self.key,
            LYNKER_API_BASE=f"http://127.0.0.1:{self.api_port}",  # where the children call back
            RELAY_DEV_MODE="false",
            RELAY_LOG_LEVEL="WARNING",
            RELAY_STATE_DIR=str(self.workdir / "child-state"),
            # The benchmark measures the bus, not the per-key limit on sends.
            RELAY_SEND_RATE="0",
        )
        env.update(extra)
        return env

    def migrate(self) -> None:
        subprocess.run([*CLI, "migrate"], env=self.env(), check=True, stdout=subprocess.DEVNULL)

    def start(self, name: str, *args: str, port: int | None = None) -> Process:
        """Start `convbus ARGS`; its ops port (or the API's) is `port`, else a free one."""
        port = port or free_port()
        log = self.workdir / f"{name}.log"
        with log.open("wb") as out:
            popen = subprocess.Popen(
                [*CLI, *args],
                env=self.env(RELAY_OPS_PORT=str(port)),
                stdout=out,
                stderr=subprocess.STDOUT,
                # Its own session: Ctrl-C reaches this script, which stops the bus in order.
                start_new_session=True,
            )
        proc = Process(name, popen, log, f"http://127.0.0.1:{port}")
        self.procs.append(proc)
        return proc

    def start_bus(self, children: int) -> Process:
        """Tracker, children and API; returns the API once every process is ready."""
        self.start("tracker", "tracker")
        api = self.start("api", "api", "--port", str(self.api_port), port=self.api_port)
        for n in range(children):
            self.start(f"child-{n + 1}", "child", "--pool", POOL)
        for proc in self.procs:
            wait_ready(proc)
        return api

    def check_alive(self) -> None:
        for proc in self.procs:
            if proc.popen.poll() is not None:
                raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}")

    def stop(self) -> None:
        # The children first, while the API still takes their callbacks; the tracker last.
        for proc in reversed(self.procs):
            if proc.popen.poll() is None:
                proc.popen.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(STOP_TIMEOUT)
            if proc.popen.poll() is None:
                print(f"bench: {proc.name} did not stop in time; killed", file=sys.stderr)
                proc.popen.kill()
                proc.popen.wait(5)

    def delete_namespace(self) -> None:
        topo = Topology(self.namespace)
        exchanges, queues = topo.names([POOL])
        policy = RetryPolicies().default
        delays = {policy.delay_ms(a) for a in range(1, policy.max_retries + 1)}
        queues += [topo.delay_queue(POOL, d) for d in delays if d]
        connection = pika.BlockingConnection(pika.URLParameters(self.amqp_url))
        try:
            channel = connection.channel()
            for queue in queues:
                channel.queue_delete(queue)
            for exchange in exchanges:
                channel.exchange_delete(exchange)
        finally:
            connection.close()

    def drop_database(self) -> None:
        if self.pg_admin_url is None or self.database is None:
            return
        with psycopg.connect(self.pg_admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')


def wait_ready(proc: Process) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.tail()}")
        try:
            with urllib.request.urlopen(f"{proc.base}/readyz", timeout=2) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{proc.name} not ready after {READY_TIMEOUT:g} s:\n{proc.tail()}")


def run_case(bus: LocalBus, api: Process, title: str, args: list[str]) -> dict[str, Any] | None:
    """Run `convbus bench` against the bus; its figures, its output passed through."""
    metrics = [arg for p in bus.procs for arg in ("--metrics", f"{p.name}={p.base}/metrics")]
    command = [*CLI, "bench", "--api", api.base, *metrics, *args]
    print(f"\n=== {title}: convbus bench {' '.join(args)}", flush=True)
    # The key reaches the bench through its environment (RELAY_API_KEY), not its command line.
    done = subprocess.run(command, env=bus.env(), stdout=subprocess.PIPE, text=True, check=False)
    figures: dict[str, Any] | None = None
    for line in done.stdout.splitlines():
        if line.startswith("{"):
            figures = json.loads(line)
        else:
            print(line)
    if figures is not None:
        print(json.dumps(figures))
    if done.returncode not in (0, 1):  # 1: the run had errors, reported in its figures
        raise RuntimeError(f"convbus bench exited with {done.returncode}")
    return figures


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms"


def summary(results: list[tuple[str, dict[str, Any]]]) -> str:
    """The cases as a Markdown table (the README's form)."""
    services = ("api", "tracker", "child-1", "bench")
    rows = [
        "| case | sends/s | tasks/s | p50 | p95 | p99 | max | errors "
        "| peak RSS MB api / tracker / child-1 | CPU ms/task api / tracker / child-1 / bench |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for title, f in results:
        lat, rss, cpu, n = f["latency_ms"], f["rss_peak_mb"], f["cpu_s"], f["completed"] or 1
        mbs = " / ".join(_number(rss.get(s), 1) for s in services[:3])
        per_task = " / ".join(_number(cpu.get(s), 1000 / n, 2) for s in services)
        rows.append(
            f"| {title} | {f['sends_per_s']:.0f} | {f['tasks_per_s']:.0f} | "
            + " | ".join(_ms(lat[k]) for k in ("p50", "p95", "p99", "max"))
            + f" | {f['errors']} | {mbs} | {per_task} |"
        )
    speeds = sorted(f["machine"].get("cpu_speed_ms") or 0 for _, f in results)
    if speeds:
        rows.append(
            f"CPU speed (a fixed Python loop, lower is faster): {speeds[0]}-{speeds[-1]} ms"
        )
    return "\n".join(rows)


def _number(value: float | None, scale: float, digits: int = 0) -> str:
    return "-" if value is None else f"{value * scale:.{digits}f}"


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _cleanup(what: str, step: Callable[[], None]) -> None:
    """Run one cleanup step; a failure is reported and does not skip the others."""
    try:
        step()
    except Exception as exc:  # any failure: say so, carry on cleaning
        print(f"bench: could not {what}: {exc!r}", file=sys.stderr)


def on_own_bus(args: argparse.Namespace, what: str, work: Callable[[LocalBus], None]) -> bool:
    """Run `work` on a fresh namespace and database, cleaned up after; whether it succeeded."""
    previous = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with tempfile.TemporaryDirectory(prefix="convbus-bench-") as workdir:
        bus = LocalBus(args.amqp_url, None if args.sqlite else args.pg_admin_url, Path(workdir))
        print(f"bench: namespace {bus.namespace}, {database_name(args)}, {what}")
        failed = True
        try:
            bus.create_database()
            bus.migrate()
            work(bus)
            failed = False
        except (KeyboardInterrupt, RuntimeError, subprocess.CalledProcessError) as exc:
            print(f"\nbench: stopped: {exc!r}", file=sys.stderr)
        finally:
            # A second Ctrl-C or a SIGTERM must not cut the cleanup short.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            bus.stop()
            if failed:
                for proc in bus.procs:
                    print(f"----- {proc.name} (exit {proc.popen.returncode})\n{proc.tail()}")
            _cleanup("delete the namespace", bus.delete_namespace)
            _cleanup("drop the database", bus.drop_database)
            signal.signal(signal.SIGINT, previous[0])
            signal.signal(signal.SIGTERM, previous[1])
    return not failed


def database_name(args: argparse.Namespace) -> str:
    return "SQLite" if args.sqlite else "PostgreSQL"


def standard_cases(args: argparse.Namespace) -> bool:
    """The cases of issue #6 with `convbus bench`; their summary; whether all ran."""
    cases = [
        ("warm-up", ["-n", "200", "-c", "16"]),
        (f"N={args.tasks} C=64", ["-n", str(args.tasks), "-c", "64"]),
        (f"N={args.tasks} C=16", ["-n", str(args.tasks), "-c", "16"]),
        (
            f"N={args.tasks} C=16 rate={args.rate:g}/s",
            ["-n", str(args.tasks), "-c", "16", "--rate", f"{args.rate:g}"],
        ),
    ]
    load_before = os.getloadavg()
    results: list[tuple[str, dict[str, Any]]] = []

    def work(bus: LocalBus) -> None:
        api = bus.start_bus(args.children)
        for title, case in cases:
            figures = run_case(bus, api, title, case)
            bus.check_alive()
            if figures is not None and title != "warm-up":
                results.append((title, figures))

    ok = on_own_bus(args, f"{args.children} child(ren)", work)
    load_after = os.getloadavg()
    if results:
        print(f"\n{database_name(args)}, {args.children} child(ren), {os.cpu_count()} CPUs")
        print(summary(results))
        print(f"load average before {load_before}, after {load_after}")
    return ok


def backlog_case(args: argparse.Namespace, case: str, n: int) -> bool:
    """One backlog case (bench_backlog) on a bus of its own: its table and its JSON line."""
    database = database_name(args)

    def work(bus: LocalBus) -> None:
        load_before = os.getloadavg()[0]
        if case == "catchup":
            figures = asyncio.run(bench_backlog.catchup(bus, n))
            table = bench_backlog.render_catchup(figures, database)
        else:
            figures = asyncio.run(bench_backlog.memory(bus, n))
            table = bench_backlog.render_memory(figures, database)
        figures["database"] = database
        figures["machine"] = {
            "cpus": os.cpu_count(),
            "load_before": round(load_before, 2),
            "load_after": round(os.getloadavg()[0], 2),
        }
        print(f"\n{table}\n{json.dumps(figures)}")

    return on_own_bus(args, f"{case} N={n}", work)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--children", type=int, default=1, help="children for the pool (default 1)")
    p.add_argument("--sqlite", action="store_true", help="the tracker on SQLite, not PostgreSQL")
    p.add_argument("--tasks", type=int, default=5000, help="tasks per case (default 5000)")
    p.add_argument("--rate", type=float, default=300, help="the fixed-rate case's sends/s (300)")
    p.add_argument(
        "--catchup",
        type=int,
        nargs="?",
        const=200_000,
        metavar="N",
        help="instead: the tracker's catch-up of N queued events (default N 200000)",
    )
    p.add_argument(
        "--memory",
        type=int,
        nargs="?",
        const=100_000,
        metavar="N",
        help="instead: RSS while N tasks wait with no child, then drain (default N 100000)",
    )
    p.add_argument("--amqp-url", default="amqp://guest:guest@127.0.0.1:5672/")
    p.add_argument("--pg-admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = p.parse_args()
    for flag in ("catchup", "memory"):
        if getattr(args, flag) is not None and getattr(args, flag) < 2:
            p.error(f"--{flag}: N must be at least 2")
    # SIGTERM ends the script as Ctrl-C does: through the cleanup.
    signal.signal(signal.SIGTERM, _interrupted)
    if args.catchup is None and args.memory is None:
        ok = standard_cases(args)
    else:
        ok = args.catchup is None or backlog_case(args, "catchup", args.catchup)
        if args.memory is not None and ok:  # after a failure, stop there
            ok = backlog_case(args, "memory", args.memory)
    if not ok:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
