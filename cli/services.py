"""`convbus api`, `child`, `tracker`: one service each; `convbus up`: all of them, here."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import time
from types import FrameType
from typing import Any

from cli.common import CommandError, run, settings, until_signalled, whole_number
from cli.database import migrate_now
from cli.processes import BusProcess, stop_all
from shared.contract import API_IDLE_CONNECTION_SECONDS
from shared.settings import ApiSettings, ChildSettings, TrackerSettings

log = logging.getLogger("convbus")

#: How long `convbus up` gives its processes to stop: more than a child's shutdown grace.
UP_STOP_TIMEOUT = 40.0


def cmd_api(args: argparse.Namespace) -> None:
    import uvicorn

    from services.api.app import create_app, end_streams

    api = settings(ApiSettings)
    app = create_app(api)
    config = uvicorn.Config(
        app,
        host=args.host or api.host,
        port=args.port or api.port,
        log_level=api.log_level.lower(),
        access_log=False,
        log_config=None,  # uvicorn's records go through the bus's own format
        loop="uvloop",
        http="httptools",
        timeout_graceful_shutdown=10,
        timeout_keep_alive=API_IDLE_CONNECTION_SECONDS,
        # uvicorn believes X-Forwarded-For from 127.0.0.1 by default: here only from the
        # proxies the operator names (RELAY_TRUSTED_PROXIES).
        proxy_headers=api.trusted_proxies is not None,
        forwarded_allow_ips=api.trusted_proxies or "",
    )

    class Server(uvicorn.Server):
        """Ends the open streams as soon as it is told to stop (uvicorn would wait for them)."""

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            super().handle_exit(sig, frame)
            with contextlib.suppress(RuntimeError):  # no loop running yet: nothing streams
                asyncio.get_running_loop().call_soon_threadsafe(end_streams, app)

    Server(config).run()


def cmd_child(args: argparse.Namespace) -> None:
    from services.child.handlers import builtins, load
    from services.child.worker import Worker

    registry = builtins
    for spec in args.handlers or []:
        registry.update(load(spec))
    given = {"concurrency": args.concurrency} if args.concurrency is not None else {}
    worker = Worker(settings(ChildSettings, **given), args.pool, registry)

    async def main() -> None:
        await until_signalled(worker.stop, asyncio.ensure_future(worker.run()))

    run(main())


def cmd_webhooks(args: argparse.Namespace) -> None:
    """A child of the bus's own pool: it delivers the webhooks the tracker records."""
    from services.child.webhooks import handlers
    from services.child.worker import Worker
    from shared.topology import WEBHOOK_POOL

    given = {"concurrency": args.concurrency} if args.concurrency is not None else {}
    worker = Worker(settings(ChildSettings, **given), WEBHOOK_POOL, handlers)

    async def main() -> None:
        await until_signalled(worker.stop, asyncio.ensure_future(worker.run()))

    run(main())


def cmd_tracker(args: argparse.Namespace) -> None:
    from services.tracker.consumer import Tracker

    tracker = Tracker(settings(TrackerSettings))

    async def main() -> None:
        await until_signalled(tracker.stop, asyncio.ensure_future(tracker.run()))

    run(main())


def cmd_up(args: argparse.Namespace) -> None:
    """Start the tracker, the API and one child per pool as processes; stop them together."""
    api = settings(ApiSettings)
    api.effective_api_key()  # refuse to start without a key, before starting anything
    # The tracker and the API refuse an outdated schema: bring it up to date first.
    log.info("database schema at revision %s", migrate_now(api))
    port = args.port or api.port
    # The children call back the API started here, unless told otherwise.
    env = {**os.environ}
    env.setdefault("LYNKER_API_BASE", f"http://127.0.0.1:{port}")
    # Each process serves health and metrics on a port of its own: the tracker on its port
    # (RELAY_OPS_PORT, default 8011), the children on the ports after it (0: none at all).
    ops_port = settings(TrackerSettings).ops_port
    procs = [
        BusProcess.start("tracker", ["tracker"], {**env, "RELAY_OPS_PORT": str(ops_port)}),
        BusProcess.start("api", ["api", "--port", str(port)], env, port=port),
    ]
    handler_args = [arg for spec in args.handlers or [] for arg in ("--handlers", spec)]
    for pool in args.pools.split(","):
        for _ in range(args.children):
            child_port = ops_port and ops_port + len(procs) - 1
            procs.append(
                BusProcess.start(
                    f"child {pool.strip()}",
                    ["child", "--pool", pool.strip(), *handler_args],
                    {**env, "RELAY_OPS_PORT": str(child_port)},
                )
            )
    if api.webhook_hosts:  # webhooks on: their deliveries need a child of their own
        child_port = ops_port and ops_port + len(procs) - 1
        procs.append(
            BusProcess.start("webhooks", ["webhooks"], {**env, "RELAY_OPS_PORT": str(child_port)})
        )
    stopping = False

    def stop(*_: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    log.info("convbus up: %d processes; Ctrl-C stops them", len(procs))
    while not stopping and all(p.running for p in procs):
        time.sleep(0.2)
    stop_all(procs, UP_STOP_TIMEOUT)
    failed = [p for p in procs if p.popen.returncode not in (0, -signal.SIGTERM)]
    if failed and not stopping:
        raise CommandError(f"{failed[0].name} exited with {failed[0].popen.returncode}")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
    child.add_argument(
        "--concurrency", type=whole_number, metavar="N",
        help="most handlers run at once, sync or async (RELAY_CONCURRENCY, default 2000)",
    )  # fmt: skip
    child.set_defaults(func=cmd_child)

    webhooks = sub.add_parser(
        "webhooks", help="deliver the webhooks of tasks sent with `notify` (a child of _webhooks)"
    )
    webhooks.add_argument(
        "--concurrency", type=whole_number, metavar="N",
        help="most deliveries at once (RELAY_CONCURRENCY, default 2000)",
    )  # fmt: skip
    webhooks.set_defaults(func=cmd_webhooks)

    tracker = sub.add_parser("tracker", help="record the bus's events in the database")
    tracker.set_defaults(func=cmd_tracker)

    up = sub.add_parser("up", help="run tracker, API and children together on this machine")
    up.add_argument("--pools", default="child", help="comma-separated pools (default: child)")
    up.add_argument("--children", type=int, default=1, help="workers per pool (default 1)")
    up.add_argument("--port", type=int, help="API port (RELAY_PORT, default 8008)")
    up.add_argument("--handlers", action="append", metavar="MODULE:ATTR")
    up.set_defaults(func=cmd_up)
