"""The HTTP contract's names, in one place: its headers, its paths, the shape of a name, its limits.

The API, the child's callback client, the bench and the tests all read them from here.
"""

from __future__ import annotations

#: The API key of every request (seed).
API_KEY_HEADER = "X-Relay-API-Key"
#: On a send: a retried send with the same key creates nothing new.
IDEMPOTENCY_KEY_HEADER = "Idempotency-Key"
#: On a callback: `1` when the child never sent a callback for this task before.
FIRST_CALLBACK_HEADER = "X-Relay-First-Callback"

#: Seconds the API keeps an idle keep-alive connection open. A client reusing its connections
#: should close idle ones sooner: a connection the server closes just as the client reuses it
#: fails that request ("Can not write request body") and costs a retry.
API_IDLE_CONNECTION_SECONDS = 75

#: A party's or a pool's name (`from`, `to`, `child_id`, a key's name): 1-64 of these.
NAME_PATTERN = r"^[A-Za-z0-9_.:-]{1,64}$"
#: An id (task, conversation, event, run) or an Idempotency-Key: 1-128 of the same.
IDENT_PATTERN = r"^[A-Za-z0-9_.:-]{1,128}$"

#: The most entries one GET of /logs or /dlq answers: `limit` is 1 to this (seed: "at most 1000").
MAX_LIMIT = 1000

API_PREFIX = "/api/relay"
SEND_PATH = f"{API_PREFIX}/send"
CALLBACK_PATH = f"{API_PREFIX}/callback"
#: Many callbacks in one request (the Python child's way): each is answered as /callback would.
CALLBACKS_PATH = f"{API_PREFIX}/callbacks"
LOGS_PATH = f"{API_PREFIX}/logs"
TASK_STATUS_PATH = f"{API_PREFIX}/task-status"
TASKS_PATH = f"{API_PREFIX}/tasks"
CANCELS_PATH = f"{API_PREFIX}/cancels"
STREAM_PATH = f"{API_PREFIX}/stream"

#: The most callbacks one POST of /callbacks carries.
MAX_CALLBACKS = 256

#: Log entry ids are 64-bit (BIGINT, SQLite's INTEGER): a larger one the database refuses.
MAX_LOG_ID = 2**63 - 1
