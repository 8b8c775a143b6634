"""The callback client: POST the outcome to the API, with retries and exponential backoff.

Outcomes are batched by default: those waiting go together in one POST /callbacks, at most
BATCHES_IN_FLIGHT at a time, and whatever comes in while they are out goes in the next. Nothing
waits on purpose: a lone outcome goes at once. Each callback keeps its own answer, retries and
backoff, exactly as when it is posted alone; only the transport is shared.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import aiohttp

from shared.backoff import Backoff, retry
from shared.contract import (
    API_KEY_HEADER,
    CALLBACK_PATH,
    CALLBACKS_PATH,
    CANCELS_PATH,
    FIRST_CALLBACK_HEADER,
    MAX_CALLBACKS,
    TASKS_PATH,
)
from shared.errors import BusError, CallbackFailed, CallbackRefused, UnknownTask
from shared.ids import utc_iso, utcnow
from shared.schemas import (
    CallbackAnswer,
    CallbackRequest,
    CallbackResponse,
    CallbacksResponse,
    CancelsResponse,
    TaskResponse,
)

log = logging.getLogger(__name__)

#: An idle connection to the API is closed after this long: well before the API closes it
#: (API_IDLE_CONNECTION_SECONDS), so a callback never races the server's close of the
#: connection it reuses (uvicorn's default of 5 s made about 1 callback in 200 fail once, and
#: wait a second, with thousands of handlers at once).
IDLE_CONNECTION_SECONDS = 30

#: Batches of callbacks on their way at once: while they are out, the next outcomes gather.
BATCHES_IN_FLIGHT = 2
#: Most bytes of outcomes in one batch, well under the API's body limit (1 MiB by default).
BATCH_BYTES = 512 * 1024
#: An outcome larger than this is posted alone, to /callback.
ALONE_BYTES = 64 * 1024
#: Answers to a batch that mean the API cannot take it as a batch: an API older than
#: /callbacks (404, 405), or a body it refuses whole (400, 413, 422). Each of its callbacks is
#: then posted alone, to get its own answer.
_BATCH_NOT_TAKEN = frozenset({400, 404, 405, 413, 422})


#: What a child learns of a task before it runs it (CallbackClient.standing).
Standing = Literal["completed", "leased", "ended", "running", "waiting"] | None


class _Unanswered(Exception):
    """No 2xx this time, for a reason another try may not have: the API or its database down,
    a network error, a timeout, 408 or 429."""


@dataclass(slots=True)
class _Waiting:
    """A callback attempt waiting for its batch, and the future of its answer."""

    data: bytes
    task_id: str
    first: bool
    answer: asyncio.Future[bool]

    def wire(self) -> bytes:
        """Its item of POST /callbacks: the callback's JSON as it would be posted alone."""
        flag = b'"first":true,' if self.first else b""
        return b"{" + flag + b'"callback":' + self.data + b"}"


