"""shared/topology.py: names and queue arguments of one namespace."""

from __future__ import annotations

from typing import Any

import pytest

from shared.topology import DELIVERY_LIMIT, PARKED_DELIVERY_LIMIT, QueueRole, Topology


@pytest.fixture
def topo() -> Topology:
    return Topology("ns1")


def test_exchange_and_tracker_names_live_under_the_namespace(topo: Topology) -> None:
    assert topo.tasks_exchange == "ns1.tasks"
    assert topo.events_exchange == "ns1.events"
    assert topo.dead_exchange == "ns1.dead"
    assert topo.tracker_queue == "ns1.tracker"


def test_pool_and_parked_queue_names(topo: Topology) -> None:
    assert topo.pool_queue("child_bazi") == "ns1.pool.child_bazi"
    assert topo.parked_queue("ns1.pool.child") == "ns1.pool.child.parked"
    assert topo.parked_queue(topo.tracker_queue) == "ns1.tracker.parked"


def test_routing_keys_are_the_pool_and_the_event_name(topo: Topology) -> None:
    assert topo.task_routing_key("child") == "child"
    assert topo.event_routing_key("callback") == "callback"


def test_two_namespaces_share_no_name() -> None:
    a_ex, a_q = Topology("a").names(["child"])
    b_ex, b_q = Topology("b").names(["child"])
    assert not set(a_ex + a_q) & set(b_ex + b_q)


@pytest.mark.parametrize("pool", ["child", "child_bazi", "a.b:c-D9", "x", "p" * 64])
def test_valid_pool_names_are_accepted(topo: Topology, pool: str) -> None:
    assert topo.pool_queue(pool) == f"ns1.pool.{pool}"


@pytest.mark.parametrize(
    "pool",
    ["", "p" * 65, "my pool", " child", "child ", "a#", "#", "a*", "*", "a/b", "pööl", "a\tb"],
    ids=[
        "empty",
        "65-chars",
        "space",
        "leading-space",
        "trailing-space",
        "hash",
        "only-hash",
        "star",
        "only-star",
        "slash",
        "non-ascii",
        "tab",
    ],
)
def test_invalid_pool_names_raise_value_error(topo: Topology, pool: str) -> None:
    with pytest.raises(ValueError, match="invalid pool name"):
        topo.pool_queue(pool)


def test_pool_name_with_trailing_newline_is_rejected(topo: Topology) -> None:
    with pytest.raises(ValueError, match="invalid pool name"):
        topo.pool_queue("child\n")


def test_pool_queue_arguments_validate_the_pool_name(topo: Topology) -> None:
    with pytest.raises(ValueError):
        topo.pool_queue_arguments("bad#pool")


def test_work_queue_arguments(topo: Topology) -> None:
    args = topo.work_queue_arguments("ns1.pool.child")
    assert args == {
        "x-queue-type": "quorum",
        "x-dead-letter-exchange": "ns1.dead",
        "x-dead-letter-routing-key": "ns1.pool.child.parked",
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
        "x-delivery-limit": DELIVERY_LIMIT,
    }
    assert DELIVERY_LIMIT > 1


def test_work_queue_arguments_accept_extras(topo: Topology) -> None:
    args = topo.work_queue_arguments("q", **{"x-foo": 1})
    assert args["x-foo"] == 1
    assert args["x-queue-type"] == "quorum"


def test_pool_queue_arguments_dead_letter_to_the_pools_parked_queue(topo: Topology) -> None:
    args = topo.pool_queue_arguments("child")
    assert args["x-dead-letter-routing-key"] == "ns1.pool.child.parked"
    assert args["x-dead-letter-exchange"] == topo.dead_exchange
    assert "x-single-active-consumer" not in args


def test_tracker_queue_arguments_add_single_active_consumer(topo: Topology) -> None:
    args = topo.tracker_queue_arguments()
    assert args["x-single-active-consumer"] is True
    assert args["x-dead-letter-routing-key"] == "ns1.tracker.parked"
    assert args["x-queue-type"] == "quorum"
    assert args["x-dead-letter-strategy"] == "at-least-once"
    assert args["x-overflow"] == "reject-publish"


def test_parked_queues_are_quorum_queues_that_survive_many_listings(topo: Topology) -> None:
    # RabbitMQ 4 drops a quorum queue's message after 20 returns unless the limit is set.
    assert topo.parked_queue_arguments() == {
        "x-queue-type": "quorum",
        "x-delivery-limit": PARKED_DELIVERY_LIMIT,
    }
    assert PARKED_DELIVERY_LIMIT >= 100_000


