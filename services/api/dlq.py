"""The parking lots over HTTP: list, show, replay, purge (operators' endpoints)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query
from pydantic import AfterValidator, BeforeValidator, TypeAdapter
from starlette.convertors import Convertor, register_url_convertor

from services.api.deps import AdminKey, ServicesDep
from services.api.errors import ApiError
from shared.contract import API_PREFIX, MAX_LIMIT, NAME_PATTERN
from shared.schemas import ErrorResponse, Ok
from shared.topology import RESERVED_POOL_PATTERN, Topology

router = APIRouter(prefix=f"{API_PREFIX}/dlq", dependencies=[AdminKey], tags=["parking lots"])
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 403, 404, 422, 503)
}


def _a_pool(name: str | None) -> str | None:
    if name is not None and not Topology.is_pool_name(name):
        raise ValueError("a pool's name may not contain 'parked' or 'delay' as a word")
    return name


#: A pool's name: not a name a pool's own queues would collide with (the OpenAPI says both).
PoolQuery = Annotated[
    str | None,
    Query(pattern=NAME_PATTERN, json_schema_extra={"not": {"pattern": RESERVED_POOL_PATTERN}}),
    AfterValidator(_a_pool),
]
#: `confirm=true`, required: the OpenAPI says so (a required `const: true`); without it, or with
#: any other value, the contract's 400 "purging drops parked tasks for good…" (errors.py).
ConfirmQuery = Annotated[
    Literal[True],
    # A query string is text: read it as FastAPI reads a bool ("true", "1", "on"…), then
    # Literal[True] keeps only true.
    BeforeValidator(TypeAdapter(bool).validate_python),
    Query(description="Must be `true`: a purge drops the parked tasks for good."),
]


#: The replay of every parked task: a path of its own, next to the paths of one parked task.
REPLAY = "replay"


class _ParkedId(Convertor[str]):
    """One parked task's id in a path: a segment, but not `replay`.

    OpenAPI matches a concrete path before a templated one: /dlq/replay is the replay of all,
    which has no GET. Starlette would serve GET /dlq/replay as the parked task `replay` (and name
    GET in the Allow of that path); a task with that id is still listed and replayed.
    """

    regex = f"(?!{REPLAY}$)[^/]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("parked_id", _ParkedId())
ParkedIdPath = Annotated[str, Path(json_schema_extra={"not": {"const": REPLAY}})]


class ParkedList(Ok):
    parked: list[dict[str, Any]]


class ParkedOne(Ok):
    parked: dict[str, Any]


class Replayed(Ok):
    replayed: int


class Purged(Ok):
    purged: int


async def _pools(services: ServicesDep, pool: str | None) -> list[str]:
    if pool is not None:
        return [pool]
    return sorted(set(await services.reader.pools()) | services.broker.pools)


@router.get("", response_model=ParkedList, responses=_ERRORS)
async def list_parked(
    services: ServicesDep,
    pool: PoolQuery = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 100,
) -> ParkedList:
    """The parked tasks of one pool or of all, oldest first; they stay parked."""
    found = await services.broker.parking().peek(await _pools(services, pool), limit)
    return ParkedList(parked=[p.as_dict() for p in found])


@router.get(
    "/{task_id:parked_id}",
    response_model=ParkedOne,
    responses={
        **_ERRORS,
        405: {"model": ErrorResponse, "description": f"`{REPLAY}`: that path has no GET"},
    },
)
async def show_parked(
    task_id: ParkedIdPath, services: ServicesDep, pool: PoolQuery = None
) -> ParkedOne:
    """One parked task, with why it was parked."""
    found = await services.broker.parking().show(task_id, await _pools(services, pool))
    if found is None:
        raise ApiError(404, "task not parked")
    return ParkedOne(parked=found.as_dict())


@router.post(f"/{REPLAY}", response_model=Replayed, responses=_ERRORS)
async def replay_all(services: ServicesDep, pool: PoolQuery = None) -> Replayed:
    """Send every parked task of one pool (or all) back to work."""
    count = await services.broker.parking().replay(await _pools(services, pool))
    return Replayed(replayed=count)


@router.post("/{task_id}/replay", response_model=Replayed, responses=_ERRORS)
async def replay_one(task_id: str, services: ServicesDep, pool: PoolQuery = None) -> Replayed:
    """Send one parked task back to its pool; it keeps its id and history."""
    count = await services.broker.parking().replay(await _pools(services, pool), task_id)
    if count == 0:
        raise ApiError(404, "task not parked")
    return Replayed(replayed=count)


@router.delete("", response_model=Purged, responses=_ERRORS)
async def purge(services: ServicesDep, confirm: ConfirmQuery, pool: PoolQuery = None) -> Purged:
    """Drop every parked task of one pool (or all); needs `confirm=true`."""
    return Purged(purged=await services.broker.parking().purge(await _pools(services, pool)))
