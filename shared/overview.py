"""What waits where, read from RabbitMQ's management HTTP API (`convbus overview` shows it).

Per pool: tasks ready and unacknowledged, consumers, parked tasks, tasks waiting in delay
(retry) queues; then the tracker's lag (messages not yet recorded) and its consumers. Only the
queues of this bus's namespace are shown.

Two halves: `fetch_queue_stats` speaks HTTP; `build_overview` is pure, from the management
API's JSON to the overview (cli/overview.py renders it for the operator).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import aiohttp
from yarl import URL

from shared.amqp import amqp_urls, redact
from shared.errors import BrokerUnavailable, ConfigError
from shared.settings import BusSettings
from shared.topology import Topology

#: Where the management plugin listens unless configured otherwise.
MANAGEMENT_PORT = 15672
#: The most queues RabbitMQ returns a page.
PAGE_SIZE = 500
_COLUMNS = "name,messages,messages_ready,messages_unacknowledged,consumers"
_HOW_TO_FIX = (
    "enable the management plugin on the broker (`rabbitmq-plugins enable rabbitmq_management`), "
    "or set RELAY_MANAGEMENT_URL to where its HTTP API listens "
    "(e.g. http://user:password@host:15672/)"
)


@dataclass(frozen=True)
class ManagementEndpoint:
    """Where the management API is, who to log in as, and the bus's vhost."""

    base: URL  # without credentials
    login: str
    password: str
    vhost: str

    def authorization(self) -> str:
        """The Authorization header's value."""
        try:
            return aiohttp.encode_basic_auth(self.login, self.password)
        except ValueError as exc:  # a ":" in the user name
            raise ConfigError(
                f"cannot log in to the management API as {self.login!r}: {exc}"
            ) from exc

    def queues_url(self) -> URL:
        return self._api(f"queues/{quote(self.vhost, safe='')}")

    def overview_url(self) -> URL:
        return self._api("overview")

    def _api(self, path: str) -> URL:
        return URL(f"{str(self.base).rstrip('/')}/api/{path}", encoded=True)


def management_endpoint(settings: BusSettings) -> ManagementEndpoint:
    """RELAY_MANAGEMENT_URL, or the AMQP URL's host on port 15672; the AMQP URL's vhost.

    Credentials: the management URL's own, else the AMQP URL's (guest/guest if it has none).
    """
    amqp = amqp_urls(settings)[0]  # a cluster's first node
    # As aiormq reads it: "" or "/" is the default vhost, else the path after its first "/".
    vhost = "/" if amqp.path in ("", "/") else amqp.path[1:]
    if settings.management_url is not None:
        url = URL(settings.management_url.get_secret_value())
        if url.scheme not in ("http", "https") or not url.host:
            raise ConfigError(
                f"RELAY_MANAGEMENT_URL must be an http:// or https:// URL, not {redact(url)!r}"
            )
    else:
        url = URL.build(scheme="http", host=amqp.host or "127.0.0.1", port=MANAGEMENT_PORT)
    if url.user is not None:
        login, password = url.user, url.password or ""
    else:
        login, password = amqp.user or "guest", amqp.password or "guest"
    base = url.with_user(None).with_query(None).with_fragment(None)
    return ManagementEndpoint(base=base, login=login, password=password, vhost=vhost)


@dataclass(frozen=True)
class QueueStats:
    """One queue as the management API counts it (0 for what it has not counted yet)."""

    name: str
    ready: int = 0
    unacked: int = 0
    messages: int = 0
    consumers: int = 0


def _count(item: Mapping[str, Any], key: str) -> int:
    value = item.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def parse_queues(items: Iterable[Any]) -> list[QueueStats]:
    """The queues of a GET /api/queues/{vhost} answer (a page's `items`, or the plain list).

    A queue declared a moment ago has no counts until RabbitMQ's next statistics: it reads 0.
    """
    stats = []
    for item in items:
        if not isinstance(item, Mapping) or not isinstance(item.get("name"), str):
            raise ConfigError(f"unexpected queue in the management API's answer: {item!r:.200}")
        stats.append(
            QueueStats(
                name=item["name"],
                ready=_count(item, "messages_ready"),
                unacked=_count(item, "messages_unacknowledged"),
                messages=_count(item, "messages"),
                consumers=_count(item, "consumers"),
            )
        )
    return stats


