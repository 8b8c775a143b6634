"""The Dramatiq peer of `make bench-peers`: FastAPI in front of Dramatiq on the same RabbitMQ,
as a user would build it instead of the bus, answering the two requests `convbus bench` makes.

- POST /api/relay/send publishes an `echo` message (publisher confirms on) and answers its id;
- the actor writes the task's completion row to PostgreSQL (one transaction per task);
- GET /api/relay/logs?event=callback&after=&limit= pages through those rows, as the bus's log.

The API:    uvicorn scripts.peers.dramatiq_peer:app --loop uvloop --http httptools
The worker: dramatiq scripts.peers.dramatiq_peer --processes 1 --threads 8
Settings from the environment: PEER_AMQP_URL, PEER_DATABASE_URL, PEER_QUEUE.
"""

from __future__ import annotations

import functools
import os
import uuid
from typing import Any

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from fastapi import FastAPI
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from scripts.peers.common import SendBody, add_log_route, create_table

AMQP_URL = os.environ.get("PEER_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
DATABASE_URL = os.environ.get("PEER_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/peer")
QUEUE = os.environ.get("PEER_QUEUE", "peer")

broker = RabbitmqBroker(url=AMQP_URL, confirm_delivery=True)
dramatiq.set_broker(broker)


@functools.cache
def pool() -> ConnectionPool:
    """Opened on first use: the API process and the worker each have their own."""
    return ConnectionPool(DATABASE_URL, min_size=2, max_size=16, open=True)


@dramatiq.actor(queue_name=QUEUE, max_retries=3)
def echo(task_id: str, payload: Any) -> None:
    with pool().connection() as conn:
        conn.execute(
            "INSERT INTO completions (task_id, status, result) VALUES (%s, 'completed', %s)"
            " ON CONFLICT (task_id) DO NOTHING",
            (task_id, Jsonb({"echo": payload})),
        )


app = FastAPI()


@app.on_event("startup")
def _startup() -> None:
    create_table(pool())


@app.post("/api/relay/send")
def send(body: SendBody) -> dict[str, str]:
    """A plain def: Dramatiq publishes through pika, blocking, so FastAPI runs it on a thread."""
    task_id = uuid.uuid4().hex
    echo.send(task_id, body.payload)
    return {"status": "ok", "task_id": task_id}


add_log_route(app, pool, "SELECT id, task_id, status FROM completions")
