"""Webhooks, the tracker's part: a delivery task for each change of state a send's `notify`
names, recorded with the change (services/tracker/outbox.py publishes them).

A delivery is a task of the bus's own pool (`_webhooks`, served by `convbus webhooks`): it has
the retries, backoff, parking and replay of every task, and its entries are in the log. The
tracker records it (its send, its row, and a row in `task_outbox`) in the transaction of the
change it reports, then publishes it, confirmed, and deletes the outbox row. After a crash, the
rows left are published again at start; the delivery's id, derived from the entry it reports,
makes a second copy the same task (the child runs a task id once).
"""

from __future__ import annotations

import hashlib
from typing import Any

from services.tracker.lifecycle import Entry, TaskRow
from shared.readmodel import public_entry
from shared.schemas import TaskMessage
from shared.topology import WEBHOOK_POOL

#: Who sends the deliveries (their `from`).
SENDER = "convbus"


def delivery_id(task_id: str, log_id: int) -> str:
    """A delivery's task id: the same for the same entry, whoever records it again."""
    return "wh_" + hashlib.sha256(f"{task_id}/{log_id}".encode()).hexdigest()[:40]


def delivery_for(
    before: TaskRow | None, after: TaskRow, entry: Entry, log_id: int
) -> TaskMessage | None:
    """The webhook delivery `entry` calls for, if it moved the task into a state its send's
    `notify` names."""
    notify = after.notify
    if notify is None or after.state not in notify["events"]:
        return None
    if before is not None and before.state == after.state:
        return None
    row: dict[str, Any] = {
        "id": log_id, "event": entry.event, "ts": entry.ts, "task_id": entry.task_id,
        "conversation_id": entry.conversation_id, "sender": entry.sender,
        "recipient": entry.recipient, "data": entry.data,
    }  # fmt: skip
    delivery = delivery_id(after.task_id, log_id)
    return TaskMessage(
        task_id=delivery,
        created_at=entry.ts,
        from_=SENDER,
        to=WEBHOOK_POOL,
        type="task",
        cmd="deliver",
        conversation_id=after.conversation_id,
        payload={
            "url": notify["url"],
            "delivery": {
                "delivery_id": delivery,
                "task_id": after.task_id,
                "task_status": after.state,
                "entry": public_entry(row),
            },
        },
    )
