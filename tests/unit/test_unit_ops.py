"""The child's and the tracker's health port: health, readiness, metrics, a taken port."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from cli.processes import free_port
from shared import metrics
from shared.errors import ConfigError
from shared.ops import OpsServer


async def test_health_readiness_and_metrics() -> None:
    state = {"broker": True, "database": True}

    async def ready() -> dict[str, bool]:
        return dict(state)

    server = OpsServer("127.0.0.1", free_port(), ready)
    await server.start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        async with httpx.AsyncClient(base_url=base) as client:
            assert (await client.get("/healthz")).json() == {"status": "ok"}
            answer = await client.get("/readyz")
            assert answer.status_code == 200
            assert answer.json() == {"status": "ok", "broker": True, "database": True}
            state["database"] = False
            answer = await client.get("/readyz")
            assert answer.status_code == 503
            assert answer.json()["msg"] == "not ready: database unreachable"
            metrics.TRACKER_PARKED.inc()
            exposed = await client.get("/metrics")
            assert exposed.headers["content-type"].startswith("text/plain; version=")
            assert "convbus_tracker_parked_total" in exposed.text
    finally:
        await server.close()


async def test_port_zero_serves_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """RELAY_OPS_PORT=0 turns the server off: start() opens no listening socket (binding port 0
    would listen on a port the system picks), and close() has nothing to close."""

    async def ready() -> dict[str, bool]:
        return {}

    loop = asyncio.get_running_loop()
    create_server = loop.create_server
    listening: list[asyncio.Server] = []

    async def recorded(*args: Any, **kwargs: Any) -> asyncio.Server:
        server = await create_server(*args, **kwargs)
        listening.append(server)
        return server

    monkeypatch.setattr(loop, "create_server", recorded)
    # The record sees a server that does listen, or it would prove nothing about one that does not.
    serving = OpsServer("127.0.0.1", free_port(), ready)
    await serving.start()
    await serving.close()
    assert len(listening) == 1 and not listening[0].is_serving()

    off = OpsServer("127.0.0.1", 0, ready)
    await off.start()
    try:
        assert len(listening) == 1, f"port 0 serves on {listening[-1].sockets}"
    finally:
        await off.close()
    await off.close()  # a second close() finds nothing to close either


async def test_a_taken_port_is_a_config_error() -> None:
    async def ready() -> dict[str, bool]:
        return {}

    first = OpsServer("127.0.0.1", free_port(), ready)
    await first.start()
    try:
        with pytest.raises(ConfigError, match=f"RELAY_OPS_PORT {first.port}"):
            await OpsServer("127.0.0.1", first.port, ready).start()
    finally:
        await first.close()
