"""The child worker runtime: consume a pool's queue, run a handler, call back, ack."""

from services.child.handlers import Registry
from services.child.progress import progress
from shared.errors import InputRequired, NeverRetry, RetryLater

__all__ = ["InputRequired", "NeverRetry", "Registry", "RetryLater", "progress"]
