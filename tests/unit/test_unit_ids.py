"""shared/ids.py: signed task ids, event ids."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest

from shared.ids import (
    TASK_ID_LEN,
    TASK_PREFIX,
    TaskIds,
    callback_event_id,
    derive_secret,
    new_event_id,
    utcnow,
)

SECRET = derive_secret("unit-test-key")
B32 = "0123456789abcdefghijklmnopqrstuv"  # base32hex, lower case
NOW_MS = 1_735_689_600_123  # 2025-01-01T00:00:00.123Z


@pytest.fixture
def ids() -> TaskIds:
    return TaskIds(SECRET)


def _change_char(task_id: str, index: int, *, flip: int = 16) -> str:
    """`task_id` with the base32 character at `index` replaced by another one."""
    old = task_id[index]
    new = B32[B32.index(old) ^ flip]
    return task_id[:index] + new + task_id[index + 1 :]


def test_task_ids_are_unique_over_many_calls(ids: TaskIds) -> None:
    issued = [ids.new() for _ in range(5000)]
    assert len(set(issued)) == len(issued)


def test_task_ids_are_unique_even_within_one_millisecond(ids: TaskIds) -> None:
    issued = {ids.new(now_ms=NOW_MS) for _ in range(2000)}
    assert len(issued) == 2000


def test_task_id_has_prefix_length_and_alphabet(ids: TaskIds) -> None:
    task_id = ids.new()
    assert TASK_PREFIX == "t_"
    assert TASK_ID_LEN == 49
    assert len(task_id) == TASK_ID_LEN
    assert task_id.startswith(TASK_PREFIX)
    assert re.fullmatch(r"t_[0-9a-v]{47}", task_id)


def test_task_ids_sort_as_strings_in_time_order(ids: TaskIds) -> None:
    earlier = ids.new(now_ms=1_735_689_600_207)
    later = ids.new(now_ms=1_735_689_600_208)
    assert earlier < later


def test_task_id_verifies_with_the_right_secret(ids: TaskIds) -> None:
    assert ids.issued_at(ids.new()) is not None


def test_task_id_verifies_with_a_second_instance_sharing_the_secret(ids: TaskIds) -> None:
    assert TaskIds(derive_secret("unit-test-key")).issued_at(ids.new()) is not None


def test_task_id_fails_with_a_wrong_secret(ids: TaskIds) -> None:
    other = TaskIds(derive_secret("another-key"))
    assert other.issued_at(ids.new()) is None


def test_derive_secret_is_deterministic_and_key_dependent() -> None:
    assert derive_secret("a") == derive_secret("a")
    assert derive_secret("a") != derive_secret("b")
    assert len(derive_secret("a")) == 32


@pytest.mark.parametrize("index", [2, 10, 20, 27, 28, 35])
def test_task_id_fails_with_a_tampered_char(ids: TaskIds, index: int) -> None:
    task_id = ids.new(now_ms=NOW_MS)
    tampered = _change_char(task_id, index)
    assert tampered != task_id
    assert ids.issued_at(tampered) is None


@pytest.mark.parametrize("index", [27, 40], ids=["body-last-char", "mac-last-char"])
def test_task_id_fails_when_the_last_char_of_a_part_changes_its_padding_bits(
    ids: TaskIds, index: int
) -> None:
    task_id = ids.new(now_ms=NOW_MS)
    tampered = _change_char(task_id, index, flip=1)
    assert tampered != task_id
    assert ids.issued_at(tampered) is None


def test_task_id_fails_when_upper_cased(ids: TaskIds) -> None:
    task_id = ids.new(now_ms=NOW_MS)
    assert ids.issued_at(TASK_PREFIX + task_id[2:].upper()) is None


def test_task_id_fails_with_wrong_length(ids: TaskIds) -> None:
    task_id = ids.new()
    assert ids.issued_at(task_id[:-1]) is None
    assert ids.issued_at(task_id + "a") is None


def test_task_id_fails_with_wrong_prefix(ids: TaskIds) -> None:
    task_id = ids.new()
    assert ids.issued_at("x_" + task_id[2:]) is None


@pytest.mark.parametrize("bad", ["0", "1", "8", "9", "!", "="])
def test_task_id_fails_with_non_base32_chars(ids: TaskIds, bad: str) -> None:
    task_id = ids.new()
    assert ids.issued_at(task_id[:5] + bad + task_id[6:]) is None


@pytest.mark.parametrize("text", ["", "t_", "t_1735689600123", "hello"])
def test_issued_at_rejects_strings_that_are_not_ids(ids: TaskIds, text: str) -> None:
    assert ids.issued_at(text) is None


def test_issued_at_returns_the_embedded_time(ids: TaskIds) -> None:
    issued = ids.issued_at(ids.new(now_ms=NOW_MS))
    assert issued == datetime(2025, 1, 1, 0, 0, 0, 123_000, tzinfo=UTC)
    assert issued is not None
    assert issued.tzinfo is not None


def test_issued_at_without_now_ms_is_close_to_now(ids: TaskIds) -> None:
    before = utcnow()
    issued = ids.issued_at(ids.new())
    after = utcnow()
    assert issued is not None
    assert before.replace(microsecond=before.microsecond // 1000 * 1000) <= issued <= after


def test_callback_event_id_is_deterministic(ids: TaskIds) -> None:
    task_id = ids.new()
    assert callback_event_id(task_id) == callback_event_id(task_id)
    assert callback_event_id(task_id) == f"cb_{task_id}"
    assert callback_event_id(task_id) != callback_event_id(ids.new())


def test_event_ids_are_unique_and_prefixed() -> None:
    issued = [new_event_id() for _ in range(2000)]
    assert len(set(issued)) == len(issued)
    assert all(re.fullmatch(r"e_[0-9a-v]{26}", e) for e in issued)


def test_utcnow_is_timezone_aware_utc() -> None:
    assert utcnow().utcoffset() is not None
    assert utcnow().tzinfo == UTC
