"""The AMQP side of the bus as an AsyncAPI 3.0 document, generated from what the bus runs on:
the wire models (shared/schemas.py), the names and queue arguments (shared/topology.py) and the
headers (shared/amqp.py). docs/asyncapi.json is its output for the namespace `{ns}`
(`convbus asyncapi > docs/asyncapi.json`); tests/unit/test_unit_asyncapi.py fails when a model
or the topology changes and the file does not. docs/wire.md says the same in prose.
"""

from __future__ import annotations

from typing import Any

from pydantic.json_schema import models_json_schema

from shared import amqp
from shared.schemas import MAX_INPUT_ROUNDS, CommitNotice, Event, TaskMessage
from shared.topology import CONTROL_EVENTS, DELIVERY_LIMIT, Topology

#: The version of the document's own format.
ASYNCAPI_VERSION = "3.0.0"
#: The AMQP bindings' version (https://github.com/asyncapi/bindings/tree/master/amqp).
_BINDING = "0.3.0"
#: A pool's name and a delay in the names below: placeholders, since the topology builds a
#: name only for a valid pool (POOL is one, replaced by `{pool}` in the document).
_POOL, _DELAY_MS = "POOL", 1000


def document(namespace: str = "{ns}", version: str = "0.1.0") -> dict[str, Any]:
    """The AsyncAPI document of namespace `namespace` (`{ns}`: any)."""
    topo = Topology(namespace)
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "Conversation Bus: the AMQP side",
            "version": version,
            "description": (
                "The exchanges, queues, messages and headers of a Conversation Bus namespace "
                f"(`{namespace}`: RELAY_NAMESPACE), as a child written in any language joins a "
                "pool: it consumes `{ns}.pool.{pool}` (and `{ns}.high.{pool}`), publishes its "
                "events to `{ns}.events`, retries through the delay queues and parks in "
                "`{ns}.dead`. Generated from the bus's own models and topology "
                "(shared/asyncapi.py); docs/wire.md says the same in prose, with the rules "
                "a child must follow (callback, cancels, deadlines, leases)."
            ),
            "license": {"name": "MIT"},
        },
        "defaultContentType": "application/json",
        "servers": {
            "rabbitmq": {
                "host": "127.0.0.1:5672",
                "protocol": "amqp",
                "protocolVersion": "0.9.1",
                "description": "RELAY_AMQP_URL (RabbitMQ 3.10 or later: quorum queues, "
                "at-least-once dead-lettering).",
            }
        },
        "channels": _channels(topo),
        "operations": _operations(),
        "components": _components(),
    }


def _pool(name: str) -> str:
    return name.replace(_POOL, "{pool}")


def _arguments(arguments: dict[str, Any]) -> dict[str, Any]:
    return {k: _pool(v) if isinstance(v, str) else v for k, v in arguments.items()}


def _exchange(name: str, kind: str, description: str, messages: list[str]) -> dict[str, Any]:
    """A channel that is an exchange: its address is the routing key."""
    return {
        "address": None,
        "description": description,
        "messages": {m: {"$ref": f"#/components/messages/{m}"} for m in messages},
        "bindings": {
            "amqp": {
                "is": "routingKey",
                "exchange": {"name": name, "type": kind, "durable": True, "autoDelete": False,
                             "vhost": "/"},
                "bindingVersion": _BINDING,
            }
        },
    }  # fmt: skip


def _queue(
    name: str,
    description: str,
    messages: list[str],
    arguments: dict[str, Any] | None,
    *,
    own: bool = False,
) -> dict[str, Any]:
    """A channel that is a queue; `arguments`: its x-arguments as declared (x-arguments here);
    `own`: a consumer's own queue (exclusive, deleted with its connection)."""
    binding: dict[str, Any] = {
        "is": "queue",
        "queue": {"name": _pool(name), "durable": not own, "exclusive": own, "autoDelete": own,
                  "vhost": "/"},
        "bindingVersion": _BINDING,
    }  # fmt: skip
    if arguments:
        binding["x-arguments"] = _arguments(arguments)
    channel: dict[str, Any] = {
        "address": _pool(name),
        "description": description,
        "messages": {m: {"$ref": f"#/components/messages/{m}"} for m in messages},
        "bindings": {"amqp": binding},
    }
    if "{pool}" in channel["address"]:
        channel["parameters"] = {"pool": {"description": "The pool's name."}}
    return channel