class CallbackClient:
    """One shared aiohttp session (cheap per request under concurrency, unlike httpx's pool).

    `batch`: outcomes go in batches to POST /callbacks (see the module's doc); else each alone.
    """

    def __init__(
        self,
        api_base: str,
        api_key: str,
        *,
        attempts: int = 3,
        backoff: float = 1.0,
        timeout: float = 10.0,
        session: aiohttp.ClientSession | None = None,
        batch: bool = False,
    ) -> None:
        self.api = api_base.rstrip("/")
        self.url = self.api + CALLBACK_PATH
        self.batch_url = self.api + CALLBACKS_PATH
        self.batch = batch
        self._waiting: deque[_Waiting] = deque()
        self._batches: set[asyncio.Task[None]] = set()
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
        for batch in list(self._batches):
            batch.cancel()
        for waiting in self._waiting:
            waiting.answer.cancel()
        self._waiting.clear()
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
            first_try = first and attempt == 1
            if self.batch and len(data) <= ALONE_BYTES:
                return self._post_batched(data, body.task_id, first=first_try)
            return self._post(data, body.task_id, first=first_try)

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

    async def _post_batched(self, data: bytes, task_id: str, *, first: bool) -> bool:
        """One attempt, in the next batch: as _post, from the callback's answer in the batch's."""
        waiting = _Waiting(data, task_id, first, asyncio.get_running_loop().create_future())
        self._waiting.append(waiting)
        self._start_batches()
        return await waiting.answer

    def _start_batches(self) -> None:
        """Post the waiting callbacks, in batches, while fewer than BATCHES_IN_FLIGHT are out."""
        while self._waiting and len(self._batches) < BATCHES_IN_FLIGHT:
            batch = self._next_batch()
            if not batch:
                return
            request = asyncio.create_task(self._post_batch(batch))
            self._batches.add(request)
            request.add_done_callback(self._batch_done)

    def _batch_done(self, request: asyncio.Task[None]) -> None:
        self._batches.discard(request)
        self._start_batches()

    def _next_batch(self) -> list[_Waiting]:
        """The oldest waiting callbacks, up to MAX_CALLBACKS and BATCH_BYTES (one at least)."""
        batch: list[_Waiting] = []
        size = 0
        while self._waiting and len(batch) < MAX_CALLBACKS:
            waiting = self._waiting[0]
            if waiting.answer.done():  # its sender stopped waiting (cancelled)
                self._waiting.popleft()
                continue
            if batch and size + len(waiting.data) > BATCH_BYTES:
                break
            batch.append(self._waiting.popleft())
            size += len(waiting.data)
        return batch

    async def _post_batch(self, batch: list[_Waiting]) -> None:
        """One POST /callbacks; each callback's answer, or failure, goes to its future.

        Whatever happens, every sender of the batch is answered: one whose batch was cancelled
        (the client closed) is cancelled too.
        """
        try:
            await self._answer_batch(batch)
        except Exception as exc:  # a bug here must not leave its senders waiting for good
            log.exception("a batch of %d callbacks failed", len(batch))
            _settle(batch, _Unanswered(f"the batch failed: {exc!r}"))
        finally:
            for waiting in batch:
                if not waiting.answer.done():
                    waiting.answer.cancel()

    async def _answer_batch(self, batch: list[_Waiting]) -> None:
        data = b'{"callbacks":[' + b",".join(w.wire() for w in batch) + b"]}"
        try:
            async with self._get_session().post(
                self.batch_url, data=data, headers=self._headers, timeout=self._timeout
            ) as response:
                text = await response.text()
        except (aiohttp.ClientError, TimeoutError) as exc:
            _settle(batch, _Unanswered(repr(exc)))
            return
        status = response.status
        if status == 200:
            _settle_each(batch, text)
        elif status in _BATCH_NOT_TAKEN:
            if status in (404, 405):
                log.warning("the API at %s has no %s (HTTP %d): posting each callback alone",
                            self.api, CALLBACKS_PATH, status)  # fmt: skip
                self.batch = False
            await asyncio.gather(*(self._post_alone(w) for w in batch))
        elif 400 <= status < 500 and status not in (408, 429):
            _settle(batch, CallbackRefused(f"HTTP {status}: {text[:500]}"))
        else:
            _settle(batch, _Unanswered(f"HTTP {status}: {text[:200]}"))

    async def _post_alone(self, waiting: _Waiting) -> None:
        """A callback of a batch the API did not take, posted to /callback for its own answer."""
        try:
            duplicate = await self._post(waiting.data, waiting.task_id, first=waiting.first)
        except (BusError, _Unanswered) as exc:  # the attempt's failure is its sender's
            _settle([waiting], exc)
        else:
            if not waiting.answer.done():
                waiting.answer.set_result(duplicate)


def _settle(batch: list[_Waiting], failure: Exception) -> None:
    """Every callback of the batch failed this attempt with `failure`."""
    for waiting in batch:
        if not waiting.answer.done():
            waiting.answer.set_exception(failure)


def _settle_each(batch: list[_Waiting], text: str) -> None:
    """Each callback gets its own answer from the batch's, as /callback would have given it."""
    try:
        results = CallbacksResponse.model_validate_json(text).results
    except ValueError as exc:
        _settle(batch, _Unanswered(f"unreadable answer to a batch: {exc}"))
        return
    if len(results) != len(batch):
        _settle(batch, _Unanswered(f"{len(results)} answers to {len(batch)} callbacks"))
        return
    for waiting, result in zip(batch, results, strict=True):
        if waiting.answer.done():
            continue
        try:
            waiting.answer.set_result(_duplicate_or_raise(result, waiting.task_id))
        except (BusError, _Unanswered) as exc:  # the refusal of this callback alone
            waiting.answer.set_exception(exc)


def _duplicate_or_raise(result: CallbackAnswer, task_id: str) -> bool:
    """A callback's answer within a batch, read as _post reads the answer to /callback."""
    if 200 <= result.code < 300:
        return result.duplicate is True
    what = f"HTTP {result.code}: {result.msg or ''}"
    if result.code == 404:
        raise UnknownTask(f"the API does not know task {task_id}: {what}")
    if 400 <= result.code < 500 and result.code not in (408, 429):
        raise CallbackRefused(what[:500])
    raise _Unanswered(what[:200])


def _is_duplicate(text: str) -> bool:
    try:
        return CallbackResponse.model_validate_json(text).duplicate is True
    except ValueError:
        return False
