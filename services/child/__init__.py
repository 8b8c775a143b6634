"""The child worker runtime: consume a pool's queue, run a handler, call back, ack."""

from services.child.handlers import Registry

__all__ = ["Registry"]
