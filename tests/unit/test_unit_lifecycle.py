"""services/tracker/lifecycle.py: what one event does to one task row."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.tracker.lifecycle import Entry, TaskRow, _with, apply, resumed
from shared.ids import processing_event_id
from shared.schemas import Event, TaskMessage

T0 = datetime(2025, 1, 1, tzinfo=UTC)
TASK_ID = "t_unit"


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def send(ts: float = 0, **fields: Any) -> Entry:
    body: dict[str, Any] = {
        "from": "master",
        "to": "child",
        "cmd": "verify_chart",
        "payload": {"user_id": 7},
        "text": "hello",
        "conversation_id": "conv-1",
        "task_id": TASK_ID,
        "created_at": at(ts),
    }
    body.update(fields)
    return Entry.from_task(TaskMessage.model_validate(body))


def event(name: str, ts: float, **fields: Any) -> Entry:
    return Entry.from_event(
        Event.model_validate(
            {"event_id": f"e_{name}_{ts}", "event": name, "ts": at(ts), "task_id": TASK_ID} | fields
        )
    )


def processing(ts: float, attempt: int = 1, child_id: str = "w1") -> Entry:
    return event("processing", ts, attempt=attempt, child_id=child_id)


def retry(ts: float, attempt: int = 1, error: str = "boom") -> Entry:
    return event("retry", ts, attempt=attempt, error=error)


def callback(ts: float, status: str = "done", **fields: Any) -> Entry:
    return event("callback", ts, status=status, child_id="w1", **fields)


def run(entries: Iterable[Entry], row: TaskRow | None = None) -> TaskRow | None:
    for entry in entries:
        row = apply(row, entry)
    return row


def final_row(entries: Iterable[Entry]) -> TaskRow:
    row = run(entries)
    assert row is not None
    return row


def assert_send_fields(row: TaskRow) -> None:
    assert row.send_seen is True
    assert row.sender == "master"
    assert row.recipient == "child"
    assert row.type == "task"
    assert row.cmd == "verify_chart"
    assert row.payload == {"user_id": 7}
    assert row.text == "hello"
    assert row.conversation_id == "conv-1"
    assert row.created_at == at(0)


def test_entry_from_task_carries_the_send() -> None:
    entry = send()
    assert entry.event == "send"
    assert entry.event_id == TASK_ID
    assert entry.task_id == TASK_ID
    assert entry.sender == "master"
    assert entry.recipient == "child"
    assert entry.conversation_id == "conv-1"
    assert entry.data == {
        "type": "task",
        "cmd": "verify_chart",
        "payload": {"user_id": 7},
        "text": "hello",
    }


def test_entry_from_event_keeps_only_the_event_fields_in_data() -> None:
    entry = processing(1, attempt=2, child_id="w9")
    assert entry.event == "processing"
    assert entry.ts == at(1)
    assert entry.data == {"child_id": "w9", "attempt": 2}


def test_send_creates_a_pending_row_with_the_send_fields() -> None:
    row = final_row([send()])
    assert row.state == "pending"
    assert row.task_id == TASK_ID
    assert row.attempts == 0
    assert row.child_id is None
    assert row.completed_at is None
    assert row.updated_at == at(0)
    assert row.final is False
    assert_send_fields(row)


def test_processing_moves_to_processing_with_attempts_and_child() -> None:
    row = final_row([send(), processing(1, attempt=1, child_id="w1")])
    assert row.state == "processing"
    assert row.attempts == 1
    assert row.child_id == "w1"
    assert row.updated_at == at(1)


def test_callback_done_completes_with_result() -> None:
    row = final_row([send(), processing(1), callback(2, result={"score": 0.85})])
    assert row.state == "completed"
    assert row.final is True
    assert row.result == {"score": 0.85}
    assert row.error is None
    assert row.completed_at == at(2)
    assert row.attempts == 1
    assert row.child_id == "w1"


def test_callback_failed_fails_with_error() -> None:
    row = final_row([send(), processing(1), callback(2, status="failed", error="KeyError: x")])
    assert row.state == "failed"
    assert row.final is True
    assert row.error == "KeyError: x"
    assert row.completed_at == at(2)


def test_callback_without_processing_counts_one_attempt() -> None:
    row = final_row([send(), callback(1)])
    assert row.state == "completed"
    assert row.attempts == 1


def test_retry_then_processing_of_the_next_attempt() -> None:
    row = final_row([send(), processing(1, 1), retry(2, 1, "timeout")])
    assert row.state == "retrying"
    assert row.error == "timeout"
    row = final_row([send(), processing(1, 1), retry(2, 1), processing(3, 2, "w2")])
    assert row.state == "processing"
    assert row.attempts == 2
    assert row.child_id == "w2"


def test_dead_fails_the_task() -> None:
    row = final_row([send(), processing(1), event("dead", 2, error="poison message")])
    assert row.state == "failed"
    assert row.error == "poison message"
    assert row.completed_at == at(2)


@pytest.mark.parametrize(
    "late",
    [
        processing(10, attempt=2, child_id="w2"),
        retry(10, attempt=2, error="late retry"),
        callback(10, status="failed", error="second callback"),
        callback(10, status="done", result="other"),
        event("dead", 10, error="late dead"),
    ],
    ids=["processing", "retry", "callback-failed", "callback-done", "dead"],
)
@pytest.mark.parametrize("status", ["done", "failed"])
def test_final_states_are_final(late: Entry, status: str) -> None:
    done = final_row([send(), processing(1), callback(2, status=status, result="r", error="e")])
    after = apply(done, late)
    assert after is not None
    # Only the count of attempts may still grow (news of an attempt that raced behind).
    assert replace(after, attempts=done.attempts) == done


def test_callback_before_send_then_send_fills_the_send_fields() -> None:
    early = final_row([callback(1, result="r")])
    assert early.state == "completed"
    assert early.send_seen is False
    assert early.sender is None
    row = final_row([callback(1, result="r"), send(0)])
    assert row.state == "completed"
    assert row.result == "r"
    assert row.completed_at == at(1)
    assert_send_fields(row)


def test_processing_before_send_then_send() -> None:
    row = final_row([processing(1, child_id="w1"), send(0)])
    assert row.state == "processing"
    assert row.child_id == "w1"
    assert row.attempts == 1
    assert_send_fields(row)


def test_duplicate_send_keeps_the_first_send_fields() -> None:
    row = final_row([send(0), send(5, cmd="other", text="changed", to="child_bazi")])
    assert row.state == "pending"
    assert_send_fields(row)


def test_send_after_progress_does_not_reset_the_state() -> None:
    row = final_row([send(0), processing(1), send(0)])
    assert row.state == "processing"
    assert row.attempts == 1


def test_older_processing_after_a_newer_one_does_not_regress() -> None:
    row = final_row([send(), processing(3, attempt=2, child_id="w2"), processing(4, 1, "w1")])
    assert row.state == "processing"
    assert row.attempts == 2
    assert row.child_id == "w2"


def test_older_retry_after_a_newer_processing_does_not_regress() -> None:
    row = final_row([send(), processing(3, attempt=2, child_id="w2"), retry(4, attempt=1)])
    assert row.state == "processing"
    assert row.attempts == 2
    assert row.error is None


def test_updated_at_never_goes_back() -> None:
    row = final_row([send(0), processing(5), retry(2, attempt=1)])
    assert row.updated_at == at(5)


@pytest.mark.parametrize("name", ["message", "ack"])
def test_message_and_ack_events_leave_the_row_unchanged(name: str) -> None:
    row = final_row([send(), processing(1)])
    assert apply(row, event(name, 2, ack_by="master")) is row


@pytest.mark.parametrize("name", ["message", "ack"])
def test_message_and_ack_events_create_no_row(name: str) -> None:
    assert apply(None, event(name, 2)) is None


def test_event_without_task_id_concerns_no_task() -> None:
    message = Entry.from_event(
        Event.model_validate(
            {"event_id": "e_m", "event": "message", "ts": at(0), "from": "master", "to": "user"}
        )
    )
    assert message.task_id is None
    assert apply(None, message) is None


def test_every_order_of_send_processing_callback_ends_completed_with_send_fields() -> None:
    entries = [send(0), processing(1, attempt=1, child_id="w1"), callback(2, result="ok")]
    for order in itertools.permutations(entries):
        row = final_row(order)
        names = [e.event for e in order]
        assert row.state == "completed", names
        assert row.result == "ok", names
        assert row.attempts == 1, names
        assert row.child_id == "w1", names
        assert row.completed_at == at(2), names
        assert row.updated_at == at(2), names
        assert_send_fields(row)


def _two_attempts() -> list[Entry]:
    return [
        send(0),
        processing(1, attempt=1, child_id="w1"),
        retry(2, attempt=1),
        processing(3, attempt=2, child_id="w2"),
        event("callback", 4, status="failed", child_id="w2", error="handler error"),
    ]


def test_every_order_with_a_retry_ends_failed_with_the_same_outcome() -> None:
    for order in itertools.permutations(_two_attempts()):
        row = final_row(order)
        names = [(e.event, e.data.get("attempt")) for e in order]
        assert row.state == "failed", names
        assert row.error == "handler error", names
        assert row.child_id == "w2", names
        assert row.completed_at == at(4), names
        assert row.updated_at == at(4), names
        assert_send_fields(row)


def test_every_order_with_a_retry_counts_the_same_attempts() -> None:
    attempts = {final_row(order).attempts for order in itertools.permutations(_two_attempts())}
    assert attempts == {2}


def _event(kind: str, seconds: float, **fields: Any) -> Entry:
    return Entry.from_event(
        Event.model_validate(
            {"event_id": f"{kind}-{seconds}", "event": kind, "task_id": "t1",
             "ts": T0 + timedelta(seconds=seconds), **fields}
        )
    )  # fmt: skip


def test_retry_shows_retrying_with_the_error_and_the_next_run() -> None:
    next_at = T0 + timedelta(seconds=30)
    row = final_row(
        [send(), processing(1), _event("retry", 2, attempt=1, error="e1", next_at=next_at)]
    )
    assert row.state == "retrying" and row.error == "e1" and row.next_attempt_at == next_at
    row = apply(row, processing(3, attempt=2))
    assert row is not None and row.state == "processing" and row.next_attempt_at is None


def test_dead_fails_the_task_and_only_a_replay_takes_it_out() -> None:
    row = final_row([send(), processing(1), _event("dead", 2, attempt=3, error="exhausted")])
    assert row.state == "failed" and row.error == "exhausted" and row.completed_at is not None
    for late in (processing(3, attempt=4), callback(4, status="done")):
        after = apply(row, late)
        assert after is not None and after.state == "failed"
    replayed = apply(row, _event("replay", 5))
    assert replayed is not None
    assert replayed.state == "pending" and replayed.attempts == 0 and replayed.completed_at is None
    done = apply(apply(replayed, processing(6, attempt=1)), callback(7))
    assert done is not None and done.state == "completed"


def test_replay_does_not_touch_a_completed_task() -> None:
    done = final_row([send(), processing(1), callback(2)])
    after = apply(done, _event("replay", 3))
    assert after is not None and after.state == "completed"


def test_a_callback_naming_its_run_yields_the_runs_processing_entry() -> None:
    done = callback(5, attempt=2, run_id="r_abc", started_at=at(4))
    started = done.run_started()
    assert started is not None
    assert started.event == "processing" and started.ts == at(4)
    assert started.event_id == processing_event_id(TASK_ID, "r_abc")
    assert started.data == {"child_id": "w1", "attempt": 2}
    assert "run_id" not in done.data and done.data["started_at"] == at(4).isoformat().replace(
        "+00:00", "Z"
    )
    row = run([send(0), started, done])
    assert row is not None and row.state == "completed" and row.attempts == 2


def test_the_runs_processing_entry_is_the_one_a_slow_child_publishes() -> None:
    published = Entry.from_event(
        Event(
            event_id=processing_event_id(TASK_ID, "r_abc"),
            event="processing",
            ts=at(4),
            task_id=TASK_ID,
            child_id="w1",
            attempt=1,
        )
    )
    derived = callback(5, attempt=1, run_id="r_abc", started_at=at(4)).run_started()
    assert derived is not None and derived.event_id == published.event_id
    # Another run of the task, or another task, never shares the id.
    assert processing_event_id(TASK_ID, "r_abd") != published.event_id
    assert processing_event_id("t_other", "r_abc") != published.event_id


@pytest.mark.parametrize(
    "fields",
    [{}, {"run_id": "r_abc"}, {"started_at": at(4)}],
    ids=["no run", "no start", "no run id"],
)
def test_no_processing_entry_without_the_whole_run(fields: dict[str, Any]) -> None:
    assert callback(5, **fields).run_started() is None


def test_only_callbacks_yield_a_processing_entry() -> None:
    assert event("retry", 5, attempt=1, run_id="r_abc", started_at=at(4)).run_started() is None
    assert send(0).run_started() is None


def test_a_changed_row_equals_dataclasses_replace_and_leaves_the_old_one() -> None:
    old = apply(None, send())
    assert old is not None
    new = _with(old, state="processing", attempts=2)
    assert new == replace(old, state="processing", attempts=2)
    assert (old.state, old.attempts) == ("pending", 0)
    with pytest.raises(AssertionError):
        _with(old, stat="processing")


# Leases of long runs and progress reports


def lease(ts: float, attempt: int = 1, lease_s: float = 60) -> Entry:
    return event("lease", ts, attempt=attempt, child_id="w1", lease_s=lease_s)


def progress(ts: float, attempt: int = 1, **fields: Any) -> Entry:
    return event("progress", ts, attempt=attempt, child_id="w1", **fields)


def lease_expired(ts: float, attempt: int = 1) -> Entry:
    return event("lease_expired", ts, attempt=attempt, error="lease expired", next_at=at(ts))


def test_a_lease_runs_from_its_event_and_heartbeats_extend_it() -> None:
    row = final_row([send(), processing(1), lease(600, lease_s=60)])
    assert (row.state, row.lease_until) == ("processing", at(660))
    row = final_row([send(), processing(1), lease(600, lease_s=60), progress(615, lease_s=60)])
    assert row.lease_until == at(675)
    # A heartbeat that arrives late never shortens it.
    row = final_row([send(), lease(600), progress(615, lease_s=60), progress(610, lease_s=60)])
    assert row.lease_until == at(675)


def test_progress_is_kept_and_a_heartbeat_alone_changes_none_of_it() -> None:
    row = final_row([send(), processing(1), progress(2, progress=0.4, note="40 pages")])
    assert (row.progress, row.progress_note, row.lease_until) == (0.4, "40 pages", None)
    row = final_row([send(), processing(1), progress(2, progress=0.4, note="40"), progress(3)])
    assert (row.progress, row.progress_note) == (0.4, "40")


def test_a_progress_report_does_not_take_a_lease_nor_change_the_state() -> None:
    row = final_row([send(), processing(1), retry(2), progress(3, lease_s=60, progress=0.5)])
    assert (row.state, row.lease_until) == ("retrying", None)


@pytest.mark.parametrize(
    "end",
    [callback(700), retry(700), event("dead", 700, error="parked"), lease_expired(700)],
    ids=["callback", "retry", "dead", "lease_expired"],
)
def test_every_end_of_a_run_ends_its_lease(end: Entry) -> None:
    row = final_row([send(), processing(1), lease(600), end])
    assert row.lease_until is None
    # and a heartbeat still on its way does not bring it back
    assert final_row([send(), processing(1), lease(600), end, progress(690, lease_s=60)]) == row


def test_an_expired_lease_makes_the_task_retrying_and_the_next_run_starts_afresh() -> None:
    row = final_row([send(), processing(1), lease(600), progress(601, progress=0.3),
                     lease_expired(700)])  # fmt: skip
    assert (row.state, row.attempts, row.error) == ("retrying", 1, "lease expired")
    row = final_row([send(), processing(1), lease(600), progress(601, progress=0.3),
                     lease_expired(700), processing(701, attempt=2)])  # fmt: skip
    assert (row.state, row.attempts, row.progress, row.lease_until) == ("processing", 2, None, None)


def test_an_expiry_of_a_lease_that_ended_or_moved_on_changes_nothing() -> None:
    ended = final_row([send(), processing(1), lease(600), callback(650), lease_expired(700)])
    assert ended.state == "completed"
    renewed = final_row([send(), lease(600), lease_expired(700), lease(710, attempt=2),
                         lease_expired(720)])  # fmt: skip
    assert (renewed.state, renewed.attempts) == ("processing", 2)
    assert renewed.lease_until == at(770)


def test_expired_is_final_from_any_state_but_a_final_one() -> None:
    expired = event("expired", 50, error="not started by its deadline")
    for before in ([send()], [send(), processing(1), retry(2)], [send(), lease(600)]):
        row = final_row([*before, expired])
        assert (row.state, row.error, row.lease_until) == ("expired", row.error, None)
        assert row.completed_at == at(50) and row.error == "not started by its deadline"
        assert final_row([*before, expired, callback(60), processing(61, 5)]).state == "expired"
    assert final_row([send(), callback(10), expired]).state == "completed"


def test_the_send_keeps_the_deadline() -> None:
    assert final_row([send(deadline=at(30))]).deadline == at(30)


def test_a_cancel_is_final_and_a_later_callback_changes_nothing() -> None:
    cancel = event("cancel", 40, canceled_by="master")
    for before in ([send()], [send(), processing(1)], [send(), processing(1), retry(2)]):
        row = final_row([*before, cancel])
        assert (row.state, row.error, row.completed_at) == (
            "canceled",
            "canceled by master",
            at(40),
        )
        late = final_row([*before, cancel, callback(50, result={"late": 1}), processing(51, 3)])
        assert (late.state, late.result) == ("canceled", None)
    assert final_row([send(), callback(10), cancel]).state == "completed"
    assert final_row([send(), lease(600), cancel]).lease_until is None


def test_a_progress_report_naming_no_attempt_concerns_the_attempt_under_way() -> None:
    unnamed = Entry.from_event(
        Event.model_validate(
            {
                "event_id": "e_p",
                "event": "progress",
                "ts": at(2),
                "task_id": TASK_ID,
                "progress": 0.3,
            }
        )
    )
    row = final_row([send(), processing(1, attempt=2), unnamed])
    assert (row.progress, row.attempts) == (0.3, 2)


def test_a_report_before_its_runs_processing_is_kept() -> None:
    # A handler reports at once; its `processing` goes out after RELAY_PROCESSING_AFTER.
    row = final_row([send(), progress(1, progress=0.2, note="begun"), processing(0.5)])
    assert (row.state, row.progress, row.progress_note) == ("processing", 0.2, "begun")


def test_a_task_sent_to_start_later_is_scheduled_until_a_child_takes_it() -> None:
    scheduled = send(not_before=at(30))
    row = final_row([scheduled])
    assert (row.state, row.not_before) == ("scheduled", at(30))
    assert final_row([scheduled, processing(31)]).state == "processing"
    assert final_row([scheduled, processing(31), callback(32)]).state == "completed"
    assert final_row([scheduled, event("cancel", 5, canceled_by="master")]).state == "canceled"
    assert final_row([scheduled, event("expired", 40, error="late")]).state == "expired"
    # A not_before at or before the send's own time puts nothing off.
    assert final_row([send(not_before=at(0))]).state == "pending"


def test_a_send_behind_its_events_keeps_their_state_and_is_scheduled_only_if_none_moved_it() -> (
    None
):
    scheduled = send(not_before=at(30))
    assert final_row([processing(31), scheduled]).state == "processing"
    assert final_row([callback(32), scheduled]).state == "completed"
    ahead = event("progress", 1, progress=0.1)  # leaves the row `pending`
    assert final_row([ahead, scheduled]).state == "scheduled"


# ---------------------------------------------------------------- input required


def _task(**fields: Any) -> dict[str, Any]:
    return {"task_id": TASK_ID, "from": "master", "to": "child", "type": "task", "cmd": "plan",
            "created_at": at(0).isoformat(), "timeout_s": 30.0} | fields  # fmt: skip


def question(ts: float, round_: int = 1, attempt: int = 1, **fields: Any) -> Entry:
    fields.setdefault("task", _task())
    return event("input_required", ts, attempt=attempt, child_id="w1", round=round_,
                 question=f"q{round_}", to="user:1", **fields)  # fmt: skip


def answered(ts: float, round_: int = 1, value: Any = "yes") -> Entry:
    return event("input", ts, round=round_, answer=value, **{"from": "user:1"})


def test_a_question_makes_the_task_wait_and_keeps_the_task_to_send_again() -> None:
    row = final_row([send(0), processing(1), question(2)])
    assert row.state == "input_required" and row.input_round == 1
    assert row.asking is not None
    assert (row.asking["round"], row.asking["question"], row.asking["to"]) == (1, "q1", "user:1")
    assert row.asking["attempt"] == 1 and row.asking["task"]["timeout_s"] == 30.0
    assert not row.final


def test_late_news_of_the_run_that_asked_changes_nothing() -> None:
    waiting = final_row([send(0), question(2)])
    for late in (processing(1), event("progress", 1.5, attempt=1, progress=0.5), retry(3)):
        after = apply(waiting, late)
        assert after is not None and after.state == "input_required", late.event
        assert after.asking == waiting.asking
    # The same question again (its delivery came back): one question.
    assert apply(waiting, question(4)) == replace(waiting, updated_at=at(4))


def test_the_answer_sends_the_task_back_with_every_question_and_answer() -> None:
    waiting = final_row([send(0), question(2)])
    entry = answered(5, value={"pick": 2})
    after = apply(waiting, entry)
    assert after is not None and after.state == "pending" and after.asking is None
    found = resumed(waiting, after, entry)
    assert found is not None
    task, attempt = found
    assert attempt == 1 and task.timeout_s == 30.0 and task.task_id == TASK_ID
    assert task.inputs is not None and len(task.inputs) == 1
    (first,) = task.inputs
    assert (first.round, first.question, first.to, first.answer) == (1, "q1", "user:1", {"pick": 2})
    assert first.answered_by == "user:1" and first.answered_at == at(5)
    assert task.answers == [{"pick": 2}]
    # A second round: the task the child received carries the first answer; both go back.
    again = question(7, round_=2, task=_task(inputs=[first.model_dump(mode="json")]))
    waiting_2 = apply(after, again)
    assert waiting_2 is not None and waiting_2.state == "input_required"
    second = answered(9, round_=2, value="no")
    done = apply(waiting_2, second)
    assert done is not None
    found_2 = resumed(waiting_2, done, second)
    assert found_2 is not None and found_2[0].answers == [{"pick": 2}, "no"]


def test_an_answer_to_no_question_or_another_round_changes_nothing() -> None:
    waiting = final_row([send(0), question(2)])
    stale = answered(5, round_=2)
    assert apply(waiting, stale) == replace(waiting, updated_at=at(5))
    assert resumed(waiting, replace(waiting, updated_at=at(5)), stale) is None
    running = final_row([send(0), processing(1)])
    assert apply(running, answered(5)) == replace(running, updated_at=at(5))


@pytest.mark.parametrize("end", ["cancel", "expired"])
def test_a_task_that_waits_can_be_canceled_or_expire(end: str) -> None:
    waiting = final_row([send(0), question(2)])
    fields = {"canceled_by": "master"} if end == "cancel" else {"error": "no answer"}
    ended = apply(waiting, event(end, 5, **fields))
    assert ended is not None and ended.final and ended.asking is None
    # and an answer after that sends nothing
    late = answered(6)
    after = apply(ended, late)
    assert after is not None and after.final and resumed(ended, after, late) is None
