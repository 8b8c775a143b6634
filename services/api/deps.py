"""The API's shared objects, reachable from routes as `Annotated` dependencies."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Request

from services.api.auth import KeyRing, Principal
from services.api.broker import BrokerLink
from services.api.errors import UNAUTHORIZED, ApiError
from services.api.queries import Reader
from shared.ids import TaskIds
from shared.settings import ApiSettings


@dataclass
class Services:
    """What the API holds for its lifetime."""

    settings: ApiSettings
    keys: KeyRing
    broker: BrokerLink
    reader: Reader
    ids: TaskIds


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(_services)]


def _principal(
    services: ServicesDep,
    key: Annotated[str | None, Header(alias="X-Relay-API-Key", include_in_schema=False)] = None,
) -> Principal:
    principal = services.keys.find(key) if key is not None else None
    if principal is None:
        raise ApiError(401, UNAUTHORIZED)
    return principal


PrincipalDep = Annotated[Principal, Depends(_principal)]


def require(principal: Principal, *scopes: str) -> None:
    """403 unless the key has one of `scopes`."""
    if not principal.scopes.intersection(scopes):
        raise ApiError(403, f"Forbidden: this key lacks the {' or '.join(scopes)} scope")


def _scope(*scopes: str) -> Callable[[Principal], Principal]:
    def check(principal: PrincipalDep) -> Principal:
        require(principal, *scopes)
        return principal

    return check


SendKey = Annotated[Principal, Depends(_scope("send"))]
CallbackKey = Annotated[Principal, Depends(_scope("callback"))]
AckKey = Annotated[Principal, Depends(_scope("send", "callback"))]
AdminKey = Depends(_scope("admin"))
