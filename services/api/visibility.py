"""Who may read what: an operator's key everything; every other key what is its own.

An operator's key has the `read` or `admin` scope. Any other key (a master's, a user's, a child
pool's) reads only its own part of the bus: the entries it sent or that are addressed to it,
the tasks it sent (or, for a pool's key, the tasks of its
pools), its own inbox. The seed's `task-status` stays open to anyone holding a task id (the
id is unguessable: knowing it is the permission), but only to the state: a task's payload,
text, result and error go to its own readers, unless the operator opens them
(RELAY_PUBLIC_TASKS, on in dev mode).
"""

from __future__ import annotations

from typing import Any

from services.api.auth import Principal
from services.api.errors import ApiError
from shared.readmodel import Reader
from shared.settings import ApiSettings

#: Scopes whose keys read everything.
OPERATOR_SCOPES = frozenset({"read", "admin"})
#: The fields of a task's record that only its own readers see.
PRIVATE_TASK_FIELDS = ("payload", "text", "result", "error", "progress_note", "asking")


def is_operator(principal: Principal) -> bool:
    return bool(principal.scopes & OPERATOR_SCOPES)


def logs_are_public(settings: ApiSettings) -> bool:
    """GET /logs and /stream without a key: the seed's open log (dev mode, RELAY_PUBLIC_LOGS)."""
    public = settings.public_logs
    return public if public is not None else settings.dev_mode


def tasks_are_public(settings: ApiSettings) -> bool:
    """The whole record of any task to anyone with its id (dev mode, RELAY_PUBLIC_TASKS)."""
    public = settings.public_tasks
    return public if public is not None else settings.dev_mode


def owns_task(principal: Principal, task: dict[str, Any]) -> bool:
    """The task's sender, a key that calls back for the pool it went to, or the party whose
    answer the task waits on."""
    if task.get("sender") == principal.name:
        return True
    asking = task.get("asking")
    if asking is not None and asking.get("to") == principal.name:
        return True
    pool = task.get("recipient")
    return "callback" in principal.scopes and pool is not None and principal.may_serve(pool)


def sees_whole_task(
    principal: Principal | None, task: dict[str, Any], settings: ApiSettings
) -> bool:
    if tasks_are_public(settings):
        return True
    return principal is not None and (is_operator(principal) or owns_task(principal, task))


async def check_entries(
    principal: Principal,
    reader: Reader,
    *,
    sender: str | None,
    recipient: str | None,
    task_id: str | None,
) -> None:
    """403 unless the key may read the log entries these filters select: an operator any; any
    other key only with a filter that keeps to its own (its name as `from` or `to`, or one of
    its tasks). A conversation alone is not enough: anyone may send into a conversation whose
    id it knows, so that would open the whole conversation to it."""
    if is_operator(principal):
        return
    name = principal.name
    if name in (sender, recipient):
        return
    if task_id is not None:
        task = await reader.task(task_id)
        if task is not None and owns_task(principal, task):
            return
    raise ApiError(
        403,
        f"Forbidden: this key reads only its own entries: filter with from={name} or to={name} "
        "(with conversation_id if you like), or task_id of one of its tasks",
    )
