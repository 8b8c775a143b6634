"""The Conversation Bus client for masters and users (sync and async):

from convbus import Client

with Client(api_key="…", name="master") as bus:
    done = bus.send_and_wait("child", "summarize", text="…", timeout=60)
    print(done.task_status, done.result)
"""

from convbus.calls import Backoff, Entry, Inbox
from convbus.client import AsyncClient, Client
from convbus.errors import (
    ClientError,
    Conflict,
    Forbidden,
    Invalid,
    NotFound,
    RateLimited,
    Unauthorized,
    Unavailable,
    WaitTimedOut,
)
from shared.schemas import TaskResponse

__all__ = [
    "AsyncClient",
    "Backoff",
    "Client",
    "ClientError",
    "Conflict",
    "Entry",
    "Forbidden",
    "Inbox",
    "Invalid",
    "NotFound",
    "RateLimited",
    "TaskResponse",
    "Unauthorized",
    "Unavailable",
    "WaitTimedOut",
]