@dataclass(frozen=True)
class DelayQueue:
    """A pool's retry waiting room of one delay, and how many tasks wait in it."""

    queue: str
    delay_ms: int
    messages: int


@dataclass(kw_only=True)
class QueueCounts:
    """A queue as an operator reads it, with its parking lot: messages ready, delivered and
    not yet acknowledged, its consumers, and the messages set aside in its parking lot."""

    ready: int = 0
    unacked: int = 0
    consumers: int = 0
    parked: int = 0

    def counts(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in ("ready", "unacked", "consumers", "parked")}


@dataclass
class PoolOverview(QueueCounts):
    pool: str
    delays: list[DelayQueue] = field(default_factory=list)
    #: Tasks in the pool's queue of high tasks, ready or delivered.
    high: int = 0

    @property
    def retrying(self) -> int:
        return sum(d.messages for d in self.delays)

    def as_dict(self) -> dict[str, Any]:
        delays = [{"queue": d.queue, "delay_ms": d.delay_ms, "messages": d.messages}
                  for d in self.delays]  # fmt: skip
        return {**self.counts(), "high": self.high, "retrying": self.retrying, "delays": delays}


@dataclass
class TrackerOverview(QueueCounts):
    @property
    def lag(self) -> int:
        """Messages in the tracker's queue: sends and events not yet in its database."""
        return self.ready + self.unacked

    def as_dict(self) -> dict[str, Any]:
        return {"lag": self.lag, **self.counts()}


@dataclass
class ControlOverview:
    """The children's own queues of cancels: how many children follow them, and what waits."""

    messages: int = 0
    consumers: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"messages": self.messages, "consumers": self.consumers}


@dataclass
class Overview:
    namespace: str
    vhost: str
    pools: list[PoolOverview]
    tracker: TrackerOverview
    control: ControlOverview = field(default_factory=ControlOverview)

    def as_dict(self) -> dict[str, Any]:
        return {
            "namespace": self.namespace,
            "vhost": self.vhost,
            "pools": {p.pool: p.as_dict() for p in self.pools},
            "tracker": self.tracker.as_dict(),
            "control": self.control.as_dict(),
        }


def build_overview(topo: Topology, queues: Iterable[QueueStats], vhost: str = "/") -> Overview:
    """The overview of `topo`'s namespace from the queues of its vhost (others' are ignored)."""
    pools: dict[str, PoolOverview] = {}
    tracker = TrackerOverview()
    control = ControlOverview()
    for queue in queues:
        role = topo.classify(queue.name)
        if role is None:
            continue
        if role.kind == "tracker":
            tracker.ready, tracker.unacked = queue.ready, queue.unacked
            tracker.consumers = queue.consumers
            continue
        if role.kind == "tracker_parked":
            tracker.parked = queue.messages
            continue
        if role.kind == "control":  # one queue per child that follows the cancels
            control.messages += queue.messages
            control.consumers += queue.consumers
            continue
        if role.kind == "notices":  # one per API process: transient, nothing to show
            continue
        assert role.pool is not None  # every other kind belongs to a pool
        pool = pools.setdefault(role.pool, PoolOverview(role.pool))
        if role.kind == "pool":
            pool.ready, pool.unacked, pool.consumers = queue.ready, queue.unacked, queue.consumers
        elif role.kind == "parked":
            pool.parked = queue.messages
        elif role.kind == "high":
            pool.high = queue.ready + queue.unacked
        else:  # a delay queue, of normal or high tasks
            assert role.delay_ms is not None
            pool.delays.append(DelayQueue(queue.name, role.delay_ms, queue.messages))
    for pool in pools.values():
        pool.delays.sort(key=lambda d: d.delay_ms)
    ordered = [pools[name] for name in sorted(pools)]
    return Overview(
        namespace=topo.namespace, vhost=vhost, pools=ordered, tracker=tracker, control=control
    )


