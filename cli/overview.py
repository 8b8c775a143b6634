"""`convbus overview`: per pool, what is ready, unacked, parked and retrying; the tracker's lag."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from cli.common import run, settings
from shared.settings import BusSettings

if TYPE_CHECKING:  # aiohttp and the rest only when the command runs: `convbus api` loads this
    from shared.overview import Overview


def render_table(overview: Overview) -> str:
    """The overview as an operator reads it: a table of pools, the delay queues, the tracker."""
    lines = [f"namespace {overview.namespace} (vhost {overview.vhost})", ""]
    header = ("pool", "ready", "unacked", "consumers", "parked", "retrying", "high")
    rows = [
        (p.pool, *map(str, (p.ready, p.unacked, p.consumers, p.parked, p.retrying, p.high)))
        for p in overview.pools
    ]
    if rows:
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
        for row in [header, *rows]:
            cells = [row[0].ljust(widths[0])]
            cells += [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
            lines.append("  ".join(cells).rstrip())
    else:
        lines.append("no pools (no pool queue of this namespace on the broker)")
    delays = [d for p in overview.pools for d in p.delays]
    if delays:
        lines += ["", "retry (delay) queues:"]
        width = max(len(d.queue) for d in delays)
        lines += [f"  {d.queue.ljust(width)}  {d.messages}" for d in delays]
    t = overview.tracker
    lines += [
        "",
        f"tracker: lag {t.lag} (ready {t.ready}, unacked {t.unacked}), "
        f"consumers {t.consumers}, parked {t.parked}",
    ]
    if t.consumers == 0:
        lines.append("  no tracker is consuming: nothing is being recorded")
    c = overview.control
    lines.append(f"cancels: followed by {c.consumers} children, {c.messages} waiting")
    return "\n".join(lines)


def cmd_overview(args: argparse.Namespace) -> None:
    """Queue depths, consumers, parked and retrying tasks, tracker lag."""
    from shared.overview import fetch_overview

    bus = settings(BusSettings)

    async def main() -> None:
        overview = await fetch_overview(bus, timeout=args.timeout)
        if args.json:
            print(json.dumps(overview.as_dict()))
        else:
            print(render_table(overview))

    run(main())


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    overview = sub.add_parser(
        "overview", help="queue depths, consumers, parked and retrying tasks, tracker lag"
    )
    overview.add_argument("--json", action="store_true", help="one JSON object")
    overview.add_argument("--timeout", type=float, default=10.0, help="seconds (default 10)")
    overview.set_defaults(func=cmd_overview)
