"""Logging set-up shared by the services: readable lines, or one JSON object a line.

Records carry the task and conversation being worked on (`task_context`), so a task can be
followed through every service's log. Payloads and secrets are never logged at info level.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import traceback
from collections.abc import Iterator
from datetime import UTC, datetime

import orjson

_task_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("task_id", default=None)
_conversation_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "conversation_id", default=None
)


@contextlib.contextmanager
def task_context(task_id: str | None, conversation_id: str | None = None) -> Iterator[None]:
    """Within this block, every log record names the task and its conversation."""
    task_token = _task_id.set(task_id)
    conversation_token = _conversation_id.set(conversation_id)
    try:
        yield
    finally:
        _task_id.reset(task_token)
        _conversation_id.reset(conversation_token)


class _TaskContext(logging.Filter):
    """Copies the task and conversation of the current context onto the record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.task_id = _task_id.get()
        record.conversation_id = _conversation_id.get()
        return True


class TextFormatter(logging.Formatter):
    """`time LEVEL service logger: message [task=… conversation=…]`."""

    def __init__(self, service: str) -> None:
        super().__init__(f"%(asctime)s %(levelname)s {service} %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        task_id = getattr(record, "task_id", None)
        conversation_id = getattr(record, "conversation_id", None)
        if task_id or conversation_id:
            context = f"task={task_id}" if task_id else ""
            if conversation_id:
                context += f"{' ' if context else ''}conversation={conversation_id}"
            first, newline, rest = line.partition("\n")  # keep a traceback below the context
            line = f"{first} [{context}]{newline}{rest}"
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ts, level, service, logger, msg, task_id, conversation_id, exc."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for field in ("task_id", "conversation_id"):
            value = getattr(record, field, None)
            if value:
                entry[field] = value
        if record.exc_info:
            entry["exc"] = "".join(traceback.format_exception(*record.exc_info)).rstrip()
        return orjson.dumps(entry, default=str).decode()


class _OneLinePerRetry(logging.Filter):
    """aiormq logs every failed connection attempt at error level, and then the attempt's
    owner says it again: the bus's connect loop (shared/amqp.py) or aio-pika's reconnect loop.
    One line per retry: aiormq's is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("error when creating transport")


def setup_logging(level: str = "INFO", service: str = "convbus", fmt: str = "text") -> None:
    """Log to stderr in the given format (`text` or `json`), naming the service."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter(service) if fmt == "json" else TextFormatter(service))
    handler.addFilter(_TaskContext())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    # aio-pika logs every reconnect attempt at length; the services log their own summary.
    logging.getLogger("aio_pika").setLevel(logging.WARNING)
    logging.getLogger("aiormq").setLevel(logging.WARNING)
    logging.getLogger("aiormq.connection").addFilter(_OneLinePerRetry())
    logging.getLogger("alembic").setLevel(logging.WARNING)
