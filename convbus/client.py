"""The bus's Python client for masters and users: `Client` (blocking) and `AsyncClient`.

Both send the same requests (convbus/calls.py) over one pooled HTTP connection (httpx), and
retry what may be retried — 503 and 429 (after Retry-After), a refused or dropped connection,
a timeout — with a backoff; a send keeps one idempotency key across its tries, so a send
retried never makes two tasks. An error answer raises the contract's error (convbus/errors.py)
with the server's message.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from typing import Any, Literal

import httpx

from convbus.calls import (
    RETRY_STATUSES,
    AnsweredRounds,
    Backoff,
    Call,
    Entry,
    Inbox,
    SseReader,
    answer_call,
    cancel_call,
    inbox_ack_call,
    inbox_call,
    read_answer,
    send_call,
    status_call,
    stream_params,
    task_call,
)
from convbus.errors import Invalid, Unavailable, WaitTimedOut
from shared.contract import API_KEY_HEADER, STREAM_PATH
from shared.ids import utc_iso
from shared.schemas import TaskResponse

#: Where `make run` serves the API.
DEFAULT_BASE_URL = "http://127.0.0.1:8008"
#: A stream gets a keep-alive every RELAY_STREAM_KEEPALIVE_S (15 s): silence this long is a
#: dead connection.
STREAM_SILENCE_S = 60.0


def _moment(value: datetime | str | None) -> str | None:
    return utc_iso(value) if isinstance(value, datetime) else value


class _Options:
    """What both clients are configured with."""

    def __init__(
        self,
        *,
        base_url: str | None,
        api_key: str | None,
        name: str | None,
        timeout: float,
        retries: int,
        backoff: Backoff | None,
        max_wait: float,
    ) -> None:
        self.base_url = (base_url or os.environ.get("CONVBUS_URL") or DEFAULT_BASE_URL).rstrip("/")
        key = api_key if api_key is not None else os.environ.get("RELAY_API_KEY")
        if not key:
            raise Invalid("no API key: pass api_key= or set RELAY_API_KEY")
        self.headers = {API_KEY_HEADER: key}
        #: Who this client is: the `from` of its sends, the inbox it reads.
        self.name = name
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff or Backoff()
        #: The longest one request waits at the API (at most its RELAY_MAX_WAIT_S).
        self.max_wait = max_wait

    def sender(self, from_: str | None) -> str:
        sender = from_ or self.name
        if sender is None:
            raise Invalid("who sends: pass from_= or give the client a name=")
        return sender

    def own(self, name: str | None) -> str:
        own = name or self.name
        if own is None:
            raise Invalid("whose inbox: pass its name or give the client a name=")
        return own

    def unavailable(self, exc: Exception) -> Unavailable:
        return Unavailable(f"no answer from {self.base_url}: {exc!r}")


def _task_fields(
    *,
    cmd: str | None,
    payload: dict[str, Any] | None,
    text: str | None,
    conversation_id: str | None,
    timeout_s: float | None,
    priority: Literal["high"] | None,
    ttl_s: float | None,
    deadline: datetime | str | None,
    delay_s: float | None,
    not_before: datetime | str | None,
    notify: dict[str, Any] | None,
    task_id: str | None,
) -> dict[str, Any]:
    return {
        "cmd": cmd, "payload": payload, "text": text, "conversation_id": conversation_id,
        "timeout_s": timeout_s, "priority": priority, "ttl_s": ttl_s,
        "deadline": _moment(deadline), "delay_s": delay_s, "not_before": _moment(not_before),
        "notify": notify, "task_id": task_id,
    }  # fmt: skip


class Client:
    """The bus's API, blocking. Use it as a context manager, or `close()` it.

    `name`: who this client is (the `from` of its sends, its inbox); `api_key`: its key
    (RELAY_API_KEY by default); `base_url`: the API (CONVBUS_URL, else http://127.0.0.1:8008);
    `timeout`: seconds per request (a wait's own seconds come on top); `retries`: tries after
    the first for 503, 429 and connection errors.
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        name: str | None = None,
        timeout: float = 10.0,
        retries: int = 5,
        backoff: Backoff | None = None,
        max_wait: float = 30.0,
    ) -> None:
        self.options = _Options(
            base_url=base_url, api_key=api_key, name=name, timeout=timeout, retries=retries,
            backoff=backoff, max_wait=max_wait,
        )  # fmt: skip
        self._http = httpx.Client(base_url=self.options.base_url, headers=self.options.headers)
        self._answered = AnsweredRounds()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _request(self, call: Call) -> dict[str, Any]:
        tries = 0
        while True:
            tries += 1
            try:
                response = self._http.request(
                    call.method, call.path, params=call.params, json=call.body,
                    headers=call.headers, timeout=self.options.timeout + call.holds_s,
                )  # fmt: skip
            except httpx.TransportError as exc:
                if tries > self.options.retries:
                    raise self.options.unavailable(exc) from exc
                time.sleep(self.options.backoff.delay(tries))
                continue
            if response.status_code in RETRY_STATUSES and tries <= self.options.retries:
                time.sleep(self.options.backoff.delay(tries, response.headers.get("Retry-After")))
                continue
            return read_answer(response.status_code, response.content)

    def send(
        self,
        to: str,
        cmd: str | None = None,
        *,
        payload: dict[str, Any] | None = None,
        text: str | None = None,
        conversation_id: str | None = None,
        from_: str | None = None,
        timeout_s: float | None = None,
        priority: Literal["high"] | None = None,
        ttl_s: float | None = None,
        deadline: datetime | str | None = None,
        delay_s: float | None = None,
        not_before: datetime | str | None = None,
        notify: dict[str, Any] | None = None,
        task_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> str:
        """Send a task to pool `to`; its id, once RabbitMQ confirmed it."""
        fields = _task_fields(
            cmd=cmd, payload=payload, text=text, conversation_id=conversation_id,
            timeout_s=timeout_s, priority=priority, ttl_s=ttl_s, deadline=deadline,
            delay_s=delay_s, not_before=not_before, notify=notify, task_id=task_id,
        )  # fmt: skip
        call = send_call(self.options.sender(from_), to, "task", fields, idempotency_key)
        task: str = self._request(call)["task_id"]
        return task

    def message(
        self,
        to: str,
        text: str | None = None,
        *,
        payload: dict[str, Any] | None = None,
        conversation_id: str | None = None,
        from_: str | None = None,
        idempotency_key: str | None = None,
    ) -> None:
        """Send a message to `to` (a user, a master): it waits in its inbox."""
        fields = {"text": text, "payload": payload, "conversation_id": conversation_id}
        self._request(send_call(self.options.sender(from_), to, "message", fields, idempotency_key))

    def status(self, task_id: str) -> str:
        """The task's state (`pending`, `processing`, …, `input_required`, `completed`, …)."""
        state: str = self._request(status_call(task_id))["task_status"]
        return state

    def task(self, task_id: str) -> TaskResponse:
        """The task's whole record (its result, its error, the question it waits on, …)."""
        return TaskResponse.model_validate(self._request(task_call(task_id)))

    def wait(self, task_id: str, timeout: float | None = None) -> TaskResponse:
        """The task's record once it ended or asks a question (`input_required`; not the one
        this client just answered); raises WaitTimedOut after `timeout` seconds (None: no
        limit). The API holds each request until then (no polling)."""
        give_up = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if give_up is None else max(0.0, give_up - time.monotonic())
            hold = self.options.max_wait if left is None else min(self.options.max_wait, left)
            call = task_call(task_id, hold, self._answered.of(task_id))
            record = TaskResponse.model_validate(self._request(call))
            if self._answered.settled(record):
                return record
            if give_up is not None and time.monotonic() >= give_up:
                raise WaitTimedOut(task_id, record.task_status, timeout or 0.0)

    def send_and_wait(
        self, to: str, cmd: str | None = None, *, timeout: float | None = None, **send: Any
    ) -> TaskResponse:
        """Send a task and wait for it (as `wait`): its record, result included."""
        return self.wait(self.send(to, cmd, **send), timeout)

    def answer(self, task_id: str, answer: Any, *, as_: str | None = None) -> int:
        """Answer the question the task waits on; the question's round. `as_`: for a key that
        answers for others, the party answering."""
        round_: int = self._request(answer_call(task_id, answer, as_))["round"]
        self._answered.answered(task_id, round_)
        return round_

    def cancel(self, task_id: str) -> None:
        """Cancel the task: it never starts from now, a running handler is cancelled."""
        self._request(cancel_call(task_id))

    def inbox(
        self,
        name: str | None = None,
        *,
        after: int | None = None,
        limit: int | None = None,
        wait: float | None = None,
    ) -> Inbox:
        """The inbox of `name` (this client's by default): what was sent to it, the questions
        it is asked, the outcomes of its tasks; after `after`, else after what it acknowledged.
        `wait`: seconds to wait for an entry when there is none (no polling)."""
        own = self.options.own(name)
        body = self._request(inbox_call(own, after, limit, wait))
        entries = [Entry.model_validate(e) for e in body["entries"]]
        return Inbox(own, entries, body["acked"])

    def ack_inbox(self, up_to: int, name: str | None = None) -> int:
        """Mark the inbox read up to log id `up_to`; how far it is acknowledged now."""
        acked: int = self._request(inbox_ack_call(self.options.own(name), up_to))["acked"]
        return acked

    def stream(
        self,
        *,
        after: int | None = None,
        task_id: str | None = None,
        conversation_id: str | None = None,
        from_: str | None = None,
        to: str | None = None,
        event: str | None = None,
    ) -> Iterator[Entry]:
        """Log entries as they are committed (GET /stream), with the filters of GET /logs;
        `after`: first those after that id. A dropped connection is resumed after the last
        entry seen (no entry missed, none twice); it ends when the caller stops reading, or
        raises after `retries` failed reconnections in a row."""
        params = stream_params({"task_id": task_id, "conversation_id": conversation_id,
                                "from_": from_, "to": to, "event": event})  # fmt: skip
        last, failures = after, 0
        timeout = httpx.Timeout(self.options.timeout, read=STREAM_SILENCE_S)
        while True:
            headers = {} if last is None else {"Last-Event-ID": str(last)}
            try:
                with self._http.stream(
                    "GET", STREAM_PATH, params=params, headers=headers, timeout=timeout
                ) as response:
                    if response.status_code != 200:
                        response.read()
                        if response.status_code not in RETRY_STATUSES:
                            read_answer(response.status_code, response.content)
                        raise httpx.TransportError(f"HTTP {response.status_code}")
                    reader = SseReader()
                    for line in response.iter_lines():
                        if (entry := reader.line(line)) is not None:
                            last, failures = entry.id, 0
                            yield entry
            except httpx.TransportError as exc:
                if failures >= self.options.retries:
                    raise self.options.unavailable(exc) from exc
            failures += 1
            time.sleep(self.options.backoff.delay(failures))


class AsyncClient:
    """The bus's API for asyncio: `Client`'s methods, awaited (`stream` is an async iterator).
    Use it as an async context manager, or `await aclose()`."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        name: str | None = None,
        timeout: float = 10.0,
        retries: int = 5,
        backoff: Backoff | None = None,
        max_wait: float = 30.0,
    ) -> None:
        self.options = _Options(
            base_url=base_url, api_key=api_key, name=name, timeout=timeout, retries=retries,
            backoff=backoff, max_wait=max_wait,
        )  # fmt: skip
        self._http = httpx.AsyncClient(base_url=self.options.base_url, headers=self.options.headers)
        self._answered = AnsweredRounds()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _request(self, call: Call) -> dict[str, Any]:
        tries = 0
        while True:
            tries += 1
            try:
                response = await self._http.request(
                    call.method, call.path, params=call.params, json=call.body,
                    headers=call.headers, timeout=self.options.timeout + call.holds_s,
                )  # fmt: skip
            except httpx.TransportError as exc:
                if tries > self.options.retries:
                    raise self.options.unavailable(exc) from exc
                await asyncio.sleep(self.options.backoff.delay(tries))
                continue
            if response.status_code in RETRY_STATUSES and tries <= self.options.retries:
                retry_after = response.headers.get("Retry-After")
                await asyncio.sleep(self.options.backoff.delay(tries, retry_after))
                continue
            return read_answer(response.status_code, response.content)

    async def send(
        self,
        to: str,
        cmd: str | None = None,
        *,
        payload: dict[str, Any] | None = None,
        text: str | None = None,
        conversation_id: str | None = None,
        from_: str | None = None,
        timeout_s: float | None = None,
        priority: Literal["high"] | None = None,
        ttl_s: float | None = None,
        deadline: datetime | str | None = None,
        delay_s: float | None = None,
        not_before: datetime | str | None = None,
        notify: dict[str, Any] | None = None,
        task_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> str:
        """Send a task to pool `to`; its id, once RabbitMQ confirmed it."""
        fields = _task_fields(
            cmd=cmd, payload=payload, text=text, conversation_id=conversation_id,
            timeout_s=timeout_s, priority=priority, ttl_s=ttl_s, deadline=deadline,
            delay_s=delay_s, not_before=not_before, notify=notify, task_id=task_id,
        )  # fmt: skip
        call = send_call(self.options.sender(from_), to, "task", fields, idempotency_key)
        task: str = (await self._request(call))["task_id"]
        return task

    async def message(
        self,
        to: str,
        text: str | None = None,
        *,
        payload: dict[str, Any] | None = None,
        conversation_id: str | None = None,
        from_: str | None = None,
        idempotency_key: str | None = None,
    ) -> None:
        """Send a message to `to` (a user, a master): it waits in its inbox."""
        fields = {"text": text, "payload": payload, "conversation_id": conversation_id}
        await self._request(
            send_call(self.options.sender(from_), to, "message", fields, idempotency_key)
        )

    async def status(self, task_id: str) -> str:
        """The task's state (`pending`, `processing`, …, `input_required`, `completed`, …)."""
        state: str = (await self._request(status_call(task_id)))["task_status"]
        return state

    async def task(self, task_id: str) -> TaskResponse:
        """The task's whole record (its result, its error, the question it waits on, …)."""
        return TaskResponse.model_validate(await self._request(task_call(task_id)))

    async def wait(
        self,
        task_id: str,
        timeout: float | None = None,  # noqa: ASYNC109  (a budget over several requests, as Client's)
    ) -> TaskResponse:
        """The task's record once it ended or asks a question; as `Client.wait`."""
        give_up = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if give_up is None else max(0.0, give_up - time.monotonic())
            hold = self.options.max_wait if left is None else min(self.options.max_wait, left)
            call = task_call(task_id, hold, self._answered.of(task_id))
            record = TaskResponse.model_validate(await self._request(call))
            if self._answered.settled(record):
                return record
            if give_up is not None and time.monotonic() >= give_up:
                raise WaitTimedOut(task_id, record.task_status, timeout or 0.0)

    async def send_and_wait(
        self,
        to: str,
        cmd: str | None = None,
        *,
        timeout: float | None = None,  # noqa: ASYNC109  (as `wait`'s)
        **send: Any,
    ) -> TaskResponse:
        """Send a task and wait for it (as `wait`): its record, result included."""
        return await self.wait(await self.send(to, cmd, **send), timeout)

    async def answer(self, task_id: str, answer: Any, *, as_: str | None = None) -> int:
        """Answer the question the task waits on; the question's round."""
        round_: int = (await self._request(answer_call(task_id, answer, as_)))["round"]
        self._answered.answered(task_id, round_)
        return round_

    async def cancel(self, task_id: str) -> None:
        """Cancel the task: it never starts from now, a running handler is cancelled."""
        await self._request(cancel_call(task_id))

    async def inbox(
        self,
        name: str | None = None,
        *,
        after: int | None = None,
        limit: int | None = None,
        wait: float | None = None,
    ) -> Inbox:
        """The inbox of `name` (this client's by default); as `Client.inbox`."""
        own = self.options.own(name)
        body = await self._request(inbox_call(own, after, limit, wait))
        entries = [Entry.model_validate(e) for e in body["entries"]]
        return Inbox(own, entries, body["acked"])

    async def ack_inbox(self, up_to: int, name: str | None = None) -> int:
        """Mark the inbox read up to log id `up_to`; how far it is acknowledged now."""
        call = inbox_ack_call(self.options.own(name), up_to)
        acked: int = (await self._request(call))["acked"]
        return acked

    async def stream(
        self,
        *,
        after: int | None = None,
        task_id: str | None = None,
        conversation_id: str | None = None,
        from_: str | None = None,
        to: str | None = None,
        event: str | None = None,
    ) -> AsyncIterator[Entry]:
        """Log entries as they are committed; as `Client.stream`."""
        params = stream_params({"task_id": task_id, "conversation_id": conversation_id,
                                "from_": from_, "to": to, "event": event})  # fmt: skip
        last, failures = after, 0
        timeout = httpx.Timeout(self.options.timeout, read=STREAM_SILENCE_S)
        while True:
            headers = {} if last is None else {"Last-Event-ID": str(last)}
            try:
                async with self._http.stream(
                    "GET", STREAM_PATH, params=params, headers=headers, timeout=timeout
                ) as response:
                    if response.status_code != 200:
                        await response.aread()
                        if response.status_code not in RETRY_STATUSES:
                            read_answer(response.status_code, response.content)
                        raise httpx.TransportError(f"HTTP {response.status_code}")
                    reader = SseReader()
                    async for line in response.aiter_lines():
                        if (entry := reader.line(line)) is not None:
                            last, failures = entry.id, 0
                            yield entry
            except httpx.TransportError as exc:
                if failures >= self.options.retries:
                    raise self.options.unavailable(exc) from exc
            failures += 1
            await asyncio.sleep(self.options.backoff.delay(failures))
