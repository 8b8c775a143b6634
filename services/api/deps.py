"""The API's shared objects, reachable from routes as `Annotated` dependencies."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Request

from services.api.broker import BrokerLink
from services.api.errors import UNAUTHORIZED, ApiError
from services.api.queries import Reader
from shared.ids import TaskIds
from shared.settings import ApiSettings


@dataclass
class Services:
    """What the API holds for its lifetime."""

    settings: ApiSettings
    api_key: bytes
    broker: BrokerLink
    reader: Reader
    ids: TaskIds


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(_services)]


def _require_key(
    services: ServicesDep,
    key: Annotated[str | None, Header(alias="X-Relay-API-Key", include_in_schema=False)] = None,
) -> None:
    if key is None or not hmac.compare_digest(key.encode(), services.api_key):
        raise ApiError(401, UNAUTHORIZED)


Authorized = Depends(_require_key)
