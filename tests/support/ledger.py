"""What the tracker recorded, read straight from the database; the exactly-once check."""

from __future__ import annotations

from shared.db import sync_url
from tests.support.bus import wait_for


def ledger(database_url: str) -> tuple[dict[str, str], dict[tuple[str, str], int]]:
    """(state by task, number of log entries by task and event), read straight from the database."""
    from sqlalchemy import create_engine, text

    engine = create_engine(sync_url(database_url))
    try:
        with engine.connect() as conn:
            states = {
                r.task_id: r.state for r in conn.execute(text("SELECT task_id, state FROM tasks"))
            }
            counts = {
                (r.task_id, r.event): r.n
                for r in conn.execute(
                    text(
                        "SELECT task_id, event, COUNT(*) AS n FROM log_entries"
                        " GROUP BY task_id, event"
                    )
                )
            }
    finally:
        engine.dispose()
    return states, counts


def all_final(database_url: str, task_ids: list[str]) -> bool:
    try:
        states, _ = ledger(database_url)
    except Exception:  # the database may be the thing that is down
        return False
    return all(states.get(t) in ("completed", "failed") for t in task_ids)


def assert_exactly_once(database_url: str, task_ids: list[str], timeout: float = 90) -> None:
    """Every task reached one final state, with exactly one send and one completion logged."""
    wait_for(lambda: all_final(database_url, task_ids), timeout=timeout, what="every task final")
    states, counts = ledger(database_url)
    assert {states[t] for t in task_ids} == {"completed"}, {t: states[t] for t in task_ids}
    for task_id in task_ids:
        assert counts.get((task_id, "send")) == 1, task_id
        assert counts.get((task_id, "callback")) == 1, task_id
