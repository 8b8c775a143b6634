"""The log formats: readable lines and JSON lines, both naming the task being worked on."""

from __future__ import annotations

import json
import logging

import pytest

from shared.logs import setup_logging, task_context


@pytest.fixture
def restore_logging() -> object:
    yield
    setup_logging("WARNING", "tests")


def _emit(capsys: pytest.CaptureFixture[str], fmt: str) -> list[str]:
    setup_logging("INFO", "child", fmt)
    log = logging.getLogger("convbus.test")
    log.info("outside")
    with task_context("t_1", "conv-1"):
        log.info("inside %s", "a task")
        try:
            raise ValueError("kaputt")
        except ValueError:
            log.exception("failed")
    log.info("after")
    return capsys.readouterr().err.splitlines()


@pytest.mark.usefixtures("restore_logging")
def test_json_lines_carry_the_task_only_inside_its_context(
    capsys: pytest.CaptureFixture[str],
) -> None:
    lines = _emit(capsys, "json")
    records = [json.loads(line) for line in lines]
    assert len(records) == 4  # the traceback stays inside its record
    outside, inside, failed, after = records
    assert outside["msg"] == "outside" and "task_id" not in outside
    assert inside["msg"] == "inside a task" and inside["service"] == "child"
    assert (inside["task_id"], inside["conversation_id"]) == ("t_1", "conv-1")
    assert inside["level"] == "INFO" and inside["logger"] == "convbus.test"
    assert inside["ts"].endswith("+00:00")
    assert failed["task_id"] == "t_1" and "ValueError: kaputt" in failed["exc"]
    assert "task_id" not in after


@pytest.mark.usefixtures("restore_logging")
def test_text_lines_name_the_task_before_any_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    lines = _emit(capsys, "text")
    assert lines[0].endswith("INFO child convbus.test: outside")
    assert lines[1].endswith("inside a task [task=t_1 conversation=conv-1]")
    assert lines[2].endswith("failed [task=t_1 conversation=conv-1]")
    assert lines[3] == "Traceback (most recent call last):"
    assert lines[-1].endswith("after")


def test_contexts_nest_and_restore() -> None:
    seen: list[object] = []

    class Grab(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(
                (getattr(record, "task_id", None), getattr(record, "conversation_id", None))
            )

    from shared.logs import _TaskContext

    handler = Grab()
    handler.addFilter(_TaskContext())
    log = logging.getLogger("convbus.nest")
    log.addHandler(handler)
    log.propagate = False
    try:
        with task_context("a", "c"):
            with task_context("b"):
                log.warning("inner")
            log.warning("outer")
        log.warning("none")
    finally:
        log.removeHandler(handler)
    assert seen == [("b", None), ("a", "c"), (None, None)]
