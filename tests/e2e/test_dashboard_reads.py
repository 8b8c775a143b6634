"""The dashboard's reads over HTTP, without a browser: who may read them, what bad queries get,
and the overview on a broker without the management API (this machine's: the page says why the
queue depths are missing and shows the rest)."""

from __future__ import annotations

import hashlib
import json
import uuid

import httpx

from tests.support.api import AUTH, send_task
from tests.support.bus import Bus, wait_for

READ_KEY = "read-" + uuid.uuid4().hex
SEND_KEY = "send-" + uuid.uuid4().hex


def _keys_json() -> str:
    keys = [("watcher", READ_KEY, ["read"]), ("master", SEND_KEY, ["send"])]
    return json.dumps(
        [{"name": name, "sha256": hashlib.sha256(key.encode()).hexdigest(), "scopes": scopes}
         for name, key, scopes in keys]
    )  # fmt: skip


def _get(bus: Bus, path: str, key: str | None, **params: str) -> httpx.Response:
    headers = {"X-Relay-API-Key": key} if key is not None else {}
    return httpx.get(f"{bus.api}/api/relay{path}", params=params, headers=headers, timeout=10)


def test_the_dashboards_reads(bus: Bus) -> None:
    bus.start_all(RELAY_KEYS=_keys_json(), RELAY_MANAGEMENT_URL="http://127.0.0.1:1/")
    first = send_task(bus, "nap", payload={"seconds": 0}, conversation_id="c-reads")
    second = send_task(bus, "boom", payload={"why": "on purpose"}, conversation_id="c-reads")

    def listed() -> list[str] | None:
        page = _get(bus, "/tasks", READ_KEY, conversation_id="c-reads").json()
        states = {t["task_id"]: t["task_status"] for t in page["tasks"]}
        return None if states != {first: "completed", second: "failed"} else list(states)

    assert wait_for(listed, what="both tasks ended") == [second, first]  # newest first

    # Who may read: an operator's key; a key without `read` or `admin` gets 403, none 401.
    for path in ("/tasks", "/overview"):
        assert _get(bus, path, SEND_KEY).status_code == 403
        assert _get(bus, path, None).status_code == 401
    me = _get(bus, "/me", SEND_KEY).json()
    assert (me["name"], me["scopes"], me["send_as_any"]) == ("master", ["send"], False)
    assert _get(bus, "/me", None).status_code == 401

    # Filters and pages.
    failed = _get(bus, "/tasks", READ_KEY, state="failed", pool="child").json()
    assert [t["task_id"] for t in failed["tasks"]] == [second]
    assert failed["tasks"][0]["error"].endswith("boom: on purpose")
    page = _get(bus, "/tasks", READ_KEY, conversation_id="c-reads", limit="1").json()
    assert [t["task_id"] for t in page["tasks"]] == [second]
    rest = _get(bus, "/tasks", READ_KEY, conversation_id="c-reads", limit="1",
                **page["next_page"]).json()  # fmt: skip
    assert [t["task_id"] for t in rest["tasks"]] == [first]
    last = _get(bus, "/tasks", READ_KEY, conversation_id="c-reads", limit="1", **rest["next_page"])
    assert last.json() == {"status": "ok", "tasks": [], "next_page": None}
    assert "payload" not in page["tasks"][0]  # a list row carries no payload

    # Bad queries: the contract's 400, naming the parameter.
    for params, status, words in [
        ({"state": "lost"}, 400, "invalid query parameter state"),
        ({"limit": "0"}, 400, "limit must be an integer from 1 to 1000"),
        ({"since": "yesterday"}, 400, "invalid query parameter since"),
        ({"pool": "no spaces"}, 400, "invalid query parameter pool"),
        ({"sort": "created_at"}, 400, "sort"),
    ]:
        answer = _get(bus, "/tasks", READ_KEY, **params)
        assert answer.status_code == status, (params, answer.text)
        assert words in answer.json()["msg"], (params, answer.text)

    # The overview without a management API: the queue depths say why they are missing, the
    # database's counts are there.
    overview = _get(bus, "/overview", READ_KEY).json()
    assert overview["tracker"] is None
    assert (
        "queue depths unavailable: cannot reach RabbitMQ's management API"
        in (overview["queues_error"])
    )
    child = next(p for p in overview["pools"] if p["pool"] == "child")
    assert child["queues"] is None
    assert child["sent_last_minute"] >= 2 and child["failed_last_minute"] >= 1
    assert [f["task_id"] for f in overview["recent_failures"]] == [second]
    assert set(overview["unfinished"]) == {
        "scheduled", "pending", "processing", "retrying", "input_required",
    }  # fmt: skip

    # The pages themselves: served with their policy, to anyone (they hold no data).
    ui = httpx.get(f"{bus.api}/ui", timeout=10)
    assert ui.status_code == 200 and "app.js" in ui.text
    assert "unsafe-inline" not in ui.headers["content-security-policy"]
    assert (
        httpx.get(f"{bus.api}/ui/app.js", timeout=10)
        .headers["content-type"]
        .startswith("text/javascript")
    )
    for missing in ("nothing.js", "..", ".hidden.css", "ui.py"):
        assert httpx.get(f"{bus.api}/ui/{missing}", timeout=10).status_code == 404, missing
    assert _get(bus, "/tasks", AUTH["X-Relay-API-Key"]).status_code == 200  # the root key
