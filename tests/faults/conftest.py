"""Fixtures of the fault tests: private RabbitMQ and PostgreSQL servers they may kill and restart,
and a bus on each. The servers themselves are in tests/support/servers.py."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.bus import Bus, Namespace, migrated, running
from tests.support.servers import PrivatePostgres, PrivateRabbit, RabbitCluster


@pytest.fixture(params=[False], ids=["plain"])
def private_rabbit(request: pytest.FixtureRequest) -> Iterator[PrivateRabbit]:
    # The parameter: `tls` (a bool), or the keyword arguments of PrivateRabbit.create.
    options = request.param if isinstance(request.param, dict) else {"tls": request.param}
    node = PrivateRabbit.create(**options)
    node.start()
    try:
        yield node
    finally:
        node.stop()
        shutil.rmtree(node.root, ignore_errors=True)


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    server = PrivatePostgres.create()
    server.start()
    try:
        yield server
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            server.stop()
        shutil.rmtree(server.root, ignore_errors=True)


@pytest.fixture
def rabbit_bus(private_rabbit: PrivateRabbit, tmp_path: Path) -> Iterator[Bus]:
    """A bus on the private broker (SQLite), so the broker can be killed under it."""
    namespace = Namespace(name=f"f{uuid.uuid4().hex[:10]}", amqp_url=private_rabbit.url)
    database_url = migrated(f"sqlite:///{tmp_path / 'bus.db'}")
    with running(Bus(namespace=namespace, database_url=database_url, workdir=tmp_path)) as bus:
        yield bus


@pytest.fixture
def postgres_bus(
    private_postgres: PrivatePostgres, namespace: Namespace, tmp_path: Path
) -> Iterator[Bus]:
    """A bus whose tracker writes to the private PostgreSQL, so it can be stopped under it."""
    database_url = migrated(private_postgres.url)
    with running(Bus(namespace=namespace, database_url=database_url, workdir=tmp_path)) as bus:
        yield bus


@pytest.fixture
def rabbit_cluster() -> Iterator[RabbitCluster]:
    cluster = RabbitCluster.create()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop_all()


@pytest.fixture
def cluster_bus(rabbit_cluster: RabbitCluster, tmp_path: Path) -> Iterator[Bus]:
    """A bus whose services name the cluster's three nodes (SQLite)."""
    namespace = Namespace(name=f"c{uuid.uuid4().hex[:10]}", amqp_url=rabbit_cluster.nodes[0].url)
    database_url = migrated(f"sqlite:///{tmp_path / 'bus.db'}")
    bus = Bus(namespace=namespace, database_url=database_url, workdir=tmp_path)
    with running(bus) as bus:
        yield bus
