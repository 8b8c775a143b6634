"""The tracker's database: one row per task, one per log entry, one per client-chosen task id."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    String,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel

JsonColumn = JSON().with_variant(JSONB(), "postgresql")


class UtcDateTime(TypeDecorator[datetime]):
    """A timestamp stored as UTC and read back timezone-aware on every backend."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class TaskBase(SQLModel):
    """What a task row holds."""

    task_id: str = Field(sa_column=Column(String(128), primary_key=True))
    sender: str | None = Field(default=None, sa_column=Column(String(64)))
    recipient: str | None = Field(default=None, sa_column=Column(String(64)))
    type: str = Field(default="task", sa_column=Column(String(16), nullable=False))
    cmd: str | None = Field(default=None, sa_column=Column(String(128)))
    payload: dict[str, Any] | None = Field(default=None, sa_column=Column(JsonColumn))
    text: str | None = Field(default=None, sa_column=Column(Text))
    conversation_id: str | None = Field(default=None, sa_column=Column(String(128)))
    state: str = Field(sa_column=Column(String(16), nullable=False))
    attempts: int = Field(default=0, sa_column=Column(Integer, nullable=False))
    child_id: str | None = Field(default=None, sa_column=Column(String(64)))
    result: Any = Field(default=None, sa_column=Column(JsonColumn))
    error: str | None = Field(default=None, sa_column=Column(Text))
    #: When a `retrying` task runs next.
    next_attempt_at: datetime | None = Field(default=None, sa_column=Column(UtcDateTime))
    #: False while the task is known only from events that raced ahead of its send.
    send_seen: bool = Field(default=False, nullable=False)
    created_at: datetime = Field(sa_column=Column(UtcDateTime, nullable=False))
    updated_at: datetime = Field(sa_column=Column(UtcDateTime, nullable=False))
    completed_at: datetime | None = Field(default=None, sa_column=Column(UtcDateTime))
    #: A task not started by then never starts (it ends `expired`).
    deadline: datetime | None = Field(default=None, sa_column=Column(UtcDateTime))
    #: The task does not start before then (`scheduled` until then).
    not_before: datetime | None = Field(default=None, sa_column=Column(UtcDateTime))
    #: `high`, or None for the rest.
    priority: str | None = Field(default=None, sa_column=Column(String(8)))
    #: Until when the child holding a long run's lease answers for it (services/tracker/overdue.py).
    lease_until: datetime | None = Field(default=None, sa_column=Column(UtcDateTime))
    #: The handler's last progress report: a fraction from 0 to 1, and its words.
    progress: float | None = Field(default=None, sa_column=Column(Float))
    progress_note: str | None = Field(default=None, sa_column=Column(Text))
    #: The log entry that ended the task (its outcome, in its sender's inbox).
    outcome_id: int | None = Field(default=None, sa_column=Column(BigInteger))
    #: The send's `notify`: where a webhook goes, and for which changes of state.
    notify: dict[str, Any] | None = Field(default=None, sa_column=Column(JsonColumn))
    #: How many questions the task's handler asked (`input_required`), and the one it waits on
    #: (with the task as its child received it, sent again with the answer).
    input_round: int = Field(
        default=0, sa_column=Column(Integer, nullable=False, server_default="0")
    )
    asking: dict[str, Any] | None = Field(default=None, sa_column=Column(JsonColumn))


class Task(TaskBase, table=True):
    """One row per task."""

    __tablename__ = "tasks"
    __table_args__ = (
        # The task list's (GET /tasks, newest first): unfiltered, and by each of its filters.
        Index("ix_tasks_created", "created_at", "task_id"),
        Index("ix_tasks_conversation", "conversation_id", "created_at"),
        Index("ix_tasks_state_created", "state", "created_at"),
        Index("ix_tasks_sender_created", "sender", "created_at"),
        Index("ix_tasks_cmd_created", "cmd", "created_at"),
        # Also the pools, one probe each (Reader.pools(): a loose index scan).
        Index("ix_tasks_recipient", "recipient", "created_at"),
        # Also the prune's: finished (completed, failed) and last updated before a cutoff.
        Index("ix_tasks_state_updated", "state", "updated_at"),
        # The overview's: the tasks that ended in the last minute.
        Index(
            "ix_tasks_completed",
            "completed_at",
            postgresql_where=text("completed_at IS NOT NULL"),
            sqlite_where=text("completed_at IS NOT NULL"),
        ),
        # The sweep's: the tasks with a deadline, and those whose run holds a lease.
        Index(
            "ix_tasks_deadline",
            "deadline",
            postgresql_where=text("deadline IS NOT NULL"),
            sqlite_where=text("deadline IS NOT NULL"),
        ),
        Index(
            "ix_tasks_lease_until",
            "lease_until",
            postgresql_where=text("lease_until IS NOT NULL"),
            sqlite_where=text("lease_until IS NOT NULL"),
        ),
        # A sender's inbox: the outcomes of the tasks it sent.
        Index(
            "ix_tasks_sender_outcome",
            "sender",
            "outcome_id",
            postgresql_where=text("outcome_id IS NOT NULL"),
            sqlite_where=text("outcome_id IS NOT NULL"),
        ),
    )


