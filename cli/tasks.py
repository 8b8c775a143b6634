"""`convbus cancel`: ask the API to cancel a task, as a master would over HTTP."""

from __future__ import annotations

import argparse
import json
import os

from cli.common import CommandError, run, settings
from shared.contract import API_KEY_HEADER, TASKS_PATH
from shared.settings import BusSettings

#: Where the API is unless --api says: the child's setting (the seed's name), then the default.
_DEFAULT_API = "http://127.0.0.1:8008"


def cmd_cancel(args: argparse.Namespace) -> None:
    """POST /api/relay/tasks/{id}/cancel with RELAY_API_KEY; prints the answer."""
    import aiohttp

    key = settings(BusSettings).effective_api_key()
    url = f"{args.api.rstrip('/')}{TASKS_PATH}/{args.task_id}/cancel"

    async def main() -> None:
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=args.timeout)) as http,
                http.post(url, headers={API_KEY_HEADER: key}) as response,
            ):
                text = await response.text()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise CommandError(f"the API at {args.api} did not answer: {exc!r}") from exc
        if response.status != 200:
            try:
                msg = json.loads(text)["msg"]
            except (ValueError, KeyError, TypeError):
                msg = text[:200]
            raise CommandError(f"HTTP {response.status}: {msg}")
        print(text)

    run(main())


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cancel = sub.add_parser(
        "cancel",
        help="cancel a task: it never starts, and a handler running it is cancelled",
    )
    cancel.add_argument("task_id")
    cancel.add_argument(
        "--api",
        default=os.environ.get("RELAY_API_BASE")
        or os.environ.get("LYNKER_API_BASE")
        or _DEFAULT_API,
        help="the API's base URL (default: RELAY_API_BASE, LYNKER_API_BASE, or %(default)s)",
    )
    cancel.add_argument("--timeout", type=float, default=10.0, help="seconds (default 10)")
    cancel.set_defaults(func=cmd_cancel)
