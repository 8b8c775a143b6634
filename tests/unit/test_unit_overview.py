"""The overview (shared/overview.py, cli/overview.py): management API JSON to a table, errors."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from cli.overview import render_table
from cli.processes import free_port
from shared.errors import BrokerUnavailable, ConfigError
from shared.overview import (
    build_overview,
    fetch_overview,
    fetch_queue_stats,
    management_endpoint,
    parse_queues,
)
from shared.settings import BusSettings
from shared.topology import QueueRole, Topology


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No RELAY_* variable of the machine leaks into these tests."""
    for name in list(os.environ):
        if name.upper().startswith(("RELAY_", "LYNKER_")):
            monkeypatch.delenv(name)


def settings(**values: Any) -> BusSettings:
    return BusSettings(namespace="ns1", **values)


# --- queue names


@pytest.mark.parametrize(
    ("name", "role"),
    [
        ("ns1.tracker", QueueRole("tracker")),
        ("ns1.tracker.parked", QueueRole("tracker_parked")),
        ("ns1.pool.child", QueueRole("pool", "child")),
        ("ns1.pool.a.b:c-D9", QueueRole("pool", "a.b:c-D9")),
        ("ns1.pool.child.parked", QueueRole("parked", "child")),
        ("ns1.pool.a.b.parked", QueueRole("parked", "a.b")),
        ("ns1.pool.child.delay.4000", QueueRole("delay", "child", 4000)),
        ("ns1.pool.a.b.delay.100", QueueRole("delay", "a.b", 100)),
        ("ns1.pool.parkedish", QueueRole("pool", "parkedish")),
    ],
)
def test_classify_names_every_queue_of_the_namespace(name: str, role: QueueRole) -> None:
    assert Topology("ns1").classify(name) == role


@pytest.mark.parametrize(
    "name",
    [
        "ns2.pool.child",
        "ns10.pool.child",
        "ns1x.tracker",
        "ns1.tracker2",
        "ns1.pool.",
        "ns1.pool.parked",
        "ns1.pool.delay.5",
        "ns1.pool.child.delay.x",
        "ns1.pool.child.parked.parked",
        "ns1.pool.my pool",
        "ns1.other",
        "amq.gen-abc",
    ],
)
def test_classify_ignores_what_is_not_this_namespaces(name: str) -> None:
    assert Topology("ns1").classify(name) is None


def test_classify_agrees_with_the_name_helpers() -> None:
    topo = Topology("ns1")
    pool = topo.pool_queue("child")
    assert topo.classify(pool) == QueueRole("pool", "child")
    assert topo.classify(topo.parked_queue(pool)) == QueueRole("parked", "child")
    assert topo.classify(topo.delay_queue("child", 16000)) == QueueRole("delay", "child", 16000)
    assert topo.classify(topo.tracker_queue) == QueueRole("tracker")
    assert all(q.startswith(topo.name_prefix) for q in topo.names(["child"])[1])


# --- where the management API is


def test_default_endpoint_is_the_amqp_host_on_15672_with_its_credentials() -> None:
    ep = management_endpoint(settings(amqp_url="amqp://bus:s3cret@rabbit.example:5673/prod"))
    assert str(ep.base) == "http://rabbit.example:15672"
    assert (ep.login, ep.password, ep.vhost) == ("bus", "s3cret", "prod")
    assert str(ep.queues_url()) == "http://rabbit.example:15672/api/queues/prod"


@pytest.mark.parametrize(
    ("amqp_url", "vhost", "path"),
    [
        ("amqp://guest:guest@127.0.0.1:5672/", "/", "%2F"),
        ("amqp://guest:guest@127.0.0.1:5672", "/", "%2F"),
        ("amqp://guest:guest@127.0.0.1:5672/%2F", "/", "%2F"),
        ("amqp://guest:guest@127.0.0.1:5672/a%2Fb", "a/b", "a%2Fb"),
    ],
)
def test_vhost_is_read_as_the_amqp_client_reads_it(amqp_url: str, vhost: str, path: str) -> None:
    ep = management_endpoint(settings(amqp_url=amqp_url))
    assert ep.vhost == vhost
    assert str(ep.queues_url()).endswith(f"/api/queues/{path}")


def test_amqp_url_without_credentials_logs_in_as_guest() -> None:
    ep = management_endpoint(settings(amqp_url="amqp://10.0.0.5/"))
    assert (str(ep.base), ep.login, ep.password) == ("http://10.0.0.5:15672", "guest", "guest")


