"""`convbus`: the parser of every subcommand, and one way out for every error."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from cli import asyncapi, bench, database, dlq, overview, services, tasks
from cli.common import CommandError, settings
from shared.errors import BusError
from shared.logs import setup_logging
from shared.settings import BusSettings


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="convbus",
        description="The Conversation Bus: run its services (api, child, tracker, or all with "
        "up) and operate it.",
    )
    sub = p.add_subparsers(dest="command", required=True)
    for group in (services, tasks, dlq, overview, database, bench, asyncapi):
        group.register(sub)
    return p


def main(argv: Sequence[str] | None = None) -> None:
    """Run a subcommand; any error the bus raises on purpose ends it with one line on stderr,
    `convbus <command>: <why>`, and a non-zero exit (no traceback)."""
    args = parser().parse_args(argv)
    try:
        bus = settings(BusSettings)
        setup_logging(bus.log_level, args.command, bus.log_format)
        args.func(args)
    except BusError as exc:
        print(f"convbus {args.command}: {exc}", file=sys.stderr)
        raise SystemExit(exc.exit_code if isinstance(exc, CommandError) else 1) from None
