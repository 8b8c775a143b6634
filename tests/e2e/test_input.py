"""Input required: a handler asks a question and the task waits, holding no child; the answer
(POST /tasks/{id}/input) sends it back to its pool, and the handler sees every question and
answer so far. Who may answer, a second answer, and an answer to a task that does not wait;
a child killed while its task waits, and an answer given while no child runs; a cancel and a
deadline while it waits."""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.test_keys import KEYS, keys_json
from tests.support.api import AUTH, finished, logs, record, send_task
from tests.support.bus import Bus, wait_for

DATABASES = pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
ON_POSTGRESQL = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
ON_SQLITE = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def answer(
    bus: Bus, task_id: str, value: Any, key: str | None = None, **body: Any
) -> httpx.Response:
    headers = AUTH if key is None else {"X-Relay-API-Key": key}
    return httpx.post(
        f"{bus.api}/api/relay/tasks/{task_id}/input",
        json={"answer": value, **body},
        headers=headers,
        timeout=10,
    )


def waiting(bus: Bus, task_id: str, round_: int = 1) -> dict[str, Any]:
    """The task's record once it waits on question `round_`."""

    def asked() -> dict[str, Any] | None:
        row = record(bus, task_id)
        asking = row.get("asking")
        return row if asking is not None and asking["round"] == round_ else None

    found: dict[str, Any] = wait_for(asked, timeout=30, what=f"{task_id} to ask question {round_}")
    return found


def ended(bus: Bus, task_id: str) -> dict[str, Any]:
    row: dict[str, Any] = wait_for(lambda: finished(bus, task_id), timeout=30, what="the end")
    return row


def child(bus: Bus, **env: str) -> Any:
    return bus.start_child("child", "--handlers", "bus_handlers:handlers", **env)


@DATABASES
def test_a_task_asks_twice_and_completes_with_both_answers(bus: Bus, tmp_path: Path) -> None:
    bus.start_all()
    runs = tmp_path / "runs"
    questions = ["Which date?", "Confirm the price?"]
    task_id = send_task(
        bus, "ask", payload={"questions": questions, "counter": str(runs)}, conversation_id="c-1"
    )
    # A wait answers when the task asks, not only when it ends.
    status = httpx.get(
        f"{bus.api}/api/relay/task-status/{task_id}", params={"wait": 30}, timeout=40
    ).json()
    assert status["task_status"] == "input_required"
    row = waiting(bus, task_id)
    assert row["asking"]["question"] == "Which date?" and row["asking"]["to"] == "master"
    assert row["task_status"] == "input_required"
    # The question is in the inbox of the one asked.
    inbox = httpx.get(f"{bus.api}/api/relay/inbox/master", headers=AUTH, timeout=5).json()
    asked = [e for e in inbox["entries"] if e["task_id"] == task_id]
    assert [e["event"] for e in asked] == ["input_required"]
    assert asked[0]["question"] == "Which date?" and asked[0]["round"] == 1

    first = answer(bus, task_id, {"date": "2026-12-24"})
    assert first.status_code == 200, first.text
    assert first.json() == {"status": "ok", "task_id": task_id, "round": 1}
    waiting(bus, task_id, 2)
    assert answer(bus, task_id, "yes").status_code == 200
    done = ended(bus, task_id)
    assert done["task_status"] == "completed", done
    assert done["result"] == {"answers": [{"date": "2026-12-24"}, "yes"],
                              "asked": ["master", "master"]}  # fmt: skip
    assert done["asking"] is None
    assert runs.read_text() == "3"  # once per question, once more with both answers
    events = [e["event"] for e in logs(bus, task_id=task_id)]
    assert events.count("input_required") == 2 and events.count("input") == 2, events
    assert events[0] == "send" and events[-1] == "callback", events
    answered = [e for e in logs(bus, task_id=task_id) if e["event"] == "input"]
    assert [(e["round"], e["answer"], e["from"]) for e in answered] == [
        (1, {"date": "2026-12-24"}, "master"), (2, "yes", "master"),
    ]  # fmt: skip


