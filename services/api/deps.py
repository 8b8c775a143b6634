"""The API's shared objects, reachable from routes as `Annotated` dependencies."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Request

from services.api.answers import Answers
from services.api.auth import KeyRing, Principal
from services.api.broker import BrokerLink
from services.api.cancels import Cancels
from services.api.commits import CommitFeed
from services.api.errors import UNAUTHORIZED, ApiError
from services.api.inboxes import InboxCursors
from services.api.limits import RateLimits
from services.api.queue_depths import QueueDepthReader
from services.api.send_keys import SendKeys
from shared.contract import API_KEY_HEADER
from shared.ids import TaskIds
from shared.readmodel import Reader
from shared.settings import ApiSettings


@dataclass
class Services:
    """What the API holds for its lifetime."""

    settings: ApiSettings
    keys: KeyRing
    limits: RateLimits
    broker: BrokerLink
    reader: Reader
    #: What the tracker commits, as this replica hears it: wakes waits, feeds streams.
    commits: CommitFeed
    send_keys: SendKeys
    cancels: Cancels
    answers: Answers
    inbox_cursors: InboxCursors
    ids: TaskIds
    #: RabbitMQ's queue depths for the dashboard's overview (services/api/dashboard.py).
    queue_depths: QueueDepthReader


def services_of(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


async def _services(request: Request) -> Services:
    return services_of(request)


ServicesDep = Annotated[Services, Depends(_services)]


async def authenticate(services: Services, request: Request, key: str | None) -> Principal:
    """The key's holder; 401 for a missing or wrong key, 429 for a client that keeps failing."""
    client = request.client.host if request.client else "unknown"
    if wait := await services.limits.auth_failures.blocked(client):
        raise ApiError(
            429, "Too many failed authentications: retry later", {"Retry-After": str(wait)}
        )
    principal = services.keys.find(key) if key is not None else None
    if principal is None:
        await services.limits.auth_failures.take(client)
        raise ApiError(401, UNAUTHORIZED)
    return principal


KeyHeader = Annotated[str | None, Header(alias=API_KEY_HEADER, include_in_schema=False)]


def require(principal: Principal, *scopes: str) -> None:
    """403 unless the key has one of `scopes`."""
    if not principal.scopes.intersection(scopes):
        raise ApiError(403, f"Forbidden: this key lacks the {' or '.join(scopes)} scope")


async def authorized(request: Request, key: str | None, *scopes: str) -> Principal:
    """The key's holder, if it has one of `scopes` (else 401, 403 or 429)."""
    principal = await authenticate(services_of(request), request, key)
    require(principal, *scopes)
    return principal


def _scope(*scopes: str) -> Callable[..., Awaitable[Principal]]:
    # One flat dependency, not a chain: FastAPI solves each level on every request.
    async def check(request: Request, key: KeyHeader = None) -> Principal:
        return await authorized(request, key, *scopes)

    return check


async def _any_key(request: Request, key: KeyHeader = None) -> Principal:
    return await authenticate(services_of(request), request, key)


#: Any valid key, whatever its scopes (the route decides what its holder may read).
AnyKey = Annotated[Principal, Depends(_any_key)]
AckKey = Annotated[Principal, Depends(_scope("send", "callback"))]
CallbackKey = Annotated[Principal, Depends(_scope("callback"))]
CancelKey = Annotated[Principal, Depends(_scope("send", "admin"))]
AnswerKey = Annotated[Principal, Depends(_scope("send", "admin"))]
AdminKey = Depends(_scope("admin"))
#: An operator's key: reads everything (services/api/visibility.py).
OperatorKey = Annotated[Principal, Depends(_scope("read", "admin"))]
