"""The bus's Prometheus metrics: every service's, declared in one place.

Each service is its own process with its own registry; a service only moves the metrics of
its part of the bus, so its `/metrics` shows those (the others stay absent or at zero).
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

# Latencies on this bus run from a millisecond (a confirm) to minutes (a slow handler).
_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)

# --- API
SENDS = Counter(
    "convbus_sends_total",
    "Sends answered by the API, by outcome (accepted, or the refusal's HTTP status)",
    ["outcome"],
)
PUBLISH_CONFIRM = Histogram(
    "convbus_publish_confirm_seconds",
    "From the API's publish of a task or event to RabbitMQ's confirm",
    ["kind"],
    buckets=_SECONDS,
)
CALLBACKS_RECEIVED = Counter(
    "convbus_callbacks_received_total",
    "Callbacks answered by the API, by outcome (accepted, or the refusal's HTTP status)",
    ["outcome"],
)
API_WAITS = Gauge("convbus_api_waits", "Reads waiting (`?wait=`) for a task to end")
API_STREAMS = Gauge("convbus_api_streams", "Streams of log entries open (GET /stream)")
API_STREAMS_DROPPED = Counter(
    "convbus_api_streams_dropped_total",
    "Streams closed because their client read more slowly than entries came",
)
API_LIMITS_UNAVAILABLE = Counter(
    "convbus_api_limits_unavailable_total",
    "Requests let through unchecked because the shared limits' Redis did not answer",
)
API_NOTICES = Counter(
    "convbus_api_commit_notices_total",
    "Commit notices from the tracker, by outcome (heard; gap: some were missed, so every "
    "wait and stream read again)",
    ["outcome"],
)

# --- child
TASKS = Counter(
    "convbus_tasks_total",
    "Deliveries a child settled, by pool and outcome "
    "(completed, failed, retried, parked, skipped as already done, requeued, expired, canceled, "
    "put_off: a scheduled task sent to wait again)",
    ["pool", "outcome"],
)
TASKS_CONSUMED = Counter(
    "convbus_tasks_consumed_total", "Deliveries a child received, by pool", ["pool"]
)
TASKS_IN_FLIGHT = Gauge("convbus_tasks_in_flight", "Deliveries a child holds unsettled", ["pool"])
HANDLER_DURATION = Histogram(
    "convbus_handler_seconds", "Time in the handler, by pool", ["pool"], buckets=_SECONDS
)
CALLBACK_DURATION = Histogram(
    "convbus_callback_seconds",
    "From the first callback attempt to the API's answer, retries included, by pool",
    ["pool"],
    buckets=_SECONDS,
)
CALLBACK_FAILURES = Counter(
    "convbus_callback_failures_total",
    "Callbacks a child gave up on after its attempts (the task is retried), by pool",
    ["pool"],
)

# --- tracker
HANDLER_TIMEOUTS = Counter(
    "convbus_handler_timeouts_total",
    "Handlers cancelled (async) or abandoned (sync) past their timeout, by pool",
    ["pool"],
)
LEASES = Counter(
    "convbus_leases_total",
    "Runs that outlasted RELAY_HOLD_DELIVERY and were handed to a lease, by pool",
    ["pool"],
)
LEASED_RUNS = Gauge("convbus_leased_runs", "Runs a child holds under a lease now", ["pool"])
TRACKER_LEASES_EXPIRED = Counter(
    "convbus_tracker_leases_expired_total",
    "Leases the tracker found expired, whose tasks it sent again (or parked)",
)
TRACKER_EXPIRED = Counter(
    "convbus_tracker_expired_total",
    "Tasks the tracker ended expired: still waiting past their deadline",
)
TRACKER_EVENTS = Counter(
    "convbus_tracker_events_total", "Entries the tracker wrote (duplicates not counted)"
)
TRACKER_BATCH = Histogram(
    "convbus_tracker_batch_size",
    "Messages per batch the tracker wrote in one transaction",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000),
)
TRACKER_EARLY_BATCHES = Counter(
    "convbus_tracker_early_batches_total",
    "Batches the tracker wrote before their window ended, as no event came for RELAY_BATCH_IDLE",
)
TRACKER_WRITE = Histogram(
    "convbus_tracker_write_seconds", "One batch's transaction", buckets=_SECONDS
)
TRACKER_LAG = Gauge(
    "convbus_tracker_lag_events",
    "Events waiting in the tracker's queue (ready, not yet delivered to the tracker)",
)
TRACKER_PARKED = Counter(
    "convbus_tracker_parked_total", "Messages the tracker could not read or store, parked"
)
QUEUE_MESSAGES = Gauge(
    "convbus_queue_messages",
    "Messages ready in a queue of the bus, as the tracker last saw them",
    ["queue", "kind", "pool"],
)
QUEUE_CONSUMERS = Gauge(
    "convbus_queue_consumers",
    "Consumers on a queue of the bus, as the tracker last saw them",
    ["queue", "kind", "pool"],
)


def exposition() -> tuple[bytes, str]:
    """This process's metrics in the Prometheus text format, and its content type."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
