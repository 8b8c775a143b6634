"""services/child/run_events.RunReports: a run's progress reports and a lease's heartbeats."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from services.child.run_events import Run, RunEvents, RunReports
from shared.schemas import TaskMessage

TASK = TaskMessage.model_validate(
    {"from": "master", "to": "child", "task_id": "t_unit", "created_at": datetime.now(UTC)}
)


class _Published:
    """Stands in for RunEvents' publishing: keeps what would be published."""

    def __init__(self) -> None:
        self.events: list[Report] = []

    async def progress(
        self,
        task: TaskMessage,
        run: Run,
        progress: float | None,
        note: str | None,
        lease_s: float | None,
    ) -> None:
        self.events.append(Report(run.attempt, progress, note, lease_s))


@dataclass(frozen=True)
class Report:
    """One progress event, as RunEvents.progress would publish it."""

    attempt: int
    progress: float | None
    note: str | None
    lease_s: float | None


def _reports(every: float) -> tuple[RunReports, _Published]:
    published = _Published()
    return RunReports(cast(RunEvents, published), TASK, Run(1), every), published


async def _until(condition: Any, seconds: float = 5.0) -> None:
    async with asyncio.timeout(seconds):
        while not condition():  # noqa: ASYNC110  (a condition on what was published)
            await asyncio.sleep(0.01)


async def test_a_chatty_handler_gets_its_latest_report_out_not_every_one() -> None:
    reports, published = _reports(every=0.2)
    for step in range(1, 501):
        reports.report(step / 1000, f"step {step}")
    await _until(lambda: len(published.events) == 1)
    for step in range(501, 1001):  # while the first report's pause runs
        reports.report(step / 1000, f"step {step}")
    await _until(lambda: len(published.events) == 2)
    await reports.close()
    assert [(e.progress, e.note) for e in published.events] == [
        (0.5, "step 500"),
        (1.0, "step 1000"),
    ]


async def test_a_lease_taken_after_a_report_gets_heartbeats() -> None:
    # The handler reported once and went quiet: the lease must still be renewed.
    # No pause after a report (every=0): the publisher then waits for the next report.
    reports, published = _reports(every=0.0)
    reports.report(0.1, "begun")
    await _until(lambda: len(published.events) == 1)
    reports.lease(0.4)
    await _until(lambda: sum(e.lease_s == 0.4 for e in published.events) >= 3)
    await reports.close()
    assert all(e.attempt == 1 for e in published.events)


async def test_nothing_is_published_after_close_not_even_from_a_handlers_thread() -> None:
    reports, published = _reports(every=0.0)
    await reports.close()
    thread = threading.Thread(target=reports.report, args=(0.5, "abandoned"))
    thread.start()
    thread.join()
    await asyncio.sleep(0)  # the loop runs the report the thread handed it
    assert asyncio.all_tasks() == {asyncio.current_task()}  # no publisher started for it
    assert published.events == []