def test_delay_queues_wait_then_dead_letter_back_to_the_pool(topo: Topology) -> None:
    assert topo.delay_queue("child", 4000) == "ns1.pool.child.delay.4000"
    args = topo.delay_queue_arguments("child", 4000)
    assert args["x-queue-type"] == "quorum"
    assert args["x-message-ttl"] == 4000
    assert args["x-dead-letter-exchange"] == "ns1.tasks"
    assert args["x-dead-letter-routing-key"] == "child"
    assert args["x-dead-letter-strategy"] == "at-least-once"
    assert args["x-overflow"] == "reject-publish"
    # Idle long after its last message left: it can go.
    assert args["x-expires"] >= 4000 + 60_000


def test_the_tracker_hears_of_pool_parkings_but_not_its_own(topo: Topology) -> None:
    pattern = topo.parked_pools_pattern
    assert pattern == "ns1.pool.#"
    parked_pool = topo.parked_queue(topo.pool_queue("child.bazi"))
    assert parked_pool.startswith(pattern[:-1])
    assert not topo.parked_queue(topo.tracker_queue).startswith(pattern[:-1])


def _all_arguments(topo: Topology) -> list[dict[str, Any]]:
    return [
        topo.tracker_queue_arguments(),
        topo.pool_queue_arguments("child"),
        topo.work_queue_arguments("anything"),
        topo.parked_queue_arguments(),
        topo.delay_queue_arguments("child", 1000),
    ]


def test_no_priority_argument_anywhere(topo: Topology) -> None:
    """Quorum queues on RabbitMQ 3.10 refuse x-max-priority."""
    for args in _all_arguments(topo):
        assert "x-max-priority" not in args
        assert args["x-queue-type"] == "quorum"


def test_names_lists_what_cleanup_deletes(topo: Topology) -> None:
    exchanges, queues = topo.names(["child", "child_bazi"])
    assert exchanges == ["ns1.tasks", "ns1.events", "ns1.dead", "ns1.tasks.high", "ns1.committed"]
    assert queues == [
        "ns1.tracker",
        "ns1.tracker.parked",
        "ns1.pool.child",
        "ns1.pool.child.parked",
        "ns1.high.child",
        "ns1.pool.child_bazi",
        "ns1.pool.child_bazi.parked",
        "ns1.high.child_bazi",
    ]


def test_names_without_pools_still_lists_the_core(topo: Topology) -> None:
    exchanges, queues = topo.names([])
    assert len(exchanges) == 5
    assert queues == ["ns1.tracker", "ns1.tracker.parked"]


def test_every_name_starts_with_the_namespace(topo: Topology) -> None:
    exchanges, queues = topo.names(["child"])
    assert all(name.startswith("ns1.") for name in exchanges + queues)


@pytest.mark.parametrize("name", ["x.parked", "parked", "a.delay.100", "delay", "a.parked.b"])
def test_names_of_a_pools_own_queues_are_not_pools(topo: Topology, name: str) -> None:
    assert not Topology.is_pool_name(name)
    with pytest.raises(ValueError):
        topo.pool_queue(name)


@pytest.mark.parametrize("name", ["parkedx", "delayed", "my.pool", "child_bazi", "a:b-c"])
def test_words_that_only_look_alike_are_pools(name: str) -> None:
    assert Topology.is_pool_name(name)


def test_a_task_for_a_reserved_name_is_refused_at_the_api() -> None:
    from pydantic import ValidationError

    from shared.schemas import SendRequest

    with pytest.raises(ValidationError, match="pool name"):
        SendRequest.model_validate({"from": "m", "to": "child.parked", "type": "task"})
    # A message to such a name is fine: it is no pool.
    SendRequest.model_validate({"from": "m", "to": "child.parked", "type": "message"})


def test_a_pools_high_queue_and_its_delay_queues_are_told_apart(topo: Topology) -> None:
    assert topo.high_queue("a.b") == "ns1.high.a.b"
    assert topo.classify("ns1.high.a.b") == QueueRole("high", "a.b")
    assert topo.delay_queue("a.b", 500, "high") == "ns1.high.a.b.delay.500"
    assert topo.classify("ns1.high.a.b.delay.500") == QueueRole("high_delay", "a.b", 500)
    assert topo.delay_queue_arguments("a.b", 500, "high")["x-dead-letter-exchange"] == (
        "ns1.tasks.high"
    )
    assert topo.high_queue_arguments("a.b")["x-dead-letter-routing-key"] == ("ns1.pool.a.b.parked")
