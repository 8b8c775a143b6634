"""Task handlers: a registry keyed by `cmd`, the built-ins ported from the seed's mock child."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from services.child.threads import HandlerThreads
from shared.errors import ConfigError
from shared.schemas import MAX_TIMEOUT_S, TaskMessage

Handler = Callable[[TaskMessage], Any] | Callable[[TaskMessage], Awaitable[Any]]


class Registry:
    """Handlers by command; `fallback` runs for a command nobody registered."""

    def __init__(self, fallback: Handler | None = None) -> None:
        self._handlers: dict[str, Handler] = {}
        self._timeouts: dict[str, float] = {}
        self.fallback = fallback

    def handler(self, cmd: str, *, timeout_s: float | None = None) -> Callable[[Handler], Handler]:
        """Decorator: register an async or sync function as the handler of `cmd`.

        `timeout_s`: the command's handlers are cancelled after this long, unless the task says
        otherwise (its `timeout_s`); unset, the child's RELAY_HANDLER_TIMEOUT applies.
        """
        if timeout_s is not None and not (0 < timeout_s <= MAX_TIMEOUT_S):
            raise ConfigError(f"handler {cmd!r}: timeout_s from 0 to {MAX_TIMEOUT_S} seconds")

        def register(func: Handler) -> Handler:
            self._handlers[cmd] = func
            if timeout_s is None:
                self._timeouts.pop(cmd, None)
            else:
                self._timeouts[cmd] = timeout_s
            return func

        return register

    def timeout_of(self, cmd: str | None) -> float | None:
        """The timeout registered with the command's handler, if any."""
        return self._timeouts.get(cmd or "") if (cmd or "") in self._handlers else None

    def update(self, other: Registry) -> None:
        """Take `other`'s handlers (and its fallback, if it has one) over ours."""
        for cmd in other._handlers:
            self._timeouts.pop(cmd, None)
        self._handlers.update(other._handlers)
        self._timeouts.update(other._timeouts)
        if other.fallback is not None:
            self.fallback = other.fallback

    def commands(self) -> list[str]:
        return sorted(self._handlers)

    async def run(self, task: TaskMessage, threads: HandlerThreads) -> Any:
        """Run the handler of the task's command; sync handlers run on one of `threads`."""
        func = self._handlers.get(task.cmd or "", self.fallback)
        if func is None:
            raise LookupError(f"no handler for cmd {task.cmd!r}")
        if inspect.iscoroutinefunction(func):
            return await func(task)
        result = await threads.run(func, task)
        if inspect.isawaitable(result):
            return await result
        return result


#: The registry `convbus child` starts from; `--handlers` adds to it.
builtins = Registry()


@builtins.handler("verify_chart")
async def verify_chart(task: TaskMessage) -> dict[str, Any]:
    """The seed's mock: a chart verification with a summary and a score."""
    user_id = (task.payload or {}).get("user_id")
    return {"summary": "命盘验证完成", "score": 0.85, "user_id": user_id}


@builtins.handler("generate_brief")
async def generate_brief(task: TaskMessage) -> dict[str, Any]:
    """The seed's mock: a short brief of the task's text."""
    text = task.text or ""
    return {"brief": f"简报: {text[:100]}" if text else "简报: 无内容", "length": len(text)}


async def echo(task: TaskMessage) -> dict[str, Any]:
    """Any other command: echo what was sent."""
    return {"echo": {"cmd": task.cmd, "payload": task.payload, "text": task.text}}


builtins.fallback = echo


def load(spec: str) -> Registry:
    """Import `module:attr`, a Registry of user handlers."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"--handlers {spec!r}: expected module:attr")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"--handlers {spec!r}: cannot import {module_name}: {exc}") from exc
    registry = getattr(module, attr, None)
    if not isinstance(registry, Registry):
        raise ConfigError(f"--handlers {spec!r}: {attr} is not a services.child.Registry")
    return registry