def test_explicit_url_with_credentials_and_a_path_prefix() -> None:
    ep = management_endpoint(
        settings(
            amqp_url="amqp://bus:amqp-pw@h/v1",
            management_url="https://mon:mgmt-pw@proxy.example/rabbitmq/?x=1",
        )
    )
    assert str(ep.base) == "https://proxy.example/rabbitmq/"
    assert (ep.login, ep.password, ep.vhost) == ("mon", "mgmt-pw", "v1")
    assert str(ep.queues_url()) == "https://proxy.example/rabbitmq/api/queues/v1"


def test_explicit_url_without_credentials_borrows_the_amqp_ones() -> None:
    ep = management_endpoint(
        settings(amqp_url="amqp://bus:amqp-pw@h/", management_url="http://other:8080")
    )
    assert (str(ep.base), ep.login, ep.password) == ("http://other:8080", "bus", "amqp-pw")


def test_empty_management_url_is_unset() -> None:
    assert settings(management_url="").management_url is None


def test_management_url_is_a_secret() -> None:
    s = settings(management_url="http://mon:hidden-pw@h:15672/")
    assert "hidden-pw" not in repr(s)


@pytest.mark.parametrize("url", ["amqp://h:15672/", "h:15672", "http://"])
def test_a_management_url_that_is_not_http_is_refused(url: str) -> None:
    with pytest.raises(ConfigError, match="RELAY_MANAGEMENT_URL"):
        management_endpoint(settings(management_url=url))


# --- from the API's JSON to the overview

#: A trimmed GET /api/queues/%2F?columns=… answer of RabbitMQ 3.10, two namespaces on one broker.
SAMPLE = [
    {"name": "ns1.tracker", "messages": 7, "messages_ready": 5, "messages_unacknowledged": 2,
     "consumers": 1},
    {"name": "ns1.tracker.parked", "messages": 1, "messages_ready": 1,
     "messages_unacknowledged": 0, "consumers": 0},
    {"name": "ns1.pool.child", "messages": 13, "messages_ready": 10,
     "messages_unacknowledged": 3, "consumers": 2},
    {"name": "ns1.pool.child.parked", "messages": 4, "messages_ready": 4,
     "messages_unacknowledged": 0, "consumers": 0},
    {"name": "ns1.pool.child.delay.16000", "messages": 1, "messages_ready": 1,
     "messages_unacknowledged": 0, "consumers": 0},
    {"name": "ns1.pool.child.delay.1000", "messages": 6, "messages_ready": 6,
     "messages_unacknowledged": 0, "consumers": 0},
    {"name": "ns1.pool.bazi", "messages": 0, "messages_ready": 0, "messages_unacknowledged": 0,
     "consumers": 0},
    # Declared a moment ago: RabbitMQ has not counted it yet.
    {"name": "ns1.pool.bazi.parked"},
    {"name": "ns1.high.child", "messages": 3, "messages_ready": 2, "messages_unacknowledged": 1,
     "consumers": 2},
    {"name": "ns1.high.child.delay.1000", "messages": 1, "messages_ready": 1,
     "messages_unacknowledged": 0, "consumers": 0},
    {"name": "ns1.control.c1-r_a", "messages": 12, "messages_ready": 12,
     "messages_unacknowledged": 0, "consumers": 1},
    {"name": "ns1.control.c2-r_b", "messages": 0, "messages_ready": 0,
     "messages_unacknowledged": 0, "consumers": 1},
    {"name": "ns2.pool.child", "messages": 99, "messages_ready": 99,
     "messages_unacknowledged": 0, "consumers": 9},
    {"name": "ns2.tracker", "messages": 50, "messages_ready": 50, "messages_unacknowledged": 0,
     "consumers": 0},
]  # fmt: skip


