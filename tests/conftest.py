"""Fixtures: the real RabbitMQ and databases, a namespace per test, and the bus's processes.

The helpers they use, and that tests import, are in tests/support.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pika
import psycopg
import pytest
import redis

from tests.support.bus import Bus, Namespace, migrated, running, unavailable

AMQP_URL = os.environ.get("RELAY_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
PG_ADMIN_URL = os.environ.get("RELAY_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("RELAY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def docker_available() -> bool:
    if shutil.which("docker") is None:
        return False
    probe = subprocess.run(["docker", "info"], capture_output=True, timeout=20, check=False)
    return probe.returncode == 0


def amqp_reachable(url: str) -> str | None:
    """None when RabbitMQ answers at `url`, else why not."""
    try:
        params = pika.URLParameters(url)
        params.socket_timeout = 3
        params.connection_attempts = 1
        pika.BlockingConnection(params).close()
    except Exception as exc:  # any failure means "not reachable" here
        return repr(exc)
    return None


@pytest.fixture(scope="session")
def amqp_url() -> Iterator[str]:
    """The broker: RELAY_TEST_AMQP_URL (default the local one), else a testcontainer."""
    why = amqp_reachable(AMQP_URL)
    if why is None:
        yield AMQP_URL
        return
    if docker_available():
        from testcontainers.rabbitmq import RabbitMqContainer

        with RabbitMqContainer("rabbitmq:4-management") as container:
            host = container.get_container_host_ip()
            port = container.get_exposed_port(5672)
            yield f"amqp://guest:guest@{host}:{port}/"
        return
    unavailable("RabbitMQ", f"{AMQP_URL}: {why}; and no Docker for testcontainers")


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    """A PostgreSQL superuser URL: RELAY_TEST_PG_URL (default local), else a testcontainer."""
    try:
        psycopg.connect(PG_ADMIN_URL, connect_timeout=3).close()
    except psycopg.Error as exc:
        if docker_available():
            from testcontainers.postgres import PostgresContainer

            with PostgresContainer("postgres:16", driver=None) as container:
                yield container.get_connection_url()
            return
        unavailable("PostgreSQL", f"{PG_ADMIN_URL}: {exc}; and no Docker for testcontainers")
    yield PG_ADMIN_URL


@pytest.fixture(scope="session")
def redis_url() -> str:
    """Redis, for the limits API replicas share: RELAY_TEST_REDIS_URL (default the local one)."""
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3).ping()
    except redis.RedisError as exc:
        unavailable("Redis", f"{REDIS_URL}: {exc!r}")
    return REDIS_URL


def _pg_database(admin_url: str) -> Iterator[str]:
    name = f"convbus_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = admin_url.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _fresh_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'bus.db'}"
        return
    yield from _pg_database(request.getfixturevalue("pg_admin_url"))


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh database per test without any schema, on SQLite and on PostgreSQL."""
    yield from _fresh_database(request, tmp_path)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh database per test, migrated, on SQLite and on PostgreSQL (created and dropped)."""
    for url in _fresh_database(request, tmp_path):
        yield migrated(url)


@pytest.fixture
def namespace(amqp_url: str) -> Iterator[Namespace]:
    ns = Namespace(name=f"t{uuid.uuid4().hex[:12]}", amqp_url=amqp_url)
    try:
        yield ns
    finally:
        ns.delete()


@pytest.fixture
def bus(namespace: Namespace, database_url: str, tmp_path: Path) -> Iterator[Bus]:
    """The bus's processes for one test, in its own namespace and database."""
    with running(Bus(namespace=namespace, database_url=database_url, workdir=tmp_path)) as b:
        yield b


#: The markers of every test under a folder of tests/, given here so that no test can lack them.
FOLDER_MARKERS = {
    "integration": ("integration",),
    "e2e": ("integration", "e2e"),
    "faults": ("integration", "faults"),
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Markers by folder: the tests under integration/, e2e/ and faults/ need the services
    (`make unit` skips them), those under e2e/ start the processes, and every test under faults/
    is a fault test (`-m faults`). tests/unit/test_unit_markers.py checks the outcome."""
    for item in items:
        path = str(item.path)
        for folder, markers in FOLDER_MARKERS.items():
            if f"{os.sep}{folder}{os.sep}" in path:
                for marker in markers:
                    item.add_marker(marker)
