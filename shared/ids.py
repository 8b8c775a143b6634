"""Task and event ids: unique under any concurrency, unguessable, and verifiable without a database.

A task id is ``t_`` + base32hex(6-byte milliseconds + 10 random bytes) + base32hex(8-byte HMAC)
+ base32hex(5-byte HMAC of the body and the pool it was routed to).
The API can tell a task id it issued from a guess by checking the HMAC, so a callback or a
status query for a task the tracker has not recorded yet is neither refused nor answered 404.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from datetime import UTC, datetime

TASK_PREFIX = "t_"
_BODY_LEN = 26  # base32 of 16 bytes, unpadded
_MAC_LEN = 13  # base32 of 8 bytes, unpadded
_POOL_MAC_LEN = 8  # base32 of 5 bytes: binds the id to the pool it was routed to
TASK_ID_LEN = len(TASK_PREFIX) + _BODY_LEN + _MAC_LEN + _POOL_MAC_LEN


def _b32(raw: bytes) -> str:
    # base32hex keeps byte order in ASCII order, so ids sort by their time prefix.
    return base64.b32hexencode(raw).decode("ascii").rstrip("=").lower()


def _unb32(text: str) -> bytes:
    """Decode, accepting only the one canonical spelling (lower case, zero padding bits)."""
    raw = base64.b32hexdecode(text.upper() + "=" * (-len(text) % 8))
    if _b32(raw) != text:
        raise ValueError("not the canonical spelling")
    return raw


def derive_secret(material: str) -> bytes:
    """A signing key derived from a configured secret (the API key when no id secret is set)."""
    return hashlib.sha256(b"convbus task ids\x00" + material.encode()).digest()


class TaskIds:
    """Issues and verifies signed task ids."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def _mac(self, body: bytes) -> bytes:
        return hmac.new(self._secret, body, hashlib.sha256).digest()[:8]

    def _pool_mac(self, body: bytes, pool: str) -> bytes:
        return hmac.new(self._secret, b"pool\x00" + body + pool.encode(), hashlib.sha256).digest()[
            :5
        ]

    def new(self, pool: str = "", now_ms: int | None = None) -> str:
        """A fresh id for a task routed to `pool`: time-ordered, 80 random bits, signed."""
        ms = int(time.time() * 1000) if now_ms is None else now_ms
        body = ms.to_bytes(6, "big") + secrets.token_bytes(10)
        return TASK_PREFIX + _b32(body) + _b32(self._mac(body)) + _b32(self._pool_mac(body, pool))

    def routed_to(self, task_id: str, pool: str) -> bool:
        """Whether `task_id` is an id we issued for a task routed to `pool`."""
        if self.issued_at(task_id) is None:
            return False
        text = task_id[len(TASK_PREFIX) :]
        body = _unb32(text[:_BODY_LEN])
        try:
            pool_mac = _unb32(text[_BODY_LEN + _MAC_LEN :])
        except ValueError:
            return False
        return hmac.compare_digest(pool_mac, self._pool_mac(body, pool))

    def issued_at(self, task_id: str) -> datetime | None:
        """When this API issued `task_id`, or None if it is not an id signed with our secret."""
        if len(task_id) != TASK_ID_LEN or not task_id.startswith(TASK_PREFIX):
            return None
        text = task_id[len(TASK_PREFIX) :]
        try:
            body = _unb32(text[:_BODY_LEN])
            mac = _unb32(text[_BODY_LEN : _BODY_LEN + _MAC_LEN])
            _unb32(text[_BODY_LEN + _MAC_LEN :])  # canonical spelling of the pool part too
        except ValueError:
            return None
        if not hmac.compare_digest(mac, self._mac(body)):
            return None
        return datetime.fromtimestamp(int.from_bytes(body[:6], "big") / 1000, tz=UTC)


def new_event_id() -> str:
    """A unique event id, time-ordered by its prefix."""
    body = int(time.time() * 1000).to_bytes(6, "big") + secrets.token_bytes(10)
    return "e_" + _b32(body)


def callback_event_id(task_id: str) -> str:
    """The completion's event id is derived from the task: a second callback is a duplicate."""
    return f"cb_{task_id}"


def new_run_id() -> str:
    """A child's id for one run of a handler (short: it travels in every callback)."""
    return "r_" + _b32(secrets.token_bytes(10))


def processing_event_id(task_id: str, run_id: str) -> str:
    """The `processing` event of one run, derived so that the child's event and the one the
    tracker writes from the callback are the same entry, and no run can claim another's id."""
    digest = hashlib.sha256(f"{task_id}/{run_id}".encode()).digest()[:16]
    return "p_" + _b32(digest)


def lease_expired_event_id(task_id: str, attempt: int) -> str:
    """The tracker's `lease_expired` of one attempt: a second sweep of it is the same entry."""
    digest = hashlib.sha256(f"{task_id}/lease/{attempt}".encode()).digest()[:16]
    return "lx_" + _b32(digest)


def expired_event_id(task_id: str) -> str:
    """A task's `expired`: the child's and the tracker's sweep's are the same entry."""
    digest = hashlib.sha256(f"{task_id}/expired".encode()).digest()[:16]
    return "x_" + _b32(digest)


def cancel_event_id(task_id: str) -> str:
    """A task's `cancel`: asked twice, it is one entry."""
    digest = hashlib.sha256(f"{task_id}/cancel".encode()).digest()[:16]
    return "c_" + _b32(digest)


def question_event_id(task_id: str, round_: int) -> str:
    """A task's `input_required` of one round: the run that asks again (its delivery came
    back) asks in the same entry."""
    digest = hashlib.sha256(f"{task_id}/ask/{round_}".encode()).digest()[:16]
    return "q_" + _b32(digest)


def answer_event_id(task_id: str, round_: int) -> str:
    """A task's `input` (the answer) of one round: an answer retried is one entry."""
    digest = hashlib.sha256(f"{task_id}/answer/{round_}".encode()).digest()[:16]
    return "a_" + _b32(digest)


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


def utc_iso(moment: datetime) -> str:
    """A UTC moment as the bus writes it: RFC 3339 with a `Z`."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