async def fetch_queue_stats(
    settings: BusSettings,
    timeout: float = 10.0,  # noqa: ASYNC109  (the whole fetch's bound, every page included)
) -> list[QueueStats]:
    """Every queue of this bus's namespace with its depths and consumers, from one listing.

    Raises BrokerUnavailable when the management API cannot be reached, ConfigError when it
    answers but refuses (401, 403), is not there (404) or is not the management API.
    """
    endpoint = management_endpoint(settings)
    topo = Topology(settings.namespace)
    headers = {"Authorization": endpoint.authorization()}
    where = str(endpoint.base)
    try:
        async with aiohttp.ClientSession(
            headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)
        ) as session:
            items: list[Any] = []
            page, pages = 1, 1
            while page <= pages:
                # The broker filters by name (a regex) so that other namespaces stay there.
                params = {
                    "page": str(page),
                    "page_size": str(PAGE_SIZE),
                    "name": f"^{re.escape(topo.name_prefix)}",
                    "use_regex": "true",
                    "columns": _COLUMNS,
                }
                async with session.get(endpoint.queues_url(), params=params) as response:
                    if response.status != 200:
                        await _refused(session, endpoint, response.status)
                    body = await _json(response, where)
                if not isinstance(body, dict) or not isinstance(body.get("items"), list):
                    raise ConfigError(_not_management(where, "an unexpected answer"))
                items += body["items"]
                pages = _count(body, "page_count")
                page += 1
    except aiohttp.ClientConnectorError as exc:
        refused = isinstance(exc.os_error, ConnectionRefusedError)
        why = "connection refused" if refused else exc.os_error.strerror or str(exc.os_error)
        raise BrokerUnavailable(
            f"cannot reach RabbitMQ's management API at {where} ({why}): {_HOW_TO_FIX}"
        ) from exc
    except TimeoutError as exc:
        raise BrokerUnavailable(
            f"RabbitMQ's management API at {where} did not answer within {timeout:g} s"
        ) from exc
    except aiohttp.ClientError as exc:
        raise BrokerUnavailable(_not_management(where, _describe(exc))) from exc
    return [q for q in parse_queues(items) if topo.classify(q.name) is not None]


def _describe(exc: aiohttp.ClientError) -> str:
    """What went wrong, without the request (its headers carry the password)."""
    if isinstance(exc, aiohttp.ClientResponseError):
        first_line = [line.rstrip(":") for line in (exc.message or "").splitlines()[:1]]
        return " ".join([type(exc).__name__, str(exc.status), *first_line])
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _not_management(where: str, what: str) -> str:
    return f"{where} is not RabbitMQ's management API ({what}): {_HOW_TO_FIX}"


async def _json(response: aiohttp.ClientResponse, where: str) -> Any:
    try:
        return json.loads(await response.read())
    except ValueError as exc:
        raise ConfigError(_not_management(where, "its answer is not JSON")) from exc


async def _refused(
    session: aiohttp.ClientSession, endpoint: ManagementEndpoint, status: int
) -> None:
    """Raise the error that says why the queue listing got `status`."""
    where = str(endpoint.base)
    if status == 401:
        raise ConfigError(
            f"RabbitMQ's management API at {where} refused the login of user "
            f"{endpoint.login!r} (401): give a user with the `monitoring` or `management` tag "
            "in RELAY_MANAGEMENT_URL (http://user:password@host:15672/) or RELAY_AMQP_URL"
        )
    if status == 403:
        raise ConfigError(
            f"user {endpoint.login!r} may not read vhost {endpoint.vhost!r} through the "
            f"management API at {where} (403): grant it permissions on that vhost"
        )
    if status == 404:
        # Tell a missing vhost from a URL where no management API is.
        async with session.get(endpoint.overview_url()) as probe:
            if probe.status == 200:
                raise ConfigError(
                    f"vhost {endpoint.vhost!r} (of RELAY_AMQP_URL) does not exist on the broker "
                    f"of the management API at {where}"
                )
        raise ConfigError(_not_management(where, "404 Not Found"))
    if status >= 500:
        raise BrokerUnavailable(f"RabbitMQ's management API at {where} answered {status}")
    raise ConfigError(_not_management(where, f"HTTP {status}"))


async def fetch_overview(settings: BusSettings, timeout: float = 10.0) -> Overview:  # noqa: ASYNC109
    """The overview of this bus, read now."""
    queues = await fetch_queue_stats(settings, timeout)
    vhost = management_endpoint(settings).vhost
    return build_overview(Topology(settings.namespace), queues, vhost)
