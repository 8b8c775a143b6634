"""The task state machine, as pure functions: what one event does to one task row.

``pending -> processing -> completed | failed``, ``processing -> retrying -> processing``.
A task sent with a ``not_before`` ahead starts ``scheduled`` instead of ``pending``; once that
time is past, readers show it ``pending`` (shared/readmodel.py) until a child takes it.
A run past the child's hold takes a lease (``lease``), renewed by ``progress`` heartbeats; a
lease the tracker finds expired (``lease_expired``) sends the task back: ``retrying``.
A task not started by its deadline ends ``expired``, a ``cancel`` ends it ``canceled``: both
final, from any state but a final one (a callback that comes after changes nothing).
Events may arrive in any order (a completion before its send); the result is the same, and
nothing moves a task out of ``completed`` or ``failed`` but a ``replay`` of a failed task.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta
from typing import Any

from shared.ids import processing_event_id
from shared.schemas import FINAL_STATES, Event, TaskMessage

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
        if row is None:
            row = TaskRow(
                task_id=source.task_id, state=_first_state(source), created_at=entry.ts,
                updated_at=entry.ts,
            )  # fmt: skip
            return _with(row, **_send_fields(source))
        updated = max(row.updated_at, entry.ts)
        if row.send_seen:
            return _with(row, updated_at=updated)
        # Events raced ahead of the send: they decide the state, unless none moved it.
        state = _first_state(source) if row.state == "pending" else row.state
        return _with(row, updated_at=updated, state=state, **_send_fields(source))

    if entry.task_id is None or source.event in ("message", "ack"):
        return row
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
    # What each event sets, besides its time and the count of attempts.
    changes: dict[str, Any]
    if source.event == "processing":
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
    return _with(row, **{"updated_at": updated, "attempts": attempts, **changes})


def _first_state(task: TaskMessage) -> str:
    """A sent task's state: `scheduled` when it may start only later than its send."""
    scheduled = task.not_before is not None and task.not_before > task.created_at
    return "scheduled" if scheduled else "pending"


#: Events about one attempt of a task: ignored once a later attempt is known.
_OF_AN_ATTEMPT = frozenset({"processing", "retry", "lease", "progress", "lease_expired"})


def _lease_end(ts: datetime, lease_s: float | None) -> datetime:
    return ts + timedelta(seconds=lease_s or 0)
