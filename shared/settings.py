"""Settings from the environment: one base every service shares, one class per service."""

from __future__ import annotations

import os
import socket
from datetime import timedelta
from functools import cached_property
from typing import Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.contract import NAME_PATTERN
from shared.durations import Duration
from shared.errors import ConfigError
from shared.retry import RetryPolicies
from shared.schemas import MAX_TIMEOUT_S

#: A child's handlers at once by default (RELAY_CONCURRENCY): see docs/performance.md.
DEFAULT_CONCURRENCY = 2000
MAX_CONCURRENCY = 50_000
#: RabbitMQ's prefetch count is a 16-bit number.
MAX_PREFETCH = 65_535

#: The key the seed published in its README; accepted only in dev mode.
SEED_DEV_API_KEY = "lynker_relay_secret_2025"


class BusSettings(BaseSettings):
    """What every service needs: the broker, the namespace, the database, the key."""

    model_config = SettingsConfigDict(env_prefix="RELAY_", extra="ignore")

    #: The broker; for a cluster, one URL per node, comma-separated: a service connects to the
    #: first that answers and, once its connection is lost, to the next.
    amqp_url: SecretStr = SecretStr("amqp://guest:guest@127.0.0.1:5672/")
    namespace: str = Field(default="relay", pattern=r"^[a-z0-9][a-z0-9_-]{0,39}$")
    database_url: SecretStr = SecretStr("sqlite:///./convbus.db")
    #: RabbitMQ's management HTTP API (may carry credentials); unset: the AMQP URL's host, port
    #: 15672, its credentials. The vhost is always the AMQP URL's.
    management_url: SecretStr | None = None
    api_key: SecretStr | None = None
    dev_mode: bool = False
    #: Seconds between AMQP heartbeats; a dead connection is noticed in about twice this.
    heartbeat: int = Field(default=10, ge=1, le=600)
    log_level: str = "INFO"
    #: `text`: readable lines; `json`: one JSON object a line (for log collectors).
    log_format: Literal["text", "json"] = "text"

    #: Hosts a task's webhook (`notify.url`) may go to: comma-separated `host` or `host:port`
    #: (empty: webhooks off, a send with `notify` is refused).
    webhook_hosts: str = ""
    #: Signs every webhook (HMAC-SHA256); the receivers hold it too.
    webhook_secret: SecretStr | None = None

    @field_validator("api_key", "management_url", mode="before")
    @classmethod
    def _empty_key_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    def effective_api_key(self) -> str:
        """The configured key; the seed's key only in dev mode; otherwise refuse to start."""
        if self.api_key is not None:
            key = self.api_key.get_secret_value()
            if key == SEED_DEV_API_KEY and not self.dev_mode:
                raise ConfigError(
                    "RELAY_API_KEY is the seed's published key, refused outside dev mode: set a "
                    "long random secret of your own (or RELAY_DEV_MODE=true on a dev machine)"
                )
            return key
        if self.dev_mode:
            return SEED_DEV_API_KEY
        raise ConfigError(
            "RELAY_API_KEY is not set. Set it to a long random secret, e.g. `export "
            "RELAY_API_KEY=$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')`, "
            "or set RELAY_DEV_MODE=true on a development machine to use the seed's dev key."
        )


Scope = Literal["send", "callback", "read", "admin"]