def test_build_overview_from_the_management_json() -> None:
    overview = build_overview(Topology("ns1"), parse_queues(SAMPLE), "/")
    assert overview.as_dict() == {
        "namespace": "ns1",
        "vhost": "/",
        "pools": {
            "bazi": {"ready": 0, "unacked": 0, "consumers": 0, "parked": 0, "retrying": 0,
                     "high": 0, "delays": []},
            "child": {
                "ready": 10, "unacked": 3, "consumers": 2, "parked": 4, "retrying": 8,
                "high": 3,
                "delays": [
                    {"queue": "ns1.pool.child.delay.1000", "delay_ms": 1000, "messages": 6},
                    {"queue": "ns1.high.child.delay.1000", "delay_ms": 1000, "messages": 1},
                    {"queue": "ns1.pool.child.delay.16000", "delay_ms": 16000, "messages": 1},
                ],
            },
        },
        "tracker": {"lag": 7, "ready": 5, "unacked": 2, "consumers": 1, "parked": 1},
        "control": {"messages": 12, "consumers": 2},
    }  # fmt: skip


def test_another_namespace_on_the_same_broker_sees_only_its_own() -> None:
    overview = build_overview(Topology("ns2"), parse_queues(SAMPLE))
    assert [p.pool for p in overview.pools] == ["child"]
    assert overview.pools[0].ready == 99
    assert overview.tracker.lag == 50
    assert overview.tracker.consumers == 0


def test_an_empty_broker_has_no_pools_and_no_lag() -> None:
    overview = build_overview(Topology("ns1"), [])
    assert overview.pools == []
    assert overview.tracker.as_dict() == {
        "lag": 0, "ready": 0, "unacked": 0, "consumers": 0, "parked": 0
    }  # fmt: skip
    assert "no pools" in render_table(overview)


@pytest.mark.parametrize("bad", [{"messages": 1}, "ns1.pool.child", None, {"name": 5}])
def test_a_queue_without_a_name_is_not_the_management_api(bad: Any) -> None:
    with pytest.raises(ConfigError, match="unexpected queue"):
        parse_queues([bad])


def test_counts_that_are_not_numbers_read_zero() -> None:
    [queue] = parse_queues([{"name": "q", "messages_ready": "3", "consumers": True}])
    assert (queue.ready, queue.consumers) == (0, 0)


def test_the_table_shows_every_number() -> None:
    table = render_table(build_overview(Topology("ns1"), parse_queues(SAMPLE), "/"))
    lines = table.splitlines()
    assert lines[0] == "namespace ns1 (vhost /)"
    header = next(line for line in lines if line.startswith("pool"))
    assert header.split() == [
        "pool", "ready", "unacked", "consumers", "parked", "retrying", "high"
    ]  # fmt: skip
    assert next(line for line in lines if line.startswith("child")).split() == [
        "child", "10", "3", "2", "4", "8", "3"
    ]  # fmt: skip
    assert next(line for line in lines if line.startswith("bazi")).split() == [
        "bazi", "0", "0", "0", "0", "0", "0"
    ]  # fmt: skip
    # Columns line up: every number ends where its header ends.
    child = next(line for line in lines if line.startswith("child"))
    assert len(child) == len(header)
    assert any(line.split() == ["ns1.pool.child.delay.1000", "6"] for line in lines)
    assert any(line.split() == ["ns1.pool.child.delay.16000", "1"] for line in lines)
    assert "tracker: lag 7 (ready 5, unacked 2), consumers 1, parked 1" in lines
    assert "ns2" not in table
    assert "no tracker is consuming" not in table


def test_the_table_warns_when_no_tracker_consumes() -> None:
    table = render_table(build_overview(Topology("ns2"), parse_queues(SAMPLE)))
    assert "no tracker is consuming" in table


# --- the HTTP fetch against a stand-in server

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Awaitable[str]]]:
    """Serve handlers by path on a free loopback port; the base URL."""
    runners: list[web.AppRunner] = []

    async def start(routes: dict[str, Handler]) -> str:
        app = web.Application()
        for path, handler in routes.items():
            app.router.add_get(path, handler)
        runner = web.AppRunner(app)
        await runner.setup()
        runners.append(runner)
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        return f"http://127.0.0.1:{port}"

    yield start
    for runner in runners:
        await runner.cleanup()


def status(code: int, body: Any = None) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.json_response(body or {"error": "x", "reason": "y"}, status=code)

    return handler


