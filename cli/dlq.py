"""`convbus dlq`: list, show, replay and purge the pools' parking lots."""

from __future__ import annotations

import argparse
import json
import sys

from cli.common import CommandError, run, settings
from shared.settings import BusSettings


def _confirm_purge(args: argparse.Namespace) -> None:
    if args.yes:
        return
    if not sys.stdin.isatty():
        raise CommandError("drops parked tasks for good; add --yes to confirm")
    where = f"pool {args.pool}" if args.pool else "every pool"
    answer = input(f"Drop every parked task of {where} for good? Type 'yes': ")
    if answer.strip() != "yes":
        raise SystemExit("not purged")


def cmd_dlq(args: argparse.Namespace) -> None:
    """Inspect and replay the parking lots."""
    from shared import amqp
    from shared.db import make_engine
    from shared.parking import ParkingLots
    from shared.readmodel import Reader
    from shared.topology import Topology, declare_core

    bus = settings(BusSettings)
    topo = Topology(bus.namespace)
    if args.action == "purge":
        _confirm_purge(args)
    if args.action == "replay" and not args.all and not args.task_id:
        raise CommandError("give a task id, or --all")

    async def main() -> None:
        if args.pool:
            pools = [args.pool]
        else:
            engine = make_engine(bus.database_url.get_secret_value())
            try:
                pools = await Reader(engine).pools()
            finally:
                await engine.dispose()
        connection = await amqp.connect(bus, "convbus-dlq")
        try:
            publisher = await amqp.open_publisher_channel(connection)
            lots = ParkingLots(connection, publisher, await declare_core(publisher, topo), topo)
            if args.action == "list":
                for parked in await lots.peek(pools, args.limit):
                    print(json.dumps(parked.as_dict(), ensure_ascii=False))
            elif args.action == "show":
                found = await lots.show(args.task_id, pools)
                if found is None:
                    raise CommandError(f"{args.task_id} is not parked")
                print(json.dumps(found.as_dict(), ensure_ascii=False, indent=2))
            elif args.action == "replay":
                count = await lots.replay(pools, None if args.all else args.task_id)
                if count == 0 and not args.all:
                    raise CommandError(f"{args.task_id} is not parked")
                print(f"replayed {count}")
            else:
                print(f"purged {await lots.purge(pools)}")
        finally:
            await connection.close()

    run(main())


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
