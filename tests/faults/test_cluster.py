"""A three-node RabbitMQ cluster under a working bus: the node leading the pool's and the
tracker's quorum queues stopped and brought back, then another node killed hard."""

from __future__ import annotations

import time

import pytest

from tests.support.api import send
from tests.support.bus import Bus, wait_for
from tests.support.ledger import assert_exactly_once
from tests.support.load import Load
from tests.support.servers import PrivateRabbit, RabbitCluster

pytestmark = pytest.mark.slow


def outage(cluster: RabbitCluster, load: Load, node: PrivateRabbit, *, kill: bool) -> float:
    """Take `node` down under the load until sends are accepted again, then bring it back; the
    seconds sends were refused."""
    started = time.monotonic()
    node.kill() if kill else node.stop()
    wait_for(lambda: load.accepted_since(started) >= 20 and load.answers[-1][1],
             timeout=90, what="sends accepted again")  # fmt: skip
    refused = load.refused_for(started, time.monotonic())
    cluster.restart(node)
    return refused


def test_the_bus_rides_out_a_leader_node_stopped_and_another_killed(
    cluster_bus: Bus, rabbit_cluster: RabbitCluster
) -> None:
    bus, cluster = cluster_bus, rabbit_cluster
    env = {"RELAY_AMQP_URL": cluster.url, "RELAY_HEARTBEAT": "2", "RELAY_PUBLISH_TIMEOUT": "3"}
    bus.start_tracker(**env)
    bus.start_child("child", **env)
    bus.start_api(**env)
    first = send(bus, type="task", cmd="echo")  # the pool's queue is declared
    assert first.status_code == 200
    topo = bus.namespace.topo
    leader = cluster.leader(topo.pool_queue("child"), cluster.nodes[1])
    # Every service connected to the first node, which declared the queues: it leads them.
    assert leader is cluster.leader(topo.tracker_queue, cluster.nodes[1]) is cluster.nodes[0]
    with Load(bus) as load:
        wait_for(lambda: len(load.accepted) >= 20, what="the load to run")
        stopped = outage(cluster, load, leader, kill=False)
        other = next(n for n in cluster.nodes if n is not leader)
        killed = outage(cluster, load, other, kill=True)
        back = time.monotonic()
        wait_for(lambda: load.accepted_since(back) >= 20, what="the load again")
    print(f"sends refused: {stopped:.1f} s with the leader stopped, {killed:.1f} s killed")
    assert_exactly_once(bus.database_url, [first.json()["task_id"], *load.accepted], timeout=120)
    assert all(p.popen.poll() is None for p in bus.procs)  # nobody had to be restarted
