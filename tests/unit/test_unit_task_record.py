"""GET /tasks/{id} reads a task the tracker is recording as it reads it: a consistent answer."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

from services.api.routes import _task_response
from shared.ids import utcnow
from shared.settings import ApiSettings


class CommitsBetweenReads:
    """The tracker's commit lands between the API's read of the row and any later read."""

    async def task(self, task_id: str) -> dict[str, Any] | None:
        return None  # not recorded yet when the row was read

    async def task_state(self, task_id: str) -> str | None:
        return "completed"  # recorded by the time of a second read


async def test_a_task_recorded_between_two_reads_reads_pending_not_a_bare_final_state() -> None:
    services = SimpleNamespace(
        reader=CommitsBetweenReads(),
        ids=SimpleNamespace(issued_at=lambda task_id: utcnow()),  # this bus issued it, just now
        settings=ApiSettings(api_key="k" * 32),
        send_keys=None,
    )
    record = await _task_response("t_x", cast(Any, services), principal=None)
    # A final state without its result, fields or times was answered before: a client that
    # stops at the first final state (the e2e test did) never saw the result.
    assert record.task_status == "pending"
    assert record.result is None
