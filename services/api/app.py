"""The FastAPI application: lifespan, middleware, routes, error handlers, health."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from sqlalchemy.exc import SQLAlchemyError

from services.api import dashboard, dlq, errors, hand_read, health, ui
from services.api.answers import Answers
from services.api.auth import KeyRing
from services.api.bodies import BodySizeLimit, JsonContentType
from services.api.broker import BrokerLink
from services.api.cancels import Cancels
from services.api.commits import CommitFeed
from services.api.deps import Services
from services.api.inboxes import InboxCursors
from services.api.limits import RateLimits
from services.api.metrics import AnswerCounter
from services.api.queue_depths import QueueDepthReader
from services.api.routes import hand_read_router, router
from services.api.send_keys import SendKeys
from shared.db import make_engine
from shared.errors import ConfigError, DatabaseUnavailable
from shared.ids import TaskIds, derive_secret
from shared.migrate import claim, require_current
from shared.readmodel import Reader
from shared.settings import ApiSettings
from shared.topology import Topology

log = logging.getLogger(__name__)


def create_app(settings: ApiSettings) -> FastAPI:
    """The API: one FastAPI app; every request goes through its middleware and one route."""
    keys = KeyRing.from_settings(settings)
    if settings.id_secret is not None:
        secret = settings.id_secret.get_secret_value()
    elif settings.api_key is not None or settings.dev_mode:
        secret = settings.effective_api_key()
    else:
        raise ConfigError(
            "RELAY_ID_SECRET is not set: with scoped keys only, set it to a long random secret "
            "(the same on every API replica); it signs task ids"
        )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = make_engine(settings.database_url.get_secret_value(), settings.db_pool_size)
        try:
            await require_current(engine)
            await claim(engine, settings.namespace)
        except (DatabaseUnavailable, SQLAlchemyError, OSError) as exc:
            log.warning("database not reachable at start (%s); queries answer 503 until it is", exc)
        except ConfigError as exc:
            log.error("%s", exc)  # an outdated schema, another namespace's: refuse to start
            await engine.dispose()
            raise
        reader = Reader(engine)
        commits = CommitFeed(Topology(settings.namespace), reader, settings.stream_buffer)
        broker = BrokerLink(settings, on_connect=commits.start)
        broker.start()
        limits = RateLimits.of(settings)
        app.state.services = Services(
            settings=settings,
            keys=keys,
            limits=limits,
            broker=broker,
            reader=reader,
            commits=commits,
            send_keys=SendKeys(engine),
            cancels=Cancels(engine),
            answers=Answers(engine),
            inbox_cursors=InboxCursors(engine),
            ids=TaskIds(derive_secret(secret)),
            queue_depths=QueueDepthReader(settings),
        )
        try:
            yield
        finally:
            await commits.close()
            await broker.close()
            await limits.close()
            await engine.dispose()

    app = FastAPI(
        title="Conversation Bus",
        version="0.1.0",
        summary="A RabbitMQ message bus between a master AI, child AI workers and users.",
        lifespan=lifespan,
        docs_url="/docs" if settings.openapi else None,
        redoc_url="/redoc" if settings.openapi else None,
        openapi_url="/openapi.json" if settings.openapi else None,
        # FastAPI's OpenTelemetry hooks look for a provider on every request (5 µs each, a
        # tenth of what FastAPI adds to a send): the bus exports Prometheus metrics of its own.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    # Added innermost first: the count sees every answer, 413s included.
    app.add_middleware(JsonContentType)
    app.add_middleware(BodySizeLimit, max_body=settings.max_body_bytes)
    app.add_middleware(AnswerCounter)
    errors.install(app)
    hand_read.mount_first(app, hand_read_router)
    app.include_router(router)
    app.include_router(dlq.router)
    app.include_router(dashboard.router)
    app.include_router(ui.router)
    app.include_router(health.router)

    hand_read.build_handlers(app)
    hand_read.add_components(app)
    return app


def end_streams(app: FastAPI) -> None:
    """The server was told to stop: end the open streams at once (their clients resume with
    Last-Event-ID, here after a restart or at another replica), instead of holding the stop
    until the graceful-shutdown timeout."""
    services = getattr(app.state, "services", None)
    if services is not None:
        services.commits.end_streams()