class KeySpec(BaseModel):
    """One API key: who holds it (its name), what it may do, which pools; stored as a hash."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME_PATTERN)
    #: Hex SHA-256 of the key (`convbus key new` prints both).
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    scopes: frozenset[Scope]
    #: Pools it may send tasks to and call back for; None: every pool.
    pools: frozenset[str] | None = None
    #: May send with a `from` other than its own name.
    send_as_any: bool = False


class ApiSettings(BusSettings):
    """The HTTP API."""

    #: Scoped keys (RELAY_KEYS, a JSON list), beside RELAY_API_KEY's key with every scope.
    keys: list[KeySpec] = Field(default_factory=list)
    #: A JSON file with more keys, in the same form.
    keys_file: str | None = None
    #: Open GET /logs without a key (the seed's behaviour); default: only in dev mode.
    public_logs: bool | None = None
    #: GET /tasks/{id} shows payload, text, result and error to anyone with the id; default:
    #: only in dev mode (otherwise to the task's sender, its pool's key and operators).
    public_tasks: bool | None = None
    #: Redis where every API replica counts the limits below (`redis://host:6379/0`,
    #: `rediss://…`); unset: each API process counts its own.
    limits_url: SecretStr | None = None
    #: Sends a second per key (token bucket, per API process; 0: no limit), and the burst.
    send_rate: float = Field(default=2000.0, ge=0)
    send_burst: float = Field(default=4000.0, ge=1)
    #: Failed authentications a second per client address, and the burst; then 429.
    auth_failure_rate: float = Field(default=0.5, ge=0)
    auth_failure_burst: float = Field(default=20.0, ge=1)
    #: The proxies whose X-Forwarded-For (and X-Forwarded-Proto) the API believes: their
    #: addresses or networks, comma-separated, or `*`. Unset: none, and a client's address
    #: (the failed-authentication bucket's key) is the peer's, whatever headers it sends.
    trusted_proxies: str | None = None
    #: Serve /docs, /redoc and /openapi.json (switch off in production if you like).
    openapi: bool = True

    host: str = "127.0.0.1"
    port: int = Field(default=8008, ge=1, le=65535)
    #: Seconds to wait for RabbitMQ's confirm before answering 503.
    publish_timeout: float = Field(default=5.0, gt=0, le=120)
    #: Secret that signs task ids; every API replica must share it. Derived from the key if unset.
    id_secret: SecretStr | None = None
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    #: Database connections the API keeps open (PostgreSQL); as many again may open under load.
    db_pool_size: int = Field(default=20, ge=1, le=500)
    #: The furthest a task's deadline (`deadline`, `ttl_s`) or its start (`not_before`,
    #: `delay_s`) may be, in seconds from its send.
    max_deadline_s: float = Field(default=30 * 86_400, gt=0)
    #: How long a signed task id the tracker has not seen yet still reads as `pending`.
    pending_grace_seconds: int = Field(default=7 * 24 * 3600, ge=60)
    #: The longest `?wait=` a read may ask for, in seconds.
    max_wait_s: float = Field(default=60.0, ge=0, le=3600)
    #: A stream with nothing to say sends a comment this often (proxies close idle connections).
    stream_keepalive_s: float = Field(default=15.0, gt=0, le=300)
    #: Entries a stream holds for a client that reads slowly; one more and it is dropped (it
    #: reconnects with Last-Event-ID and misses nothing).
    stream_buffer: int = Field(default=1000, ge=10, le=100_000)
    #: Streams one API process holds open at once; more are refused with 503.
    max_streams: int = Field(default=2000, ge=1, le=100_000)

    @field_validator("id_secret", "limits_url", mode="before")
    @classmethod
    def _empty_secret_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("limits_url")
    @classmethod
    def _a_redis_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith(("redis://", "rediss://")):
            raise ValueError("a redis:// or rediss:// URL")
        return value


class ChildSettings(BusSettings):
    """The child worker runtime."""

    #: Where the child finds the API (the seed's name).
    api_base: str = Field(
        default="http://127.0.0.1:8008",
        validation_alias=AliasChoices("LYNKER_API_BASE", "RELAY_API_BASE"),
    )
    #: Most handlers one child runs at once, sync or async: handlers mostly wait (on a model, a
    #: tool), so this is far above the CPU count. Unset: RELAY_PREFETCH if that is set.
    concurrency: int = Field(default=DEFAULT_CONCURRENCY, ge=1, le=MAX_CONCURRENCY)
    #: Deliveries a child holds unacked: running, calling back, or waiting for a handler.
    #: Unset: the concurrency. Above it, deliveries wait in the child for a free handler.
    prefetch: int = Field(default=DEFAULT_CONCURRENCY, ge=1, le=MAX_PREFETCH)
    #: Handlers of `high` tasks at once, besides the concurrency (their own slots and queue).
    #: Unset: a tenth of the concurrency, at least 1.
    high_concurrency: int | None = Field(default=None, ge=1, le=MAX_PREFETCH)
    callback_attempts: int = Field(default=3, ge=1, le=20)
    #: Wait after the first failed callback attempt; it doubles after each (1 s, 2 s, 4 s).
    callback_backoff: float = Field(default=1.0, ge=0, le=300)
    callback_timeout: float = Field(default=10.0, gt=0, le=300)
    #: Outcomes waiting to be reported go together in one POST /callbacks (at most two such
    #: requests at a time); false: one POST /callback each, as the seed did.
    callback_batch: bool = True
    child_id: str = Field(default="", pattern=r"^[A-Za-z0-9_.:-]{0,64}$")
    #: Seconds a handler runs before the child publishes its `processing` event; a faster run's
    #: entry is written by the tracker from the callback (one message less per task). 0: always.
    processing_after: float = Field(default=0.05, ge=0, le=3600)
    #: Seconds a stopping child waits for in-flight tasks before leaving them for redelivery.
    shutdown_grace: float = Field(default=30.0, ge=0)
    #: Seconds a handler may run unless its task or its command says otherwise; unset: no limit.
    handler_timeout: float | None = Field(default=None, gt=0, le=MAX_TIMEOUT_S)
    #: Seconds a run keeps its delivery unacked; past that the child acks it and holds a lease
    #: instead (the tracker sends the task again if the lease is not renewed), so that RabbitMQ's
    #: consumer timeout (30 min by default) never takes a long run's delivery back. Keep it well
    #: below the broker's `consumer_timeout`.
    hold_delivery: float = Field(default=600.0, gt=0, le=MAX_TIMEOUT_S)
    #: Seconds a lease lasts without a heartbeat; the child sends one every quarter of it.
    lease: float = Field(default=60.0, ge=0.4, le=3600)
    #: Most one `progress` event per task per this many seconds (the latest report wins).
    progress_every: float = Field(default=1.0, ge=0, le=3600)
    #: Retries of failed tasks (RELAY_RETRY, JSON): default, per pool, per command.
    retry: RetryPolicies = RetryPolicies()
    #: Folder of the child's record of finished handlers (one SQLite file per pool).
    state_dir: str = "."
    #: Days a finished handler's result is kept for redeliveries.
    state_retention_days: float = Field(default=7.0, gt=0)
    #: Where /healthz, /readyz and /metrics are served; port 0 serves none.
    ops_host: str = "127.0.0.1"
    ops_port: int = Field(default=8010, ge=0, le=65535)

    @field_validator("handler_timeout", "high_concurrency", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @model_validator(mode="before")
    @classmethod
    def _each_follows_the_other(cls, data: object) -> object:
        """An unset concurrency or prefetch takes the other's value (RELAY_PREFETCH alone keeps
        meaning what it meant before the concurrency existed)."""
        if not isinstance(data, dict):
            return data
        given = {k: v for k, v in data.items() if k in ("concurrency", "prefetch") and v != ""}
        data = {k: v for k, v in data.items() if k not in ("concurrency", "prefetch")}
        if "concurrency" in given:
            data["concurrency"] = given["concurrency"]
        elif "prefetch" in given:
            data["concurrency"] = _at_most(given["prefetch"], MAX_CONCURRENCY)
        else:
            data["concurrency"] = DEFAULT_CONCURRENCY
        data["prefetch"] = given.get("prefetch", data["concurrency"])
        return data

    @model_validator(mode="after")
    def _prefetch_holds_the_concurrency(self) -> ChildSettings:
        if self.prefetch < self.concurrency:
            raise ValueError(
                f"RELAY_PREFETCH={self.prefetch} would hold the child to {self.prefetch} "
                f"handlers at once, below RELAY_CONCURRENCY={self.concurrency}: unset "
                "RELAY_PREFETCH (it follows the concurrency) or raise it"
            )
        return self

    @property
    def high_slots(self) -> int:
        """Handlers of high tasks at once."""
        return self.high_concurrency or max(1, self.concurrency // 10)

    @cached_property
    def worker_name(self) -> str:
        """This worker's child_id: the configured one, or host and pid."""
        return self.child_id or f"{socket.gethostname()[:40]}-{os.getpid()}"