async def test_fetch_pages_through_the_namespace_with_credentials(
    serve: Callable[..., Awaitable[str]],
) -> None:
    seen: list[Any] = []

    async def queues(request: web.Request) -> web.StreamResponse:
        seen.append((request.headers.get("Authorization"), dict(request.query)))
        page = int(request.query["page"])
        items = SAMPLE[:5] if page == 1 else SAMPLE[5:]
        return web.json_response({"items": items, "page": page, "page_count": 2})

    base = await serve({"/api/queues/{vhost}": queues})
    s = settings(amqp_url="amqp://bus:pw@127.0.0.1:1/", management_url=base)
    stats = await fetch_queue_stats(s)
    # Both pages, and of them only ns1's queues.
    assert sorted(q.name for q in stats) == sorted(
        str(q["name"]) for q in SAMPLE if str(q["name"]).startswith("ns1.")
    )
    assert [query["page"] for _, query in seen] == ["1", "2"]
    auth, query = seen[0]
    assert auth == "Basic YnVzOnB3"  # bus:pw
    assert query["name"] == r"^ns1\." and query["use_regex"] == "true"
    assert "messages_ready" in query["columns"]
    overview = await fetch_overview(s)
    assert overview.pools[1].pool == "child" and overview.pools[1].retrying == 8


async def test_connection_refused_says_how_to_enable_the_plugin() -> None:
    s = settings(management_url=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(BrokerUnavailable) as caught:
        await fetch_queue_stats(s)
    message = str(caught.value)
    assert "connection refused" in message
    assert "rabbitmq-plugins enable rabbitmq_management" in message
    assert "RELAY_MANAGEMENT_URL" in message


async def test_401_names_the_user_and_never_the_password(
    serve: Callable[..., Awaitable[str]],
) -> None:
    base = await serve({"/api/queues/{vhost}": status(401)})
    url = base.replace("http://", "http://mon:hidden-pw@")
    with pytest.raises(ConfigError, match=r"refused the login of user 'mon' \(401\)") as caught:
        await fetch_queue_stats(settings(management_url=url))
    assert "hidden-pw" not in str(caught.value)


async def test_403_is_a_missing_permission(serve: Callable[..., Awaitable[str]]) -> None:
    base = await serve({"/api/queues/{vhost}": status(403)})
    with pytest.raises(ConfigError, match=r"may not read vhost '/'.*\(403\)"):
        await fetch_queue_stats(settings(management_url=base))


async def test_404_with_an_overview_is_a_missing_vhost(
    serve: Callable[..., Awaitable[str]],
) -> None:
    base = await serve(
        {"/api/queues/{vhost}": status(404), "/api/overview": status(200, {"node": "n"})}
    )
    s = settings(amqp_url="amqp://guest:guest@h/nope", management_url=base)
    with pytest.raises(ConfigError, match=r"vhost .nope. .* does not exist"):
        await fetch_queue_stats(s)


async def test_404_everywhere_is_not_the_management_api(
    serve: Callable[..., Awaitable[str]],
) -> None:
    base = await serve({"/other": status(200)})
    with pytest.raises(ConfigError, match=r"is not RabbitMQ.s management API .*404") as caught:
        await fetch_queue_stats(settings(management_url=base))
    assert "rabbitmq-plugins enable rabbitmq_management" in str(caught.value)


async def test_a_server_error_is_an_unavailable_broker(
    serve: Callable[..., Awaitable[str]],
) -> None:
    base = await serve({"/api/queues/{vhost}": status(503)})
    with pytest.raises(BrokerUnavailable, match="answered 503"):
        await fetch_queue_stats(settings(management_url=base))


@pytest.mark.parametrize("body", ["<html>hello</html>", '{"no": "items"}', "[1, 2]"])
async def test_an_answer_of_another_shape_is_not_the_management_api(
    serve: Callable[..., Awaitable[str]], body: str
) -> None:
    async def other(request: web.Request) -> web.StreamResponse:
        return web.Response(text=body, content_type="text/html")

    base = await serve({"/api/queues/{vhost}": other})
    with pytest.raises(ConfigError, match="is not RabbitMQ's management API"):
        await fetch_queue_stats(settings(management_url=base))


async def test_a_silent_server_times_out(serve: Callable[..., Awaitable[str]]) -> None:
    never = asyncio.Event()

    async def hang(request: web.Request) -> web.StreamResponse:
        await never.wait()
        return web.Response()

    base = await serve({"/api/queues/{vhost}": hang})
    try:
        with pytest.raises(BrokerUnavailable, match=r"did not answer within 0.2 s"):
            await fetch_queue_stats(settings(management_url=base), timeout=0.2)
    finally:
        never.set()  # the server's shutdown waits for its handlers
