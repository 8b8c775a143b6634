"""The task state machine, as pure functions: what one event does to one task row.

``pending -> processing -> completed | failed``, ``processing -> retrying -> processing``.
A task sent with a ``not_before`` ahead starts ``scheduled`` instead of ``pending``; once that
time is past, readers show it ``pending`` (shared/readmodel.py) until a child takes it.
A run past the child's hold takes a lease (``lease``), renewed by ``progress`` heartbeats; a
lease the tracker finds expired (``lease_expired``) sends the task back: ``retrying``.
A task not started by its deadline ends ``expired``, a ``cancel`` ends it ``canceled``: both
final, from any state but a final one (a callback that comes after changes nothing).
A ``withdrawn`` takes back a task no child has taken: RabbitMQ refused its send (`withdraws`).
A handler that asks a question (``input_required``) ends its run: the task waits, held by no
child, until the answer (``input``) sends it back to its pool, ``pending`` (`resumed`); news
of the run that asked, arriving late, changes nothing meanwhile.
Events may arrive in any order (a completion before its send); the result is the same, and
nothing moves a task out of ``completed`` or ``failed`` but a ``replay`` of a failed task.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta
from typing import Any

from shared.ids import processing_event_id, utc_iso
from shared.schemas import FINAL_STATES, Event, InputRound, TaskMessage

#: The fields of a send and of an event that the log keeps in columns of their own (or
#: leaves out: a callback's run id), not in `data`.
_TASK_COLUMNS = {"task_id", "from_", "to", "conversation_id", "created_at"}
_EVENT_COLUMNS = {"task_id", "from_", "to", "conversation_id", "event_id", "event", "ts", "run_id"}


@dataclass(frozen=True)
class Entry:
    """One thing that happened on the bus, as the tracker records it in the log."""

    event_id: str
    event: str
    ts: datetime
    task_id: str | None
    conversation_id: str | None
    sender: str | None
    recipient: str | None
    data: dict[str, Any]
    source: TaskMessage | Event = field(repr=False)

    @classmethod
    def from_task(cls, task: TaskMessage) -> Entry:
        return cls._of(task, task.task_id, "send", task.created_at, _TASK_COLUMNS)

    @classmethod
    def from_event(cls, event: Event) -> Entry:
        return cls._of(event, event.event_id, event.event, event.ts, _EVENT_COLUMNS)

    @classmethod
    def _of(
        cls,
        source: TaskMessage | Event,
        event_id: str,
        event: str,
        ts: datetime,
        columns: set[str],
    ) -> Entry:
        """The entry of a task's send or of an event: its own columns, the rest as `data`."""
        return cls(
            event_id=event_id,
            event=event,
            ts=ts,
            task_id=source.task_id,
            conversation_id=source.conversation_id,
            sender=source.from_,
            recipient=source.to,
            data=source.model_dump(mode="json", exclude_none=True, exclude=columns),
            source=source,
        )

    def run_started(self) -> Entry | None:
        """The `processing` entry of the run a callback reports, if the callback names it.

        A child publishes `processing` only for a slow run; its id is the one derived here, so
        the log keeps one entry whichever arrives first.
        """
        source = self.source
        if not isinstance(source, Event) or source.event != "callback" or self.task_id is None:
            return None
        if source.run_id is None or source.started_at is None:
            return None
        return Entry.from_event(
            Event(
                event_id=processing_event_id(self.task_id, source.run_id),
                event="processing",
                ts=source.started_at,
                task_id=self.task_id,
                child_id=source.child_id,
                attempt=source.attempt or 1,
            )
        )


@dataclass(frozen=True)
class TaskRow:
    """The tracker's view of a task (the columns of the tasks table)."""

    task_id: str
    state: str
    created_at: datetime
    updated_at: datetime
    sender: str | None = None
    recipient: str | None = None
    type: str = "task"
    cmd: str | None = None
    payload: dict[str, Any] | None = None
    text: str | None = None
    conversation_id: str | None = None
    attempts: int = 0
    child_id: str | None = None
    result: Any = None
    error: str | None = None
    send_seen: bool = False
    next_attempt_at: datetime | None = None
    completed_at: datetime | None = None
    deadline: datetime | None = None
    not_before: datetime | None = None
    priority: str | None = None
    lease_until: datetime | None = None
    progress: float | None = None
    progress_note: str | None = None
    #: The log id of the entry that ended the task (set by the store, which knows log ids).
    outcome_id: int | None = None
    #: The send's webhook (`Notify` as JSON).
    notify: dict[str, Any] | None = None
    #: Questions asked so far, and the one the task waits on: `round`, `question`, `to`,
    #: `asked_at`, the `attempt` that asked, and the `task` its child received.
    input_round: int = 0
    asking: dict[str, Any] | None = None

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES


_ROW_FIELDS = frozenset(f.name for f in fields(TaskRow))


def with_outcome(before: TaskRow | None, after: TaskRow, log_id: int) -> TaskRow:
    """`after`, marked with the log id of the entry that turned `before` into it if that entry
    ended the task (its outcome, which goes to the sender's inbox)."""
    if after.final and (before is None or not before.final):
        return _with(after, outcome_id=log_id)
    return after


def _with(row: TaskRow, **changes: Any) -> TaskRow:
    """`row` with `changes`: `dataclasses.replace` without its checks and `__init__`, which
    were a tenth of the tracker's time."""
    assert changes.keys() <= _ROW_FIELDS, changes.keys() - _ROW_FIELDS
    new = object.__new__(TaskRow)
    new.__dict__.update(row.__dict__)
    new.__dict__.update(changes)
    return new


def _send_fields(task: TaskMessage) -> dict[str, Any]:
    return {
        "sender": task.from_,
        "recipient": task.to,
        "type": "task",
        "cmd": task.cmd,
        "payload": task.payload,
        "text": task.text,
        "conversation_id": task.conversation_id,
        "deadline": task.deadline,
        "not_before": task.not_before,
        "priority": task.priority,
        "notify": task.notify.model_dump() if task.notify is not None else None,
        "created_at": task.created_at,
        "send_seen": True,
    }


def apply(row: TaskRow | None, entry: Entry) -> TaskRow | None:
    """The task row after `entry`; None when the entry concerns no task."""
    source = entry.source
    if isinstance(source, TaskMessage):
        return _sent(row, source, entry.ts)

    if entry.task_id is None or source.event in ("message", "ack", "withdrawn"):
        return row  # a withdrawal that takes effect is the store's (`withdraws`)
    if row is None:
        row = TaskRow(
            task_id=entry.task_id, state="pending", created_at=entry.ts, updated_at=entry.ts
        )
    updated = max(row.updated_at, entry.ts)
    if source.event == "replay":
        # The one way out of `failed`: an operator replayed the parked task. Its attempts
        # count again from the start; the log keeps the history.
        if row.state != "failed":
            return _with(row, updated_at=updated)
        return _with(
            row,
            updated_at=updated,
            state="pending",
            attempts=0,
            completed_at=None,
            next_attempt_at=None,
            lease_until=None,
            progress=None,
            progress_note=None,
        )
    attempts = max(row.attempts, source.attempt or 0)
    if row.final:
        # The count of attempts still takes news of one that raced behind the completion.
        return _with(row, attempts=attempts) if attempts != row.attempts else row
    attempt = source.attempt or 0
    if source.attempt is None and source.event == "progress":
        attempt = row.attempts  # a report naming no attempt (over HTTP): the one under way
    if source.event in _OF_AN_ATTEMPT and attempt < row.attempts:
        return _with(row, updated_at=updated)  # news of an earlier attempt, overtaken
    if source.event in _OF_AN_ATTEMPT and row.state == "input_required":
        return _with(row, updated_at=updated)  # news of the run that asked, arriving late
    # What each event sets, besides its time and the count of attempts.
    changes: dict[str, Any] | None
    if source.event in ("input_required", "input"):
        changes = _question_changes(row, source, entry.ts, attempt)
        if changes is None:
            return _with(row, updated_at=updated)
    elif source.event == "processing":
        changes = {"state": "processing", "child_id": source.child_id, "next_attempt_at": None}
        if attempt > row.attempts:  # a new attempt: the last one's lease and progress are over
            changes.update(lease_until=None, progress=None, progress_note=None)
    elif source.event == "lease":
        changes = {"state": "processing", "child_id": source.child_id, "next_attempt_at": None,
                   "lease_until": _lease_end(entry.ts, source.lease_s)}  # fmt: skip
    elif source.event == "progress":
        changes = {}
        if source.progress is not None:
            changes["progress"] = source.progress
        if source.note is not None:
            changes["progress_note"] = source.note
        if source.lease_s is not None and row.lease_until is not None and attempt == row.attempts:
            changes["lease_until"] = max(row.lease_until, _lease_end(entry.ts, source.lease_s))
    elif source.event == "lease_expired":
        if row.lease_until is None or attempt != row.attempts:
            return _with(row, updated_at=updated)  # the run ended or was renewed meanwhile
        changes = {"state": "retrying", "error": source.error, "next_attempt_at": source.next_at,
                   "lease_until": None}  # fmt: skip
    elif source.event == "retry":
        changes = {"state": "retrying", "error": source.error, "next_attempt_at": source.next_at,
                   "lease_until": None}  # fmt: skip
    elif source.event == "callback":
        changes = {
            "state": "completed" if source.status == "done" else "failed",
            "attempts": max(attempts, 1),  # a callback is an attempt, whatever it says
            "child_id": source.child_id or row.child_id,
            "result": source.result,
            "error": source.error,
            "completed_at": entry.ts,
            "next_attempt_at": None,
            "lease_until": None,
        }
    elif source.event == "cancel":
        changes = {"state": "canceled", "error": f"canceled by {source.canceled_by}",
                   "completed_at": entry.ts, "next_attempt_at": None,
                   "lease_until": None}  # fmt: skip
    elif source.event == "expired":
        changes = {"state": "expired", "error": source.error, "completed_at": entry.ts,
                   "next_attempt_at": None, "lease_until": None}  # fmt: skip
    elif source.event == "dead":
        changes = {"state": "failed", "error": source.error, "completed_at": entry.ts,
                   "next_attempt_at": None, "lease_until": None}  # fmt: skip
    else:
        return _with(row, updated_at=updated)
    if changes.get("state", row.state) != "input_required":
        changes["asking"] = None  # canceled or expired while it waited, say
    return _with(row, **{"updated_at": updated, "attempts": attempts, **changes})


