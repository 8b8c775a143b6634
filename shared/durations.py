"""Durations written the short way (`30d`, `12h`, `90m`), for settings and the command line."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated

from pydantic import AfterValidator, BeforeValidator

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
_PATTERN = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")


def parse_duration(text: str) -> timedelta:
    """`45s`, `90m`, `12h`, `30d`, `2w` as a timedelta; ValueError for anything else, or zero."""
    match = _PATTERN.fullmatch(text.strip().lower())
    if match is None:
        raise ValueError(
            f"{text!r} is not a duration: write a number and a unit (s, m, h, d, w), e.g. 30d"
        )
    try:
        duration = timedelta(seconds=float(match[1]) * _UNITS[match[2]])
    except OverflowError as exc:
        raise ValueError(f"{text!r} is too long a duration") from exc
    if duration <= timedelta(0):
        raise ValueError(f"{text!r}: a duration must be more than zero")
    return duration


def _from_text(value: object) -> object:
    return parse_duration(value) if isinstance(value, str) else value


def _positive(value: timedelta) -> timedelta:
    if value <= timedelta(0):
        raise ValueError("a duration must be more than zero")
    return value


#: A setting read as `30d`, `12h`, `90m`… (or a timedelta in code); never zero or negative.
Duration = Annotated[timedelta, BeforeValidator(_from_text), AfterValidator(_positive)]
