"""What every subcommand needs: its settings, an event loop, and errors as one line."""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Coroutine
from typing import Any, TypeVar

from pydantic import ValidationError

from shared.errors import BusError
from shared.settings import BusSettings

S = TypeVar("S", bound=BusSettings)


class CommandError(BusError):
    """A subcommand cannot go on: said as one line, `convbus <command>: <why>`."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def whole_number(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number of at least 1")
    return int(text)


def settings(cls: type[S], **given: Any) -> S:
    """The settings of `cls` from the environment, `given` (a command's flags) over them;
    invalid ones are a CommandError."""
    try:
        return cls(**given)
    except ValidationError as exc:
        raise CommandError(f"invalid settings: {_one_line(exc, cls)}") from exc


def _one_line(exc: ValidationError, cls: type[BusSettings]) -> str:
    """Each error as `VARIABLE: what is wrong (got 'value')`, on one line."""
    prefix = str(cls.model_config.get("env_prefix", ""))
    said = []
    for error in exc.errors(include_url=False):
        field = str(error["loc"][0]) if error["loc"] else ""
        name = f"{prefix}{field}".upper() if field in cls.model_fields else field
        if not name:  # a rule over several settings: its message names them
            said.append(error["msg"].removeprefix("Value error, "))
            continue
        got = f" (got {error['input']!r:.80})" if isinstance(error["input"], str) else ""
        said.append(f"{name}: {error['msg']}{got}")
    return "; ".join(said)


def run(main: Coroutine[Any, Any, None]) -> None:
    """Run `main` on uvloop."""
    import uvloop

    uvloop.run(main)


async def until_signalled(stop: asyncio.Event, main: asyncio.Future[None]) -> None:
    """Await `main`; SIGINT and SIGTERM set `stop`, which `main` watches to end cleanly."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await main