def _question_changes(
    row: TaskRow, source: Event, ts: datetime, attempt: int
) -> dict[str, Any] | None:
    """What a question (`input_required`) or its answer (`input`) sets; None: nothing."""
    if source.event == "input_required":
        if source.round is None or source.task is None or source.round <= row.input_round:
            return None  # asked again (its delivery came back)
        task = source.task.model_dump(mode="json", by_alias=True, exclude_none=True)
        asking = {"round": source.round, "question": source.question,
                  "to": source.to or source.task.from_, "asked_at": utc_iso(ts),
                  "attempt": max(attempt, 1), "task": task}  # fmt: skip
        return {"state": "input_required", "input_round": source.round, "asking": asking,
                "lease_until": None, "next_attempt_at": None,
                "child_id": source.child_id or row.child_id}  # fmt: skip
    if row.state != "input_required" or source.round != row.input_round:
        return None  # not the question it waits on
    return {"state": "pending", "asking": None, "progress": None, "progress_note": None}


def resumed(before: TaskRow | None, after: TaskRow, entry: Entry) -> tuple[TaskMessage, int] | None:
    """The task to send back to its pool, and its attempt, if `entry` answered the question it
    waited on: the task its child received, with the question and answer added to `inputs`."""
    source = entry.source
    if not isinstance(source, Event) or source.event != "input" or before is None:
        return None
    asking = before.asking
    if asking is None or before.state != "input_required" or after.state != "pending":
        return None
    task = TaskMessage.model_validate(asking["task"])
    answered = InputRound(
        round=asking["round"],
        question=asking["question"],
        to=asking["to"],
        asked_at=asking["asked_at"],
        answer=source.answer,
        answered_by=source.from_ or asking["to"],
        answered_at=entry.ts,
    )
    inputs = [*(task.inputs or ()), answered]
    return task.model_copy(update={"inputs": inputs}), asking["attempt"]


def withdraws(row: TaskRow | None, entry: Entry) -> bool:
    """Whether `entry` takes the task back: RabbitMQ refused the publish of its send (a queue
    turned it away, so the API answered 503) and nothing but the send is known of it. Its row
    and its log go (the task does not exist). Once a child has taken it the withdrawal came
    too late (another queue than the pool's refused it): it is a log entry, nothing more."""
    return (
        entry.event == "withdrawn"
        and row is not None
        and row.send_seen
        and row.state in ("pending", "scheduled")
        and row.attempts == 0
        and row.child_id is None
        and row.input_round == 0
    )


def _sent(row: TaskRow | None, source: TaskMessage, ts: datetime) -> TaskRow:
    """The task row after its send."""
    if row is None:
        row = TaskRow(
            task_id=source.task_id, state=_first_state(source), created_at=ts, updated_at=ts
        )
        return _with(row, **_send_fields(source))
    updated = max(row.updated_at, ts)
    if row.send_seen:
        return _with(row, updated_at=updated)
    # Events raced ahead of the send: they decide the state, unless none moved it.
    state = _first_state(source) if row.state == "pending" else row.state
    return _with(row, updated_at=updated, state=state, **_send_fields(source))


def _first_state(task: TaskMessage) -> str:
    """A sent task's state: `scheduled` when it may start only later than its send."""
    scheduled = task.not_before is not None and task.not_before > task.created_at
    return "scheduled" if scheduled else "pending"


#: Events about one attempt of a task: ignored once a later attempt is known.
_OF_AN_ATTEMPT = frozenset(
    {"processing", "retry", "lease", "progress", "lease_expired", "input_required"}
)


def _lease_end(ts: datetime, lease_s: float | None) -> datetime:
    return ts + timedelta(seconds=lease_s or 0)
