"""`convbus bench`: measure a running bus over HTTP (the run itself is in cli/bench/run.py)."""

from __future__ import annotations

import argparse
import json

from cli.common import CommandError, settings, whole_number
from shared.errors import BusError
from shared.settings import BusSettings


def _whole_ms(text: str) -> int:
    from cli.bench.handlers import MAX_MS

    if not text.isdigit() or int(text) > MAX_MS:
        raise argparse.ArgumentTypeError(f"{text!r}: give whole milliseconds, 0 to {MAX_MS}")
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

    from cli.bench.run import BenchConfig, render, run_bench

    key = args.key
    if key is None:
        try:
            key = settings(BusSettings).effective_api_key()
        except BusError as exc:
            raise CommandError(f"{exc} (or give --key)") from exc
    if args.handler_ms is not None and args.cmd is not None:
        raise CommandError("give --cmd or --handler-ms, not both (--handler-ms sends bench.wait)")
    if args.sync and args.handler_ms is None:
        raise CommandError("--sync needs --handler-ms: the wait its blocking handler makes")
    config = BenchConfig(
        api=args.api.rstrip("/"),
        key=key,
        tasks=args.tasks,
        concurrency=args.concurrency,
        rate=args.rate,
        pool=args.pool,
        cmd=args.cmd or "echo",
        handler_ms=args.handler_ms,
        sync=args.sync,
        sender=args.sender,
        timeout=args.timeout,
        metrics=dict(args.metrics or []),
        poll_interval=args.poll_interval,
    )
    try:
        figures = uvloop.run(run_bench(config))
    except BusError as exc:
        # 2, not 1: the bench did not run (1 is a run with errors).
        raise CommandError(str(exc), exit_code=2) from exc
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    if not args.json_only:
        print(render(figures))
    print(json.dumps(figures), flush=True)
    if figures["errors"]:
        raise SystemExit(1)


def _bench_parser(bench: argparse.ArgumentParser) -> None:
    bench.add_argument("--api", default="http://127.0.0.1:8008", help="the bus's API")
    bench.add_argument("--key", help="a key with the send and read scopes (default: RELAY_API_KEY)")
    bench.add_argument(
        "-n", "--tasks", type=whole_number, default=5000, help="tasks (default 5000)"
    )
    bench.add_argument(
        "-c", "--concurrency", type=whole_number, default=64,
        help="clients, one keep-alive connection each (default 64)",
    )  # fmt: skip
    bench.add_argument(
        "--rate", type=_positive_number,
        help="sends a second offered over all clients (default: as fast as they can)",
    )  # fmt: skip
    bench.add_argument("--pool", default="child", help="the pool (default child)")
    bench.add_argument("--cmd", help="the task's cmd (default echo)")
    bench.add_argument(
        "--handler-ms", type=_whole_ms, metavar="MS",
        help="tasks whose handler waits MS ms, as a model call does (cli/bench/handlers.py: "
        "start the child with --handlers cli.bench.handlers:registry)",
    )  # fmt: skip
    bench.add_argument(
        "--sync", action="store_true",
        help="with --handler-ms: the blocking handler (time.sleep on a thread), not the async one",
    )  # fmt: skip
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


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    _bench_parser(sub.add_parser("bench", help="measure a running bus: N tasks over HTTP"))
