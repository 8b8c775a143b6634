"""Who sees a task's whole record (services/api/visibility.py), as pure rules."""

from __future__ import annotations

from typing import Any

from services.api.auth import Principal
from services.api.visibility import sees_whole_task
from shared.settings import ApiSettings

TASK: dict[str, Any] = {"sender": "boss", "recipient": "child"}


def _key(name: str, *scopes: str, pools: frozenset[str] | None = None) -> Principal:
    return Principal(name, frozenset(scopes), pools, send_as_any=False)


def _settings(**kw: Any) -> ApiSettings:
    return ApiSettings(api_key="k" * 32, **kw)


def test_a_task_is_whole_to_its_own_readers_only() -> None:
    settings = _settings()
    assert sees_whole_task(_key("boss", "send"), TASK, settings)
    assert sees_whole_task(_key("c1", "callback", pools=frozenset({"child"})), TASK, settings)
    assert sees_whole_task(_key("c2", "callback"), TASK, settings)  # a key of every pool
    assert sees_whole_task(_key("ops", "read"), TASK, settings)
    assert sees_whole_task(_key("root", "admin"), TASK, settings)
    assert not sees_whole_task(None, TASK, settings)
    assert not sees_whole_task(_key("ana", "send"), TASK, settings)
    assert not sees_whole_task(_key("c3", "callback", pools=frozenset({"other"})), TASK, settings)
    assert not sees_whole_task(_key("child", "send"), TASK, settings)  # named as the pool only


def test_the_operator_opens_tasks_to_anyone_with_the_id() -> None:
    assert sees_whole_task(None, TASK, _settings(public_tasks=True))
    assert sees_whole_task(None, TASK, _settings(dev_mode=True))
    assert not sees_whole_task(None, TASK, _settings(dev_mode=True, public_tasks=False))
