"""The `convbus` command: api, child, tracker, migrate, and up (all on this machine)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Coroutine, Sequence
from datetime import timedelta
from typing import Any, TypeVar

from pydantic import ValidationError

from shared.durations import parse_duration
from shared.errors import BusError
from shared.logs import setup_logging
from shared.settings import ApiSettings, BusSettings, ChildSettings, TrackerSettings

log = logging.getLogger("convbus")


S = TypeVar("S", bound=BusSettings)


def _settings(cls: type[S]) -> S:
    try:
        return cls()
    except ValidationError as exc:
        raise SystemExit(f"convbus: invalid settings: {exc}") from exc


async def _until_signalled(stop: asyncio.Event, main: asyncio.Future[None]) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await main


def cmd_api(args: argparse.Namespace) -> None:
    import uvicorn

    from services.api.app import create_app

    settings = _settings(ApiSettings)
    host = args.host or settings.host
    port = args.port or settings.port
    try:
        app = create_app(settings)
    except BusError as exc:
        raise SystemExit(f"convbus: {exc}") from exc
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level=settings.log_level.lower(),
        access_log=False,
        log_config=None,  # uvicorn's records go through the bus's own format
        loop="uvloop",
        http="httptools",
        timeout_graceful_shutdown=10,
    )


def cmd_child(args: argparse.Namespace) -> None:
    from services.child.handlers import builtins, load
    from services.child.worker import Worker

    settings = _settings(ChildSettings)
    registry = builtins
    for spec in args.handlers or []:
        registry.update(load(spec))
    worker = Worker(settings, args.pool, registry)

    async def main() -> None:
        await _until_signalled(worker.stop, asyncio.ensure_future(worker.run()))

    _run(main())


def cmd_tracker(args: argparse.Namespace) -> None:
    from services.tracker.consumer import Tracker

    tracker = Tracker(_settings(TrackerSettings))

    async def main() -> None:
        await _until_signalled(tracker.stop, asyncio.ensure_future(tracker.run()))

    _run(main())


def _run(main: Coroutine[Any, Any, None]) -> None:
    import uvloop

    try:
        uvloop.run(main)
    except BusError as exc:
        raise SystemExit(f"convbus: {exc}") from exc


def cmd_dlq(args: argparse.Namespace) -> None:
    """Inspect and replay the parking lots."""
    from shared import amqp
    from shared.db import make_engine
    from shared.parking import ParkingLots
    from shared.readmodel import Reader
    from shared.topology import Topology, declare_core

    settings = _settings(BusSettings)
    topo = Topology(settings.namespace)
    if args.action == "purge" and not args.yes:
        if not sys.stdin.isatty():
            raise SystemExit("convbus dlq purge: drops parked tasks for good; add --yes to confirm")
        where = f"pool {args.pool}" if args.pool else "every pool"
        answer = input(f"Drop every parked task of {where} for good? Type 'yes': ")
        if answer.strip() != "yes":
            raise SystemExit("not purged")

    async def main() -> None:
        if args.pool:
            pools = [args.pool]
        else:
            engine = make_engine(settings.database_url.get_secret_value())
            try:
                pools = await Reader(engine).pools()
            finally:
                await engine.dispose()
        connection = await amqp.connect(settings, "convbus-dlq")
        try:
            publisher = await amqp.open_publisher_channel(connection)
            lots = ParkingLots(connection, publisher, await declare_core(publisher, topo), topo)
            if args.action == "list":
                for parked in await lots.peek(pools, args.limit):
                    print(json.dumps(parked.as_dict(), ensure_ascii=False))
            elif args.action == "show":
                found = await lots.show(args.task_id, pools)
                if found is None:
                    raise SystemExit(f"{args.task_id} is not parked")
                print(json.dumps(found.as_dict(), ensure_ascii=False, indent=2))
            elif args.action == "replay":
                if not args.all and not args.task_id:
                    raise SystemExit("convbus dlq replay: give a task id, or --all")
                count = await lots.replay(pools, None if args.all else args.task_id)
                if count == 0 and not args.all:
                    raise SystemExit(f"{args.task_id} is not parked")
                print(f"replayed {count}")
            else:
                print(f"purged {await lots.purge(pools)}")
        finally:
            await connection.close()

    _run(main())


def cmd_overview(args: argparse.Namespace) -> None:
    """Queue depths, consumers, parked and retrying tasks, tracker lag."""
    from services.overview import fetch_overview, render_table

    settings = _settings(BusSettings)

    async def main() -> None:
        overview = await fetch_overview(settings, timeout=args.timeout)
        if args.json:
            print(json.dumps(overview.as_dict()))
        else:
            print(render_table(overview))

    _run(main())


def _migrate(settings: BusSettings) -> str:
    from shared.schema import migrate_blocking

    try:
        return migrate_blocking(settings.database_url.get_secret_value())
    except BusError as exc:
        raise SystemExit(f"convbus migrate: {exc}") from exc


def cmd_migrate(args: argparse.Namespace) -> None:
    """Upgrade the database's schema to this release's revision."""
    print(f"database schema at revision {_migrate(_settings(BusSettings))}")


def _age(text: str) -> timedelta:
    """The value of `--older-than`: a duration (30d, 12h, 90m) of at least an hour."""
    from shared.retention import MIN_AGE

    try:
        age = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    if age < MIN_AGE:
        raise argparse.ArgumentTypeError(f"{text!r}: prune only what is at least {MIN_AGE} old")
    return age


def _batch_size(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 10_000:
        raise argparse.ArgumentTypeError(f"{text!r}: give a number from 1 to 10000")
    return int(text)


def cmd_prune(args: argparse.Namespace) -> None:
    """Delete finished tasks, their log and keys, and messages older than --older-than."""
    from shared.db import make_engine
    from shared.ids import utcnow
    from shared.retention import prune

    settings = _settings(BusSettings)
    cutoff = utcnow() - args.older_than

    async def main() -> None:
        engine = make_engine(settings.database_url.get_secret_value())
        try:
            counts = await prune(engine, cutoff, dry_run=args.dry_run, batch_size=args.batch_size)
        finally:
            await engine.dispose()
        verb = "would prune" if args.dry_run else "pruned"
        print(f"{verb} {counts} (finished before {cutoff:%Y-%m-%dT%H:%M:%SZ})")

    _run(main())


def _count(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number of at least 1")
    return int(text)


def _positive_number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: give a number above 0")
    return value


def _named_url(text: str) -> tuple[str, str]:
    name, _, url = text.partition("=")
    if not name or not url.startswith(("http://", "https://")):
        raise argparse.ArgumentTypeError(
            f"{text!r}: give NAME=URL, e.g. api=http://127.0.0.1:8008/metrics"
        )
    return name, url


def cmd_bench(args: argparse.Namespace) -> None:
    """Measure a running bus: N tasks sent over HTTP, their completions read from its log."""
    import uvloop

    from services.bench import BenchConfig, render, run_bench

    key = args.key
    if key is None:
        try:
            key = _settings(BusSettings).effective_api_key()
        except BusError as exc:
            raise SystemExit(f"convbus bench: {exc} (or give --key)") from exc
    config = BenchConfig(
        api=args.api.rstrip("/"),
        key=key,
        tasks=args.tasks,
        concurrency=args.concurrency,
        rate=args.rate,
        pool=args.pool,
        cmd=args.cmd,
        sender=args.sender,
        timeout=args.timeout,
        metrics=dict(args.metrics or []),
        poll_interval=args.poll_interval,
    )
    try:
        figures = uvloop.run(run_bench(config))
    except BusError as exc:
        # 2, not 1: the bench did not run (1 is a run with errors).
        print(f"convbus bench: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    if not args.json_only:
        print(render(figures))
    print(json.dumps(figures), flush=True)
    if figures["errors"]:
        raise SystemExit(1)


def cmd_up(args: argparse.Namespace) -> None:
    """Start the tracker, the API and one child per pool as processes; stop them together."""
    api = _settings(ApiSettings)
    api.effective_api_key()  # refuse to start without a key, before starting anything
    # The tracker and the API refuse an outdated schema: bring it up to date first.
    log.info("database schema at revision %s", _migrate(api))
    port = args.port or api.port
    # The children call back the API started here, unless told otherwise.
    os.environ.setdefault("LYNKER_API_BASE", f"http://127.0.0.1:{port}")
    me = [sys.executable, "-m", "services.cli"]
    # Each process serves health and metrics on a port of its own: the tracker on its port
    # (RELAY_OPS_PORT, default 8011), the children on the ports after it (0: none at all).
    ops_port = _settings(TrackerSettings).ops_port
    commands: list[tuple[list[str], dict[str, str]]] = [
        ([*me, "tracker"], {"RELAY_OPS_PORT": str(ops_port)}),
        ([*me, "api", "--port", str(port)], {}),
    ]
    handler_args = [arg for spec in args.handlers or [] for arg in ("--handlers", spec)]
    for pool in args.pools.split(","):
        for _ in range(args.children):
            child_port = ops_port and ops_port + len(commands) - 1
            commands.append(
                (
                    [*me, "child", "--pool", pool.strip(), *handler_args],
                    {"RELAY_OPS_PORT": str(child_port)},
                )
            )
    procs = [subprocess.Popen(cmd, env={**os.environ, **env}) for cmd, env in commands]
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    log.info("convbus up: %d processes; Ctrl-C stops them", len(procs))
    while not stopping and all(p.poll() is None for p in procs):
        time.sleep(0.2)
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 40
    for p in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        if p.poll() is None:
            p.kill()
    failed = [p for p in procs if p.returncode not in (0, -signal.SIGTERM)]
    if failed and not stopping:
        raise SystemExit(f"convbus up: a process exited with {failed[0].returncode}")


def _bench_parser(bench: argparse.ArgumentParser) -> None:
    bench.add_argument("--api", default="http://127.0.0.1:8008", help="the bus's API")
    bench.add_argument("--key", help="a key with the send and read scopes (default: RELAY_API_KEY)")
    bench.add_argument("-n", "--tasks", type=_count, default=5000, help="tasks (default 5000)")
    bench.add_argument(
        "-c", "--concurrency", type=_count, default=64,
        help="clients, one keep-alive connection each (default 64)",
    )  # fmt: skip
    bench.add_argument(
        "--rate", type=_positive_number,
        help="sends a second offered over all clients (default: as fast as they can)",
    )  # fmt: skip
    bench.add_argument("--pool", default="child", help="the pool (default child)")
    bench.add_argument("--cmd", default="echo", help="the task's cmd (default echo)")
    bench.add_argument("--from", dest="sender", default="master", help="default master")
    bench.add_argument(
        "--timeout", type=_positive_number, default=120.0,
        help="seconds to wait for completions after the last send (default 120)",
    )  # fmt: skip
    bench.add_argument(
        "--metrics", action="append", type=_named_url, metavar="NAME=URL",
        help="a service's /metrics to sample its RSS from (repeatable)",
    )  # fmt: skip
    bench.add_argument(
        "--poll-interval", type=_positive_number, default=0.0015, metavar="SECONDS",
        help="pause between reads of the log while it has nothing new (default 0.0015)",
    )  # fmt: skip
    bench.add_argument("--json-only", action="store_true", help="only the JSON line")
    bench.set_defaults(func=cmd_bench)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="convbus", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    api = sub.add_parser("api", help="serve the HTTP API")
    api.add_argument("--host", help="bind address (RELAY_HOST, default 127.0.0.1)")
    api.add_argument("--port", type=int, help="port (RELAY_PORT, default 8008)")
    api.set_defaults(func=cmd_api)

    child = sub.add_parser("child", help="run a child worker for a pool")
    child.add_argument("--pool", required=True, help="the pool (queue) to serve, e.g. child")
    child.add_argument(
        "--handlers",
        action="append",
        metavar="MODULE:ATTR",
        help="a services.child.Registry of your handlers (repeatable)",
    )
    child.set_defaults(func=cmd_child)

    tracker = sub.add_parser("tracker", help="record the bus's events in the database")
    tracker.set_defaults(func=cmd_tracker)

    dlq = sub.add_parser("dlq", help="inspect and replay the parking lots")
    dlq_sub = dlq.add_subparsers(dest="action", required=True)
    for name, text in (
        ("list", "the parked tasks, one JSON object a line"),
        ("show", "one parked task"),
        ("replay", "send parked tasks back to their pool"),
        ("purge", "drop parked tasks for good"),
    ):
        action = dlq_sub.add_parser(name, help=text)
        action.add_argument("--pool", help="one pool (default: every pool the bus knows)")
        if name in ("show", "replay"):
            action.add_argument("task_id", nargs="?" if name == "replay" else None)
        if name == "list":
            action.add_argument("--limit", type=int, default=100)
        if name == "replay":
            action.add_argument("--all", action="store_true", help="every parked task")
        if name == "purge":
            action.add_argument("--yes", action="store_true", help="do not ask")
    dlq.set_defaults(func=cmd_dlq)

    overview = sub.add_parser(
        "overview", help="queue depths, consumers, parked and retrying tasks, tracker lag"
    )
    overview.add_argument("--json", action="store_true", help="one JSON object")
    overview.add_argument("--timeout", type=float, default=10.0, help="seconds (default 10)")
    overview.set_defaults(func=cmd_overview)

    migrate = sub.add_parser("migrate", help="upgrade the database's schema (RELAY_DATABASE_URL)")
    migrate.set_defaults(func=cmd_migrate)

    prune = sub.add_parser(
        "prune", help="delete finished tasks, their log and keys, and messages older than AGE"
    )
    prune.add_argument(
        "--older-than", required=True, type=_age, metavar="AGE", help="e.g. 30d, 12h, 90m"
    )
    prune.add_argument("--dry-run", action="store_true", help="count what would go, delete nothing")
    prune.add_argument(
        "--batch-size", type=_batch_size, default=5000, metavar="N",
        help="records deleted per transaction, 1 to 10000 (default 5000)",
    )  # fmt: skip
    prune.set_defaults(func=cmd_prune)

    up = sub.add_parser("up", help="run tracker, API and children together on this machine")
    up.add_argument("--pools", default="child", help="comma-separated pools (default: child)")
    up.add_argument("--children", type=int, default=1, help="workers per pool (default 1)")
    up.add_argument("--port", type=int, help="API port (RELAY_PORT, default 8008)")
    up.add_argument("--handlers", action="append", metavar="MODULE:ATTR")
    up.set_defaults(func=cmd_up)

    _bench_parser(sub.add_parser("bench", help="measure a running bus: N echo tasks over HTTP"))
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    settings = _settings(BusSettings)
    setup_logging(settings.log_level, args.command, settings.log_format)
    args.func(args)


if __name__ == "__main__":
    main()