class LogEntry(SQLModel, table=True):
    """One row per event on the bus, in the order the tracker recorded them."""

    __tablename__ = "log_entries"
    __table_args__ = (
        Index("ix_log_task", "task_id", "id"),
        Index("ix_log_conversation", "conversation_id", "id"),
        Index("ix_log_sender", "sender", "id"),
        Index("ix_log_recipient", "recipient", "id"),
        Index("ix_log_event", "event", "id"),
        # The prune's: old entries of no task (messages), without reading those of tasks.
        Index(
            "ix_log_untied_ts",
            "ts",
            postgresql_where=text("task_id IS NULL"),
            sqlite_where=text("task_id IS NULL"),
        ),
    )

    id: int | None = Field(
        default=None,
        sa_column=Column(
            BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
        ),
    )
    event_id: str = Field(sa_column=Column(String(160), nullable=False, unique=True))
    event: str = Field(sa_column=Column(String(32), nullable=False))
    ts: datetime = Field(sa_column=Column(UtcDateTime, nullable=False))
    task_id: str | None = Field(default=None, sa_column=Column(String(128)))
    conversation_id: str | None = Field(default=None, sa_column=Column(String(128)))
    sender: str | None = Field(default=None, sa_column=Column(String(64)))
    recipient: str | None = Field(default=None, sa_column=Column(String(64)))
    #: The other fields of the event, as they were on the wire.
    data: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JsonColumn, nullable=False))


class SendKey(SQLModel, table=True):
    """A client's key for a send, recorded by the API before it publishes (idempotent sends).

    `key` is ``task/<client-chosen task id>`` or ``idem/<Idempotency-Key header>``.
    """

    __tablename__ = "send_keys"
    __table_args__ = (
        # The prune's: the keys of the tasks it deletes, and old keys never confirmed.
        Index("ix_send_keys_task", "task_id"),
        Index(
            "ix_send_keys_unconfirmed",
            "created_at",
            postgresql_where=text("NOT confirmed"),
            sqlite_where=text("confirmed = 0"),
        ),
    )

    key: str = Field(sa_column=Column(String(140), primary_key=True))
    task_id: str = Field(sa_column=Column(String(128), nullable=False))
    #: The pool the task goes to (a pool-bound key's callback is checked against it).
    pool: str | None = Field(default=None, sa_column=Column(String(64)))
    body_hash: str = Field(sa_column=Column(String(64), nullable=False))
    confirmed: bool = Field(default=False, nullable=False)
    created_at: datetime = Field(sa_column=Column(UtcDateTime, nullable=False))


class Cancel(SQLModel, table=True):
    """A task's cancel, recorded by the API before it publishes it: a child that (re)connects
    reads every cancel from here, so none sent while it was away is missed."""

    __tablename__ = "cancels"
    __table_args__ = (Index("ix_cancels_created", "created_at"),)

    task_id: str = Field(sa_column=Column(String(128), primary_key=True))
    canceled_by: str = Field(sa_column=Column(String(64), nullable=False))
    created_at: datetime = Field(sa_column=Column(UtcDateTime, nullable=False))


class InboxCursor(SQLModel, table=True):
    """How far a party has acknowledged reading its inbox (POST /inbox/{name}/ack), recorded
    by the API: a client that restarts reads on from there."""

    __tablename__ = "inbox_cursors"

    name: str = Field(sa_column=Column(String(64), primary_key=True))
    #: Every entry of the inbox up to this log id was read.
    acked_id: int = Field(sa_column=Column(BigInteger, nullable=False))
    updated_at: datetime = Field(sa_column=Column(UtcDateTime, nullable=False))


class TaskOutbox(SQLModel, table=True):
    """Tasks the tracker sends, recorded in the transaction of the change that calls for them
    (a webhook delivery, a task answered), and not yet seen confirmed by RabbitMQ: it publishes
    them, then deletes them here, so that a crash in between loses none."""

    __tablename__ = "task_outbox"

    #: A delivery's task id; `<task id>/input/<round>` for a task answered.
    id: str = Field(sa_column=Column(String(160), primary_key=True))
    #: The task, as published (TaskMessage JSON).
    body: str = Field(sa_column=Column(Text, nullable=False))
    #: Its x-attempt header.
    attempt: int = Field(default=1, sa_column=Column(Integer, nullable=False))
    created_at: datetime = Field(sa_column=Column(UtcDateTime, nullable=False))


class TaskAnswer(SQLModel, table=True):
    """The answer to a task's question, recorded by the API before it publishes it: the first
    one is the answer (a second is refused), whichever API replica takes it. A row whose task
    still waits on it a while later is applied by the tracker's sweep."""

    __tablename__ = "task_answers"

    task_id: str = Field(sa_column=Column(String(128), primary_key=True))
    round: int = Field(sa_column=Column(Integer, primary_key=True))
    answered_by: str = Field(sa_column=Column(String(64), nullable=False))
    #: The answer (the tracker applies it itself should the API die before publishing it).
    answer: Any = Field(default=None, sa_column=Column(JsonColumn))
    #: The answer's JSON, hashed: the same answer again is a retry, not a second answer.
    answer_hash: str = Field(sa_column=Column(String(64), nullable=False))
    answered_at: datetime = Field(sa_column=Column(UtcDateTime, nullable=False))


class BusOwner(SQLModel, table=True):
    """The namespace whose bus this database (or PostgreSQL schema) records: one row, claimed by
    the first API or tracker to start on it. Another namespace's services refuse to start here,
    so that two buses never mix their tasks and logs (shared/migrate.py `claim`)."""

    __tablename__ = "bus_owner"

    #: Always 1: the table holds one row.
    id: int = Field(sa_column=Column(Integer, primary_key=True, autoincrement=False))
    namespace: str = Field(sa_column=Column(String(40), nullable=False))
    claimed_at: datetime = Field(sa_column=Column(UtcDateTime, nullable=False))
