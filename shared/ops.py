"""The small HTTP port of the child and the tracker: /healthz, /readyz, /metrics."""

from __future__ import annotations

import errno
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from shared import metrics
from shared.errors import ConfigError

log = logging.getLogger(__name__)

#: Answers which dependencies are reachable, e.g. {"broker": True, "database": False}.
ReadinessCheck = Callable[[], Awaitable[dict[str, bool]]]


class OpsServer:
    """Serves health and metrics beside a consumer; port 0 in the settings turns it off."""

    def __init__(self, host: str, port: int, ready: ReadinessCheck) -> None:
        self.host = host
        self.port = port
        self._ready = ready
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        if self.port == 0:
            return
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        try:
            await web.TCPSite(self._runner, self.host, self.port).start()
        except OSError as exc:
            await self._runner.cleanup()
            self._runner = None
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(
                    f"RELAY_OPS_PORT {self.port} on {self.host} is taken (another worker on "
                    "this machine?): give each process its own port, or 0 to serve none"
                ) from exc
            raise ConfigError(f"cannot serve health on {self.host}:{self.port}: {exc}") from exc
        log.info("health and metrics on http://%s:%d", self.host, self.port)

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _healthz(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, _request: web.Request) -> web.Response:
        checks = await self._ready()
        ok = all(checks.values())
        body: dict[str, object] = {"status": "ok" if ok else "error", **checks}
        if not ok:
            down = ", ".join(name for name, up in checks.items() if not up)
            body["msg"] = f"not ready: {down} unreachable"
        return web.json_response(body, status=200 if ok else 503)

    async def _metrics(self, _request: web.Request) -> web.Response:
        payload, content_type = metrics.exposition()
        return web.Response(body=payload, headers={"Content-Type": content_type})