def _channels(topo: Topology) -> dict[str, Any]:
    pool_queue, high_queue = topo.pool_queue(_POOL), topo.high_queue(_POOL)
    delay, high_delay = (
        topo.delay_queue(_POOL, _DELAY_MS, priority).replace(f".{_DELAY_MS}", ".{ms}")
        for priority in (None, "high")
    )
    channels: dict[str, Any] = {
        "tasks": _exchange(
            topo.tasks_exchange, "topic",
            "Tasks, published with the pool's name as routing key (and with mandatory: the "
            "pool's queue exists before a task is confirmed).", ["Task"],
        ),
        "highTasks": _exchange(
            topo.high_tasks_exchange, "topic",
            "Tasks of `high` priority, routing key = the pool.", ["Task"],
        ),
        "events": _exchange(
            topo.events_exchange, "topic",
            "Events, routing key = the event's name (`processing`, `callback`, `retry`, "
            "`input_required`, …): the tracker records each; every child hears `cancel`.",
            ["Event"],
        ),
        "dead": _exchange(
            topo.dead_exchange, "topic",
            "What a queue sets aside, routing key = the parked queue's name: a child parks a "
            "task out of retries here, RabbitMQ dead-letters a poison message here.", ["Task"],
        ),
        "committed": _exchange(
            topo.committed_exchange, "fanout",
            "The tracker's commit notices (transient, unconfirmed) to every API replica.",
            ["CommitNotice"],
        ),
        "pool": _queue(
            pool_queue,
            "A pool's queue (quorum), bound to `tasks` with the pool's name: its children "
            f"consume it, and ack a task only once it is settled. A task delivered "
            f"{DELIVERY_LIMIT} times unsettled goes to its parking lot.",
            ["Task"], topo.pool_queue_arguments(_POOL),
        ),
        "high": _queue(
            high_queue,
            "The pool's queue of `high` tasks, bound to `highTasks`: consumed with slots of "
            "its own.", ["Task"], topo.high_queue_arguments(_POOL),
        ),
        "parked": _queue(
            topo.parked_queue(pool_queue),
            "The pool's parking lot: tasks out of retries and poison messages, until an "
            "operator replays or purges them (`convbus dlq`).",
            ["Task"], topo.parked_queue_arguments(),
        ),
        "delay": _queue(
            delay,
            f"A task retried or put off waits here `ms` milliseconds, then goes back to the "
            f"pool (dead-lettered to `tasks`, key = the pool). Published through the default "
            f"exchange; declared (again) before each publish; deleted when unused. Arguments "
            f"shown for ms = {_DELAY_MS}.",
            ["Task"], topo.delay_queue_arguments(_POOL, _DELAY_MS),
        ),
        "highDelay": _queue(
            high_delay,
            "As `delay`, for a `high` task: dead-lettered back to `highTasks`.",
            ["Task"], topo.delay_queue_arguments(_POOL, _DELAY_MS, "high"),
        ),
        "tracker": _queue(
            topo.tracker_queue,
            "The tracker's queue (single active consumer), bound to `tasks`, `highTasks` and "
            f"`events` with `#`, and to `dead` with `{topo.parked_pools_pattern}`: a copy of "
            "every task, event and parked task.",
            ["Task", "Event"], topo.tracker_queue_arguments(),
        ),
        "trackerParked": _queue(
            topo.parked_queue(topo.tracker_queue),
            "Where the tracker sets aside what it cannot read (bound to `dead` with its "
            "name).", ["Task", "Event"], topo.parked_queue_arguments(),
        ),
        "control": _queue(
            topo.control_queue("{child}", "{id}"),
            f"A child's own queue, bound to `events` with {', '.join(CONTROL_EVENTS)}: the "
            "cancels it must honour (then it reads the recorded ones over HTTP).",
            ["Event"], None, own=True,
        ),
        "notices": _queue(
            topo.notices_queue("{id}"),
            "An API replica's own queue of commit notices, bound to `committed`.",
            ["CommitNotice"], None, own=True,
        ),
    }  # fmt: skip
    for name in ("delay", "highDelay"):
        channels[name]["parameters"] = {
            "pool": {"description": "The pool's name."},
            "ms": {"description": "The wait, in milliseconds."},
        }
    channels["control"]["parameters"] = {
        "child": {"description": "The child's id."},
        "id": {"description": "Unique per connection."},
    }
    channels["notices"]["parameters"] = {"id": {"description": "Unique per API process."}}
    for name in ("tasks", "highTasks"):
        channels[name]["address"] = "{pool}"
        channels[name]["parameters"] = {"pool": {"description": "The pool's name."}}
    channels["events"]["address"] = "{event}"
    channels["events"]["parameters"] = {"event": {"description": "The event's name."}}
    channels["dead"]["address"] = "{queue}"
    channels["dead"]["parameters"] = {"queue": {"description": "The parked queue's name."}}
    return channels


def _operation(action: str, channel: str, description: str, *, ack: bool = False) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "action": action,
        "channel": {"$ref": f"#/channels/{channel}"},
        "description": description,
    }
    binding: dict[str, Any] = {"bindingVersion": _BINDING}
    if action == "send":
        binding.update(deliveryMode=2, mandatory=True)
    if ack:
        binding["ack"] = True
    operation["bindings"] = {"amqp": binding}
    return operation


