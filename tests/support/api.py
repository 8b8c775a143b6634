"""The API over HTTP, as its clients use it: send, a task's record and status, the log."""

from __future__ import annotations

from typing import Any

import httpx

from shared.schemas import FINAL_STATES
from tests.support.bus import API_KEY, Bus, wait_for

AUTH = {"X-Relay-API-Key": API_KEY}


def send(bus: Bus, **body: Any) -> httpx.Response:
    body.setdefault("from", "master")
    body.setdefault("to", "child")
    return httpx.post(f"{bus.api}/api/relay/send", json=body, headers=AUTH, timeout=10)


def send_task(bus: Bus, cmd: str = "echo", **body: Any) -> str:
    response = send(bus, type="task", cmd=cmd, **body)
    assert response.status_code == 200, response.text
    task_id: str = response.json()["task_id"]
    return task_id


def status(bus: Bus, task_id: str) -> str:
    response = httpx.get(f"{bus.api}/api/relay/task-status/{task_id}", timeout=5)
    assert response.status_code == 200, response.text
    state: str = response.json()["task_status"]
    return state


def record(bus: Bus, task_id: str) -> dict[str, Any]:
    response = httpx.get(f"{bus.api}/api/relay/tasks/{task_id}", headers=AUTH, timeout=5)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def logs(bus: Bus, **params: Any) -> list[dict[str, Any]]:
    response = httpx.get(f"{bus.api}/api/relay/logs", params=params, headers=AUTH, timeout=5)
    assert response.status_code == 200, response.text
    entries: list[dict[str, Any]] = response.json()["logs"]
    return entries


def logs_at_least(bus: Bus, n: int, **params: Any) -> list[dict[str, Any]]:
    """The log entries matching `params`, once there are at least `n` of them."""

    def enough() -> list[dict[str, Any]] | None:
        entries = logs(bus, **params)
        return entries if len(entries) >= n else None

    result: list[dict[str, Any]] = wait_for(enough, what=f"{n} log entries for {params}")
    return result


def finished(bus: Bus, task_id: str) -> dict[str, Any] | None:
    body = record(bus, task_id)
    return body if body["task_status"] in FINAL_STATES else None