def _at_most(value: object, most: int) -> object:
    """`value` capped at `most` if it reads as a number; else as it is, for validation to refuse."""
    try:
        return min(int(str(value)), most)
    except ValueError:
        return value


class TrackerSettings(BusSettings):
    """The tracker."""

    #: Most events written in one transaction.
    batch_size: int = Field(default=1000, ge=1, le=10_000)
    #: Seconds the tracker waits to fill a batch once it has the first event.
    batch_wait: float = Field(default=0.02, ge=0, le=10)
    #: A batch is written early once no event came for this long (0: never), at most one
    #: such batch per batch_wait on average (services/tracker/batching.py).
    batch_idle: float = Field(default=0.001, ge=0, le=10)
    #: Seconds between reconnect attempts when the database is down.
    db_retry: float = Field(default=1.0, gt=0, le=60)
    #: Where /healthz, /readyz and /metrics are served; port 0 serves none.
    ops_host: str = "127.0.0.1"
    ops_port: int = Field(default=8011, ge=0, le=65535)
    #: Seconds between readings of the queues' depths for the metrics.
    queue_stats_every: float = Field(default=15.0, gt=0, le=3600)
    #: Prune what finished longer ago than this (`30d`, `12h`…): tasks, their log and keys, and
    #: messages (shared/retention.py). Unset: never (`convbus prune` does it by hand).
    prune_after: Duration | None = None
    #: How often the tracker prunes, when RELAY_PRUNE_AFTER is set.
    prune_every: Duration = timedelta(hours=1)
    #: Seconds between looks for leases run out and deadlines passed (services/tracker/overdue.py).
    lease_sweep_every: float = Field(default=5.0, gt=0, le=3600)

    @field_validator("prune_after", mode="before")
    @classmethod
    def _empty_age_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("prune_after")
    @classmethod
    def _not_too_young(cls, value: timedelta | None) -> timedelta | None:
        from shared.retention import MIN_AGE

        if value is not None and value < MIN_AGE:
            raise ValueError(f"prune only what is at least {MIN_AGE} old (e.g. 30d)")
        return value
