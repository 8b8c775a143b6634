"""The callback client: POST the outcome to the API, with retries and exponential backoff."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from datetime import datetime
from typing import Literal

import aiohttp

from shared.backoff import Backoff, retry
from shared.contract import (
    API_KEY_HEADER,
    CALLBACK_PATH,
    CANCELS_PATH,
    FIRST_CALLBACK_HEADER,
    TASKS_PATH,
)
from shared.errors import CallbackFailed, CallbackRefused, UnknownTask
from shared.ids import utc_iso, utcnow
from shared.schemas import CallbackRequest, CallbackResponse, CancelsResponse, TaskResponse

log = logging.getLogger(__name__)

#: An idle connection to the API is closed after this long: well before the API closes it
#: (API_IDLE_CONNECTION_SECONDS), so a callback never races the server's close of the
#: connection it reuses (uvicorn's default of 5 s made about 1 callback in 200 fail once, and
#: wait a second, with thousands of handlers at once).
IDLE_CONNECTION_SECONDS = 30


#: What a child learns of a task before it runs it (CallbackClient.standing).
Standing = Literal["completed", "leased", "ended", "running", "waiting"] | None


class _Unanswered(Exception):
    """No 2xx this time, for a reason another try may not have: the API or its database down,
    a network error, a timeout, 408 or 429."""


class CallbackClient:
    """One shared aiohttp session (cheap per request under concurrency, unlike httpx's pool)."""

    def __init__(
        self,
        api_base: str,
        api_key: str,
        *,
        attempts: int = 3,
        backoff: float = 1.0,
        timeout: float = 10.0,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.api = api_base.rstrip("/")
        self.url = self.api + CALLBACK_PATH
        self.attempts = attempts
        #: The wait after each failed attempt: `backoff`, then twice that each time (the seed's).
        self.backoff = Backoff(first=backoff, factor=2.0, cap=None)
        self._headers = {API_KEY_HEADER: api_key, "Content-Type": "application/json"}
        self._first_headers = {**self._headers, FIRST_CALLBACK_HEADER: "1"}
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session = session

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=IDLE_CONNECTION_SECONDS)
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def standing(self, task_id: str) -> Standing:
        """What the bus records of a task that may have run: `completed`, `leased` (a run of it
        holds a lease that has not expired: another child answers for it), `ended` (canceled
        or expired: it never runs again), `running` (processing or retrying, no lease), or
        None (unsure, or none of these).

        Not `failed`: a replayed task reads `failed` until the tracker applies the replay.
        """
        url = f"{self.api}{TASKS_PATH}/{task_id}"
        try:
            async with self._get_session().get(url, timeout=self._timeout) as response:
                if response.status != 200:
                    return None
                record = TaskResponse.model_validate_json(await response.read())
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None
        if record.task_status == "completed":
            return "completed"
        if record.task_status in ("canceled", "expired"):
            return "ended"
        if record.task_status == "input_required":
            return "waiting"
        until = record.lease_until
        if record.task_status == "processing" and until is not None and until > utcnow():
            return "leased"
        if record.task_status in ("processing", "retrying"):
            return "running"
        return None

    async def read_cancels(self, since: datetime) -> list[str]:
        """The ids of the tasks canceled since `since`, as the API recorded them; raises
        CallbackFailed when the API does not answer them."""
        url = f"{self.api}{CANCELS_PATH}"
        params = {"since": utc_iso(since)}
        try:
            async with self._get_session().get(
                url, params=params, headers=self._headers, timeout=self._timeout
            ) as response:
                body = await response.read()
                if response.status != 200:
                    raise CallbackFailed(
                        f"cancels not read: HTTP {response.status}: {body[:200]!r}"
                    )
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise CallbackFailed(f"cancels not read: {exc!r}") from exc
        try:
            return CancelsResponse.model_validate_json(body).task_ids
        except ValueError as exc:
            raise CallbackFailed(f"cancels not read: {exc}") from exc

    def delays(self) -> list[float]:
        """Seconds to wait after each failed attempt, before jitter: backoff, twice that, ...

        As in the seed, the wait follows every failure, the last included: a task whose
        callback failed goes back to the queue no sooner than that.
        """
        return [self.backoff.base(n) for n in range(1, self.attempts + 1)]

    async def send(self, body: CallbackRequest, *, first: bool = False) -> bool:
        """POST until a 2xx; True if the API called it a duplicate.

        `first`: no callback for this task was ever sent before this one (the task's first
        delivery, its outcome just computed); said on the first try only.

        Raises UnknownTask on 404 and CallbackRefused on another 4xx (retrying cannot help),
        CallbackFailed when every attempt failed.
        """
        data = body.model_dump_json(exclude_none=True).encode()

        def post(attempt: int) -> Awaitable[bool]:
            return self._post(data, body.task_id, first=first and attempt == 1)

        what = f"callback for {body.task_id} failed"
        try:
            return await retry(
                post, _Unanswered, self.backoff, log=log, what=what, attempts=self.attempts
            )
        except _Unanswered as exc:
            n = self.attempts
            log.warning("callback for %s failed (attempt %d/%d): %s", body.task_id, n, n, exc)
            await asyncio.sleep(self.backoff.wait(self.attempts))
            raise CallbackFailed(
                f"callback for {body.task_id} failed {self.attempts} times: {exc}"
            ) from exc

    async def _post(self, data: bytes, task_id: str, *, first: bool) -> bool:
        """One POST: whether the API called it a duplicate; _Unanswered if another may work."""
        headers = self._first_headers if first else self._headers
        try:
            async with self._get_session().post(
                self.url, data=data, headers=headers, timeout=self._timeout
            ) as response:
                text = await response.text()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _Unanswered(repr(exc)) from exc
        if 200 <= response.status < 300:
            return _is_duplicate(text)
        if response.status == 404:
            raise UnknownTask(f"the API does not know task {task_id}: {text[:200]}")
        if 400 <= response.status < 500 and response.status not in (408, 429):
            raise CallbackRefused(f"HTTP {response.status}: {text[:500]}")
        raise _Unanswered(f"HTTP {response.status}: {text[:200]}")


def _is_duplicate(text: str) -> bool:
    try:
        return CallbackResponse.model_validate_json(text).duplicate is True
    except ValueError:
        return False
