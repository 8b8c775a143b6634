"""services/child/handlers.py: the handler registry and the built-in handlers."""

from __future__ import annotations

import threading
from collections.abc import Coroutine
from datetime import UTC, datetime
from typing import Any

import pytest

from services.child.handlers import Registry, builtins, echo, load
from services.child.threads import HandlerThreads
from shared.errors import ConfigError
from shared.schemas import TaskMessage

THREADS = HandlerThreads(4, idle_seconds=1)


def task(cmd: str | None = "work", **fields: Any) -> TaskMessage:
    body: dict[str, Any] = {
        "from": "master",
        "to": "child",
        "task_id": "t_unit",
        "created_at": datetime(2025, 1, 1, tzinfo=UTC),
        "cmd": cmd,
    }
    return TaskMessage.model_validate(body | fields)


async def test_async_handler_runs() -> None:
    registry = Registry()

    @registry.handler("work")
    async def work(t: TaskMessage) -> dict[str, Any]:
        return {"got": t.payload}

    assert await registry.run(task(payload={"a": 1}), THREADS) == {"got": {"a": 1}}


async def test_sync_handler_runs_in_a_thread() -> None:
    registry = Registry()
    loop_thread = threading.get_ident()
    seen: list[int] = []

    @registry.handler("work")
    def work(t: TaskMessage) -> str:
        seen.append(threading.get_ident())
        return f"sync {t.cmd}"

    assert await registry.run(task(), THREADS) == "sync work"
    assert seen and seen[0] != loop_thread


async def test_sync_handler_returning_an_awaitable_is_awaited() -> None:
    registry = Registry()

    async def later(t: TaskMessage) -> str:
        return "awaited"

    @registry.handler("work")
    def work(t: TaskMessage) -> Coroutine[Any, Any, str]:
        return later(t)  # a plain function that hands back a coroutine

    assert await registry.run(task(), THREADS) == "awaited"


async def test_handler_exceptions_propagate() -> None:
    registry = Registry()

    @registry.handler("work")
    async def work(t: TaskMessage) -> None:
        raise KeyError("user_id")

    with pytest.raises(KeyError):
        await registry.run(task(), THREADS)


def test_handler_decorator_returns_the_function() -> None:
    registry = Registry()

    async def work(t: TaskMessage) -> None:
        return None

    assert registry.handler("work")(work) is work
    assert registry.commands() == ["work"]


async def test_unknown_cmd_runs_the_fallback() -> None:
    async def fallback(t: TaskMessage) -> str:
        return f"fallback {t.cmd}"

    registry = Registry(fallback=fallback)
    assert await registry.run(task("nobody"), THREADS) == "fallback nobody"


async def test_task_without_cmd_runs_the_fallback() -> None:
    registry = Registry(fallback=lambda t: "fb")
    assert await registry.run(task(None), THREADS) == "fb"


async def test_unknown_cmd_without_fallback_is_a_lookup_error() -> None:
    registry = Registry()
    with pytest.raises(LookupError, match="nobody"):
        await registry.run(task("nobody"), THREADS)


async def test_update_merges_handlers_and_takes_the_other_fallback() -> None:
    ours = Registry(fallback=lambda t: "our fallback")
    ours.handler("a")(lambda t: "our a")
    ours.handler("b")(lambda t: "our b")
    theirs = Registry(fallback=lambda t: "their fallback")
    theirs.handler("b")(lambda t: "their b")
    theirs.handler("c")(lambda t: "their c")

    ours.update(theirs)

    assert ours.commands() == ["a", "b", "c"]
    assert await ours.run(task("a"), THREADS) == "our a"
    assert await ours.run(task("b"), THREADS) == "their b"
    assert await ours.run(task("c"), THREADS) == "their c"
    assert await ours.run(task("zzz"), THREADS) == "their fallback"


async def test_update_without_fallback_keeps_ours() -> None:
    ours = Registry(fallback=lambda t: "our fallback")
    ours.update(Registry())
    assert await ours.run(task("zzz"), THREADS) == "our fallback"