def _operations() -> dict[str, Any]:
    return {
        "sendTask": _operation(
            "send", "tasks", "The API publishes a task (confirmed before its 200); so do the "
            "tracker (a task answered, a lease's task sent again) and `convbus dlq replay`."),
        "sendHighTask": _operation("send", "highTasks", "As sendTask, for a `high` task."),
        "receiveTask": _operation(
            "receive", "pool", "A child consumes its pool: it runs the handler, calls back "
            "over HTTP, and acks only after the callback answered 2xx (or after a confirmed "
            "retry, question, park or expiry).", ack=True),
        "receiveHighTask": _operation(
            "receive", "high", "As receiveTask, with slots of its own.", ack=True),
        "sendEvent": _operation(
            "send", "events", "A child publishes `processing`, `retry`, `lease`, `progress`, "
            "`expired` and `input_required`; the API `callback`, `cancel`, `message`, "
            "`input`, `ack`, …"),
        "retryHighTask": _operation("send", "highDelay", "As retryTask, for a `high` task."),
        "retryTask": _operation(
            "send", "delay", "A child sends a failed attempt (x-attempt + 1, x-last-error) or a "
            "task whose time has not come to wait in a delay queue, confirmed, then acks."),
        "parkTask": _operation(
            "send", "dead", "A child parks a task out of retries (x-dead-reason, x-parked-id), "
            "confirmed, then acks."),
        "receiveCancels": _operation(
            "receive", "control", "A child hears every `cancel` on a queue of its own."),
        "recordEverything": _operation(
            "receive", "tracker", "The tracker records every task, event and parking in the "
            "database, and acks after the commit.", ack=True),
        "sendCommitNotice": _operation(
            "send", "committed", "The tracker tells every API replica what it committed."),
        "receiveCommitNotices": _operation(
            "receive", "notices", "An API replica wakes its waits and streams."),
    }  # fmt: skip


#: The headers of a task, as the bus sets and reads them (docs/wire.md, "A task, as the child
#: receives it").
_TASK_HEADERS: dict[str, dict[str, Any]] = {
    amqp.ATTEMPT_HEADER: {
        "type": "integer", "minimum": 1,
        "description": "The attempt: 1 from the API, after a replay and on a task answered "
        "(with the attempt that asked); n + 1 on a task retried after attempt n. Missing or "
        "not an integer: 1. Read every AMQP integer type (the Python services write the "
        "smallest that holds the value).",
    },
    amqp.LAST_ERROR_HEADER: {
        "type": "string", "maxLength": 1000, "description": "A retried task: the error of the "
        "attempt before.",
    },
    amqp.REPLAYS_HEADER: {
        "type": "integer", "minimum": 0, "description": "How many times an operator replayed "
        "the task; copy it from the delivery onto a retried or parked copy (0 when absent).",
    },
    amqp.DEAD_REASON_HEADER: {
        "type": "string", "maxLength": 1000, "description": "A parked task: why.",
    },
    amqp.PARKED_ID_HEADER: {
        "type": "string", "description": "A parked task: the parking's unique id (the `dead` "
        "entry's id).",
    },
    amqp.MAYBE_COPY_HEADER: {
        "type": "integer", "enum": [1, 2], "description": "A scheduled task that may have a "
        "twin: 1 while it waits, 2 once given its head start.",
    },
}  # fmt: skip


def _components() -> dict[str, Any]:
    _, top = models_json_schema(
        [(TaskMessage, "validation"), (Event, "validation"), (CommitNotice, "validation")],
        ref_template="#/components/schemas/{model}",
    )
    schemas = dict(sorted(top["$defs"].items()))
    message_binding = {"amqp": {"bindingVersion": _BINDING}}
    return {
        "schemas": schemas,
        "messages": {
            "Task": {
                "name": "task",
                "title": "A task",
                "summary": "What a child runs: AMQP `type` = `task`, `message_id` = the task "
                "id, persistent. `inputs` carries the questions its handler asked so far (at "
                f"most {MAX_INPUT_ROUNDS}), each with its answer.",
                "headers": {"type": "object", "properties": _TASK_HEADERS},
                "payload": {"$ref": "#/components/schemas/TaskMessage"},
                "bindings": {"amqp": {"messageType": "task", "bindingVersion": _BINDING}},
            },
            "Event": {
                "name": "event",
                "title": "An event",
                "summary": "Something that happened to a task (or a message sent): AMQP `type` "
                "= `event`, `message_id` = the event id, persistent; routing key = `event`.",
                "payload": {"$ref": "#/components/schemas/Event"},
                "bindings": {"amqp": {"messageType": "event", "bindingVersion": _BINDING}},
            },
            "CommitNotice": {
                "name": "commit-notice",
                "title": "A commit notice",
                "summary": "What the tracker just committed: transient, unconfirmed.",
                "payload": {"$ref": "#/components/schemas/CommitNotice"},
                "bindings": message_binding,
            },
        },
    }
