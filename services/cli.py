"""The `convbus` command: api, child, tracker, and up (all three on this machine)."""

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
from typing import Any, TypeVar

from pydantic import ValidationError

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
    from services.api.queries import Reader
    from shared import amqp
    from shared.db import make_engine
    from shared.parking import ParkingLots
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


def cmd_up(args: argparse.Namespace) -> None:
    """Start the tracker, the API and one child per pool as processes; stop them together."""
    api = _settings(ApiSettings)
    api.effective_api_key()  # refuse to start without a key, before starting anything
    port = args.port or api.port
    # The children call back the API started here, unless told otherwise.
    os.environ.setdefault("LYNKER_API_BASE", f"http://127.0.0.1:{port}")
    me = [sys.executable, "-m", "services.cli"]
    commands = [[*me, "tracker"], [*me, "api", "--port", str(port)]]
    handler_args = [arg for spec in args.handlers or [] for arg in ("--handlers", spec)]
    for pool in args.pools.split(","):
        commands += [[*me, "child", "--pool", pool.strip(), *handler_args]] * args.children
    procs = [subprocess.Popen(cmd) for cmd in commands]
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

    up = sub.add_parser("up", help="run tracker, API and children together on this machine")
    up.add_argument("--pools", default="child", help="comma-separated pools (default: child)")
    up.add_argument("--children", type=int, default=1, help="workers per pool (default 1)")
    up.add_argument("--port", type=int, help="API port (RELAY_PORT, default 8008)")
    up.add_argument("--handlers", action="append", metavar="MODULE:ATTR")
    up.set_defaults(func=cmd_up)
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    setup_logging(os.environ.get("RELAY_LOG_LEVEL", "INFO"), f"{args.command}")
    args.func(args)


if __name__ == "__main__":
    main()