@ON_POSTGRESQL
def test_one_answer_per_question(bus: Bus) -> None:
    bus.start_all(RELAY_KEYS=keys_json())
    task_id = send_task(bus, "ask", payload={"to": "user:u123"})
    waiting(bus, task_id)

    # Only the party asked (or a key that sends as anyone, or an admin) answers.
    refused = answer(bus, task_id, "mine", key=KEYS["master"])
    assert refused.status_code == 403 and "user:u123" in refused.json()["msg"], refused.text
    as_other = answer(bus, task_id, "mine", key=KEYS["user"], **{"from": "master"})
    assert as_other.status_code == 403, as_other.text

    # Answers at once: one is the answer, the others are refused.
    colours = ["red", "blue", "green", "amber", "teal", "plum"]
    start = threading.Barrier(len(colours))
    results: list[httpx.Response] = []

    def answer_with(colour: str) -> None:
        start.wait(timeout=10)
        results.append(answer(bus, task_id, colour, KEYS["user"]))

    threads = [threading.Thread(target=answer_with, args=(c,)) for c in colours]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    codes = sorted(r.status_code for r in results)
    assert codes == [200] + [409] * (len(colours) - 1), [r.text for r in results]
    winner = next(r for r in results if r.status_code == 200)
    for loser in (r for r in results if r.status_code == 409):
        assert re.search("answered already|not waiting", loser.json()["msg"]), loser.text
    done = ended(bus, task_id)
    assert done["task_status"] == "completed"
    chosen = done["result"]["answers"]
    assert len(chosen) == 1 and chosen[0] in colours
    # The same answer again is a retry (its 200 may have been lost): 200, nothing changes.
    again = answer(bus, task_id, chosen[0], KEYS["user"])
    assert again.status_code == 200 and again.json() == winner.json(), again.text
    # Another answer now: the task waits for none.
    late = answer(bus, task_id, "black", KEYS["user"])
    assert late.status_code == 409 and "not waiting for input" in late.json()["msg"], late.text
    assert len([e for e in logs(bus, task_id=task_id) if e["event"] == "input"]) == 1
    # A task that never asked, and one the bus never issued.
    plain = send_task(bus, "echo")
    ended(bus, plain)
    assert answer(bus, plain, "x").status_code == 409
    assert answer(bus, "t_nosuchtask", "x").status_code == 404
    # A question to a party that cannot be named fails the task, saying why.
    unaskable = send_task(bus, "ask", payload={"to": "not a name!"})
    refused = ended(bus, unaskable)
    assert refused["task_status"] == "failed" and "InputRequired refused" in refused["error"]


@ON_SQLITE
def test_an_answer_given_while_no_child_runs_is_served_by_the_next(
    bus: Bus, tmp_path: Path
) -> None:
    bus.start_tracker()
    bus.start_api()
    first_child = child(bus)
    runs = tmp_path / "runs"
    task_id = send_task(bus, "ask", payload={"counter": str(runs)})
    waiting(bus, task_id)
    first_child.kill()  # SIGKILL: the task waits on the bus, not in the child
    assert answer(bus, task_id, 42).status_code == 200
    queue = bus.namespace.topo.pool_queue("child")
    wait_for(lambda: bus.namespace.queue_depth(queue) == 1, what="the task back in its queue")
    assert record(bus, task_id)["task_status"] == "pending"
    child(bus)
    done = ended(bus, task_id)
    assert done["task_status"] == "completed" and done["result"]["answers"] == [42], done
    assert runs.read_text() == "2"


@ON_SQLITE
def test_a_cancel_or_a_deadline_ends_a_task_that_waits(bus: Bus) -> None:
    bus.start_all(RELAY_LEASE_SWEEP_EVERY="0.5")
    canceled_id = send_task(bus, "ask")
    expiring_id = send_task(bus, "ask", ttl_s=3)
    waiting(bus, canceled_id)
    waiting(bus, expiring_id)
    cancel = httpx.post(f"{bus.api}/api/relay/tasks/{canceled_id}/cancel", headers=AUTH, timeout=10)
    assert cancel.status_code == 200, cancel.text
    assert ended(bus, canceled_id)["task_status"] == "canceled"
    late = answer(bus, canceled_id, "too late")
    assert late.status_code == 409 and "canceled" in late.json()["msg"], late.text
    expired = ended(bus, expiring_id)
    assert expired["task_status"] == "expired" and "no answer by its deadline" in expired["error"]
    assert answer(bus, expiring_id, "too late").status_code == 409
    assert expired["asking"] is None
