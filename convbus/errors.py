"""The client's errors: the contract's error answers, as exceptions carrying the server's
message; all under the bus's one root, shared.errors.BusError."""

from __future__ import annotations

from typing import Any

from shared.errors import BusError


class ClientError(BusError):
    """The API refused or could not serve a request."""

    def __init__(
        self, msg: str, *, status: int | None = None, errors: list[dict[str, Any]] | None = None
    ) -> None:
        super().__init__(msg if status is None else f"HTTP {status}: {msg}")
        #: The server's message (the contract's `msg`), or what went wrong on the way.
        self.msg = msg
        #: The HTTP status; None when no answer came (the connection failed).
        self.status = status
        #: The fields a 422 names, as the server listed them.
        self.errors = errors


class Invalid(ClientError):
    """400, 413 or 422: the request is wrong; sending it again cannot help."""


class Unauthorized(ClientError):
    """401: no key, or a key the API does not know."""


class Forbidden(ClientError):
    """403: the key may not do this (its scopes, its name, its pools)."""


class NotFound(ClientError):
    """404: a task the bus never issued."""


class Conflict(ClientError):
    """409: the task's state forbids it (cancel a finished task, answer a task that does not
    wait, a second answer), or an idempotency key sent with another body."""


class RateLimited(ClientError):
    """429, still after the client's retries."""


class Unavailable(ClientError):
    """503 or no answer (broker or database down, connection refused), still after the
    client's retries. A send that ends so may or may not have been taken: sending it again with
    the same `idempotency_key` (or `task_id`) creates nothing new."""


class WaitTimedOut(BusError):
    """The task did not end (or ask a question) within the time the caller gave."""

    def __init__(self, task_id: str, state: str, seconds: float) -> None:
        super().__init__(f"task {task_id} still {state} after {seconds:g} s")
        self.task_id = task_id
        #: Its state when the time was up.
        self.state = state


_BY_STATUS: dict[int, type[ClientError]] = {
    400: Invalid, 401: Unauthorized, 403: Forbidden, 404: NotFound, 409: Conflict, 413: Invalid,
    422: Invalid, 429: RateLimited, 503: Unavailable,
}  # fmt: skip


def error_for(status: int, msg: str, errors: list[dict[str, Any]] | None = None) -> ClientError:
    """The exception of an error answer."""
    kind = _BY_STATUS.get(status, Unavailable if status >= 500 else ClientError)
    return kind(msg, status=status, errors=errors)
