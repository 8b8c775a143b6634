"""`make bench`: the benchmark's standard cases on a bus of its own, on this machine.

    .venv/bin/python scripts/bench_local.py [--children N] [--sqlite] [--only echo|waiting]
        [--tasks N] [--rate R] [--handler-ms MS] [--waiting-tasks N] [--waiting-tasks-large N]
    .venv/bin/python scripts/bench_local.py [--sqlite] [--catchup [N]] [--memory [N]]

Starts a bus on the local RabbitMQ and PostgreSQL in a fresh namespace and a fresh database
(created, migrated with `convbus migrate`, dropped at the end; `--sqlite`: a SQLite file
instead): the tracker, the API and the children (with the benchmark's handlers,
cli/bench/handlers.py), each serving /readyz and /metrics on a free port, every setting at its
default. Once all are ready it warms the bus up with a few tasks and runs the standard cases
with `convbus bench`:
  echo (issue #6)      N=5000 at C=64, at C=16, and at a fixed rate at C=16 (the latency
                       below saturation);
  waiting (issue #13)  handlers that wait 2 s, async and sync, 2000 tasks and 20000 at C=64:
                       how soon after the last send the last task is done, and the child's RSS.
It prints each result and a summary table per kind, then stops everything and deletes the
namespace's queues and exchanges and the database, also on Ctrl-C or a failure.

`--catchup [N]` and `--memory [N]` run backlog cases instead of the standard ones, each on a
bus of its own (scripts/bench_backlog.py), and print a table and one JSON line each:
  --catchup N (200000)  N events (half task sends, half their callbacks, published as the API
                        does) fill the tracker's queue before the tracker starts; the time until
                        the queue is empty and every task completed in the database, events/s
                        with and without the tracker's startup, its RSS through the catch-up
                        (at 10, 50, 90, 100 % of it; min, max) and its CPU.
  --memory N (100000)   the tracker and the API with no child; 64 clients send N tasks over
                        HTTP; then one child drains them. RSS of each process at 0, 25, 50, 75,
                        100 % of each phase, and the drain's tasks/s. With --drain-handler-ms MS
                        (and --drain-sync), each handler waits MS ms: one child's own capacity
                        for waiting work, with no sends competing for the CPU.
Other RELAY_* settings in the environment reach the bus (to try a tuning), except those set
here: the namespace, the broker, the database, the key, the ports, the log level.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bench_backlog  # scripts/, beside this file
from local_bus import LocalBus

from cli.processes import CONVBUS, BusProcess


def run_case(bus: LocalBus, api: BusProcess, title: str, args: list[str]) -> dict[str, Any] | None:
    """Run `convbus bench` against the bus; its figures, its output passed through."""
    metrics = [arg for p in bus.procs for arg in ("--metrics", f"{p.name}={p.base}/metrics")]
    command = [*CONVBUS, "bench", "--api", api.base, *metrics, *args]
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


def waiting_summary(results: list[tuple[str, dict[str, Any]]]) -> str:
    """The waiting cases as a Markdown table: how soon after the last send all were done."""
    rows = [
        "| case | sends/s | tasks/s | last done after the last send | p50 | p99 | max | errors "
        "| child RSS MB peak / at the end | CPU ms/task api / tracker / child-1 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for title, f in results:
        lat, cpu, n = f["latency_ms"], f["cpu_s"], f["completed"] or 1
        after = f["after_last_send_s"]
        rss = f"{_number(f['rss_peak_mb'].get('child-1'), 1)} / "
        rss += _number(f["rss_end_mb"].get("child-1"), 1)
        per_task = " / ".join(
            _number(cpu.get(s), 1000 / n, 2) for s in ("api", "tracker", "child-1")
        )
        rows.append(
            f"| {title} | {f['sends_per_s']:.0f} | {f['tasks_per_s']:.0f} | "
            f"{'-' if after is None else f'{after:.2f} s'} | "
            + " | ".join(_ms(lat[k]) for k in ("p50", "p99", "max"))
            + f" | {f['errors']} | {rss} | {per_task} |"
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
                    print(
                        f"----- {proc.name} (exit {proc.popen.returncode})\n{proc.output()[-3000:]}"
                    )
            _cleanup("delete the namespace", bus.delete_namespace)
            _cleanup("drop the database", bus.drop_database)
            signal.signal(signal.SIGINT, previous[0])
            signal.signal(signal.SIGTERM, previous[1])
    return not failed


def database_name(args: argparse.Namespace) -> str:
    return "SQLite" if args.sqlite else "PostgreSQL"


def echo_cases(args: argparse.Namespace) -> list[tuple[str, list[str]]]:
    """The cases of issue #6: echo tasks, no wait in the handler."""
    n, rate = str(args.tasks), f"{args.rate:g}"
    return [
        (f"echo N={n} C=64", ["-n", n, "-c", "64"]),
        (f"echo N={n} C=16", ["-n", n, "-c", "16"]),
        (f"echo N={n} C=16 rate={rate}/s", ["-n", n, "-c", "16", "--rate", rate]),
    ]


def waiting_cases(args: argparse.Namespace) -> list[tuple[str, list[str]]]:
    """The cases of issue #13: handlers that wait (a model call), async and sync, at defaults."""
    ms = str(args.handler_ms)
    cases = []
    for n in (args.waiting_tasks, args.waiting_tasks_large):
        for sync in (False, True):
            title = f"wait {args.handler_ms / 1000:g} s {'sync' if sync else 'async'} N={n} C=64"
            flags = ["-n", str(n), "-c", "64", "--handler-ms", ms, "--timeout", "300"]
            cases.append((title, flags + (["--sync"] if sync else [])))
    return cases


def standard_cases(args: argparse.Namespace) -> bool:
    """The standard cases with `convbus bench`; their summary; whether all ran."""
    cases = [("warm-up", ["-n", "200", "-c", "16"])]
    if args.only != "waiting":
        cases += echo_cases(args)
    if args.only != "echo":
        cases += waiting_cases(args)
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
    echo = [(title, f) for title, f in results if f["handler_ms"] is None]
    waiting = [(title, f) for title, f in results if f["handler_ms"] is not None]
    if results:
        print(f"\n{database_name(args)}, {args.children} child(ren), {os.cpu_count()} CPUs")
    if echo:
        print(summary(echo))
    if waiting:
        print(waiting_summary(waiting))
    if results:
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
            figures = asyncio.run(
                bench_backlog.memory(bus, n, args.drain_handler_ms, args.drain_sync)
            )
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
        "--only", choices=("echo", "waiting"), help="only the echo cases, or only the waiting ones"
    )
    p.add_argument("--handler-ms", type=int, default=2000, help="the waiting cases' wait (2000)")
    p.add_argument(
        "--waiting-tasks", type=int, default=2000, help="tasks of the small waiting cases (2000)"
    )
    p.add_argument(
        "--waiting-tasks-large",
        type=int,
        default=20000,
        help="tasks of the large waiting cases (20000)",
    )
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
    p.add_argument(
        "--drain-handler-ms",
        type=int,
        metavar="MS",
        help="with --memory: tasks whose handler waits MS ms, not echo tasks",
    )
    p.add_argument(
        "--drain-sync", action="store_true", help="with --drain-handler-ms: the sync handler"
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
