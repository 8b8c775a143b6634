"""What operators' probes ask: /healthz (the process serves), /readyz (broker and database
reachable), /metrics (Prometheus). Not in the OpenAPI: they are not the bus's contract."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from services.api.deps import ServicesDep
from shared import metrics
from shared.errors import DatabaseUnavailable

router = APIRouter(include_in_schema=False)


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(services: ServicesDep) -> JSONResponse:
    broker_ok = services.broker.ready
    try:
        await services.reader.ping()
        db_ok = True
    except DatabaseUnavailable:
        db_ok = False
    ok = broker_ok and db_ok
    body: dict[str, object] = {"status": "ok", "broker": broker_ok, "database": db_ok}
    if not ok:
        body.update(status="error", msg="not ready: broker or database unreachable")
    return JSONResponse(body, status_code=200 if ok else 503)


@router.get("/metrics")
async def prometheus_metrics() -> Response:
    payload, content_type = metrics.exposition()
    return Response(payload, headers={"Content-Type": content_type})
