"""`convbus migrate` and `convbus prune`: the database's schema and its retention."""

from __future__ import annotations

import argparse
from datetime import timedelta

from cli.common import run, settings
from shared.durations import parse_duration
from shared.settings import BusSettings


def migrate_now(bus: BusSettings) -> str:
    """Upgrade the database's schema to this release's revision; the revision."""
    from shared.migrate import migrate_blocking

    return migrate_blocking(bus.database_url.get_secret_value())


def cmd_migrate(args: argparse.Namespace) -> None:
    """Upgrade the database's schema to this release's revision."""
    print(f"database schema at revision {migrate_now(settings(BusSettings))}")


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

    bus = settings(BusSettings)
    cutoff = utcnow() - args.older_than

    async def main() -> None:
        engine = make_engine(bus.database_url.get_secret_value())
        try:
            counts = await prune(engine, cutoff, dry_run=args.dry_run, batch_size=args.batch_size)
        finally:
            await engine.dispose()
        verb = "would prune" if args.dry_run else "pruned"
        print(f"{verb} {counts} (finished before {cutoff:%Y-%m-%dT%H:%M:%SZ})")

    run(main())


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
