"""Durations (`30d`, `12h`, `90m`) on the command line and in the settings; prune's arguments."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from cli.main import parser
from shared.durations import parse_duration
from shared.retention import PruneCounts, prune
from shared.settings import TrackerSettings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No RELAY_* variable of the machine leaks into these tests."""
    for name in list(os.environ):
        if name.upper().startswith("RELAY_"):
            monkeypatch.delenv(name)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30d", timedelta(days=30)),
        ("12h", timedelta(hours=12)),
        ("90m", timedelta(minutes=90)),
        ("45s", timedelta(seconds=45)),
        ("2w", timedelta(weeks=2)),
        ("1.5h", timedelta(minutes=90)),
        (" 7D ", timedelta(days=7)),
    ],
)
def test_durations(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["0d", "0.0h", "-1d", "30", "d", "30 days", "1d2h", "", "1e3s"])
def test_what_is_not_a_duration(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_an_endless_duration() -> None:
    with pytest.raises(ValueError, match="too long"):
        parse_duration("99999999999w")


def test_prune_on_the_command_line() -> None:
    args = parser().parse_args(["prune", "--older-than", "30d"])
    assert (args.older_than, args.dry_run, args.batch_size) == (timedelta(days=30), False, 5000)
    args = parser().parse_args(["prune", "--older-than=90m", "--dry-run", "--batch-size", "200"])
    assert (args.older_than, args.dry_run, args.batch_size) == (timedelta(minutes=90), True, 200)


@pytest.mark.parametrize(
    "argv",
    [
        ["--older-than", "0d"],
        ["--older-than=-3d"],
        ["--older-than", "30"],
        ["--older-than", "59m"],
        ["--older-than", "forever"],
        [],
        ["--older-than", "30d", "--batch-size", "0"],
        ["--older-than", "30d", "--batch-size", "10001"],
    ],
)
def test_prune_refuses_nonsense(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        parser().parse_args(["prune", *argv])
    assert exit_.value.code == 2
    assert "convbus prune: error" in capsys.readouterr().err


def test_pruning_is_off_unless_set(monkeypatch: pytest.MonkeyPatch) -> None:
    assert TrackerSettings().prune_after is None
    monkeypatch.setenv("RELAY_PRUNE_AFTER", "")
    assert TrackerSettings().prune_after is None
    assert TrackerSettings().prune_every == timedelta(hours=1)


def test_pruning_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAY_PRUNE_AFTER", "30d")
    monkeypatch.setenv("RELAY_PRUNE_EVERY", "15m")
    settings = TrackerSettings()
    assert (settings.prune_after, settings.prune_every) == (
        timedelta(days=30),
        timedelta(minutes=15),
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("RELAY_PRUNE_AFTER", "30"),
        ("RELAY_PRUNE_AFTER", "10m"),
        ("RELAY_PRUNE_AFTER", "-1d"),
        ("RELAY_PRUNE_EVERY", "0s"),
        ("RELAY_PRUNE_EVERY", "hourly"),
    ],
)
def test_pruning_settings_refuse_nonsense(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError, match=name.removeprefix("RELAY_").lower()):
        TrackerSettings()


async def test_prune_wants_an_aware_cutoff_and_a_sane_batch() -> None:
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine("sqlite+aiosqlite://")
    try:
        with pytest.raises(ValueError, match="timezone"):
            await prune(engine, datetime(2026, 1, 1))
        with pytest.raises(ValueError, match="batch_size"):
            await prune(engine, datetime(2026, 1, 1, tzinfo=UTC), batch_size=0)
    finally:
        await engine.dispose()


def test_counts_add_up() -> None:
    total = PruneCounts(tasks=1, task_entries=3) + PruneCounts(send_keys=2, other_entries=4)
    assert total == PruneCounts(1, 3, 2, 4)
    assert total.total == 10
    assert str(total) == "1 tasks, 3 of their log entries, 2 send keys, 4 log entries of no task"
