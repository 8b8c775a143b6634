"""Reading a Server-Sent Events stream as a client does (the WHATWG format, in brief)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx


@dataclass(frozen=True)
class Event:
    """One event of the stream: its `id:` and its `data:` as JSON; or a comment (keep-alive)."""

    id: str | None
    data: dict[str, Any] | None
    comment: str | None = None


def events(response: httpx.Response) -> Iterator[Event]:
    """The events of an open streaming response, as they come; ends when the server closes."""
    fields: dict[str, list[str]] = {}
    for line in response.iter_lines():
        if line == "":
            if "data" in fields or "comment" in fields:
                data = "\n".join(fields.get("data", [])) or None
                yield Event(
                    id=fields["id"][-1] if "id" in fields else None,
                    data=json.loads(data) if data is not None else None,
                    comment="\n".join(fields["comment"]) if "comment" in fields else None,
                )
            fields = {}
            continue
        name, _, value = line.partition(":")
        if name == "":
            name = "comment"
        fields.setdefault(name, []).append(value[1:] if value.startswith(" ") else value)