def test_update_does_not_touch_the_other_registry() -> None:
    ours = Registry()
    ours.handler("a")(lambda t: 1)
    theirs = Registry()
    theirs.update(ours)
    theirs.handler("b")(lambda t: 2)
    assert ours.commands() == ["a"]


def test_builtins_commands() -> None:
    assert builtins.commands() == ["generate_brief", "verify_chart"]
    assert builtins.fallback is echo


async def test_builtin_verify_chart() -> None:
    result = await builtins.run(task("verify_chart", payload={"user_id": "u1"}), THREADS)
    assert result == {"summary": "命盘验证完成", "score": 0.85, "user_id": "u1"}


async def test_builtin_verify_chart_without_payload() -> None:
    result = await builtins.run(task("verify_chart"), THREADS)
    assert isinstance(result, dict)
    assert result["user_id"] is None


async def test_builtin_generate_brief() -> None:
    result = await builtins.run(task("generate_brief", text="x" * 150), THREADS)
    assert result == {"brief": "简报: " + "x" * 100, "length": 150}


async def test_builtin_generate_brief_without_text() -> None:
    result = await builtins.run(task("generate_brief"), THREADS)
    assert result == {"brief": "简报: 无内容", "length": 0}


async def test_builtin_fallback_echoes() -> None:
    result = await builtins.run(task("anything", payload={"k": [1]}, text="hi"), THREADS)
    assert result == {"echo": {"cmd": "anything", "payload": {"k": [1]}, "text": "hi"}}


def test_load_a_registry() -> None:
    assert load("services.child.handlers:builtins") is builtins


@pytest.mark.parametrize("spec", ["", "services.child.handlers", "services.child.handlers:", ":x"])
def test_load_with_a_bad_spec_is_a_config_error(spec: str) -> None:
    with pytest.raises(ConfigError, match="expected module:attr"):
        load(spec)


def test_load_a_missing_module_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="cannot import"):
        load("no_such_module_for_convbus_tests:registry")


@pytest.mark.parametrize(
    "spec", ["services.child.handlers:echo", "services.child.handlers:no_such_attr", "os:path"]
)
def test_load_an_attr_that_is_not_a_registry_is_a_config_error(spec: str) -> None:
    with pytest.raises(ConfigError, match=r"is not a services\.child\.Registry"):
        load(spec)


def test_a_command_registers_its_timeout_and_a_later_registration_replaces_it() -> None:
    registry = Registry(fallback=echo)
    registry.handler("slow", timeout_s=30)(echo)
    registry.handler("quick")(echo)
    assert (registry.timeout_of("slow"), registry.timeout_of("quick")) == (30, None)
    assert registry.timeout_of("unknown") is None  # the fallback has none of its own
    other = Registry()
    other.handler("slow")(echo)
    registry.update(other)
    assert registry.timeout_of("slow") is None


@pytest.mark.parametrize("bad", [0, -1, 7 * 24 * 3600 + 1])
def test_a_command_timeout_out_of_range_is_refused(bad: float) -> None:
    with pytest.raises(ConfigError, match="timeout_s"):
        Registry().handler("slow", timeout_s=bad)


class _Reports:
    def __init__(self) -> None:
        self.reported: list[tuple[float | None, str | None]] = []

    def report(self, fraction: float | None, note: str | None) -> None:
        self.reported.append((fraction, note))


def test_progress_reports_to_the_run_it_is_called_from() -> None:
    from services.child.progress import progress, reporting_to

    reports = _Reports()
    with pytest.raises(RuntimeError, match="handler"):
        progress(0.5)
    with reporting_to(reports):  # type: ignore[arg-type]
        progress(0.5, "half")
        progress(1)
        progress(note="x" * 2000 + "\x00")
        for bad in (1.5, -0.1, float("nan"), True, "0.5"):
            with pytest.raises(ValueError, match="0 to 1"):
                progress(bad)  # type: ignore[arg-type]
    assert reports.reported == [(0.5, "half"), (1.0, None), (None, "x" * 1000)]
