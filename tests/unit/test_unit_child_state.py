"""The child's record of finished tasks: workers of one pool open one file together."""

from __future__ import annotations

import threading
from pathlib import Path

from services.child.state import FinishedTasks


def _open_together(path: Path, workers: int = 4) -> list[BaseException]:
    """Open the record from `workers` threads at once; the errors they met."""
    errors: list[BaseException] = []
    start = threading.Barrier(workers)

    def open_record() -> None:
        start.wait()
        try:
            FinishedTasks(path, retention_seconds=3600).close()
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_record) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


def test_workers_starting_together_on_a_new_file_all_open_it(tmp_path: Path) -> None:
    # Before its set-up retried, about one start in twelve failed with `database is locked`.
    for n in range(40):
        assert _open_together(tmp_path / f"{n}" / "state.db") == []
