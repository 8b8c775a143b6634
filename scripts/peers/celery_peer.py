"""The Celery peer of `make bench-peers`: FastAPI in front of Celery on the same RabbitMQ, as a
user would build it instead of the bus, answering the two requests `convbus bench` makes.

- POST /api/relay/send publishes an `echo` task (publisher confirms on) and answers its id;
- the worker (prefork, acks late) runs it; the SQL result backend stores its result in
  PostgreSQL (`celery_taskmeta`);
- GET /api/relay/logs?event=callback&after=&limit= pages through those results, as the bus's log.

The API:    uvicorn scripts.peers.celery_peer:app --loop uvloop --http httptools
The worker: celery -A scripts.peers.celery_peer:celery worker --pool prefork --concurrency 4
Settings from the environment: PEER_AMQP_URL, PEER_DATABASE_URL, PEER_QUEUE.
"""

from __future__ import annotations

import functools
import os
from typing import Any

from celery import Celery
from fastapi import FastAPI
from psycopg_pool import ConnectionPool

from scripts.peers.common import SendBody, add_log_route

AMQP_URL = os.environ.get("PEER_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
DATABASE_URL = os.environ.get("PEER_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/peer")
QUEUE = os.environ.get("PEER_QUEUE", "peer")

celery = Celery(
    "peer",
    broker=AMQP_URL,
    backend="db+" + DATABASE_URL.replace("postgresql://", "postgresql+psycopg://", 1),
)
celery.conf.update(
    task_default_queue=QUEUE,
    task_acks_late=True,  # acked once it ran, as the bus's child acks after its callback
    task_reject_on_worker_lost=True,
    broker_transport_options={"confirm_publish": True},
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@celery.task(name="echo")
def echo(payload: Any) -> dict[str, Any]:
    return {"echo": payload}


@functools.cache
def pool() -> ConnectionPool:
    """Opened on first use: the API process and the worker each have their own."""
    return ConnectionPool(DATABASE_URL, min_size=2, max_size=8, open=True)


app = FastAPI()


@app.post("/api/relay/send")
def send(body: SendBody) -> dict[str, str]:
    """A plain def: Celery publishes through kombu, blocking, so FastAPI runs it on a thread."""
    result = echo.delay(body.payload)
    return {"status": "ok", "task_id": result.id}


add_log_route(
    app,
    pool,
    "SELECT id, task_id, CASE status WHEN 'SUCCESS' THEN 'completed' ELSE 'failed' END AS status"
    " FROM celery_taskmeta",
)
