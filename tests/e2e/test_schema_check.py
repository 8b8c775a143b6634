"""The tracker and the API refuse a database whose schema is not at this release's revision."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from cli.processes import free_port
from shared.db import migration_engine
from shared.migrate import head
from tests.support.bus import Bus, Namespace, http_ready, running, wait_for


@pytest.fixture
def bare_bus(namespace: Namespace, empty_database_url: str, tmp_path: Path) -> Iterator[Bus]:
    """The bus's processes on a database nobody migrated."""
    with running(Bus(namespace=namespace, database_url=empty_database_url, workdir=tmp_path)) as b:
        yield b


@pytest.mark.parametrize("service", ["tracker", "api"])
def test_a_service_refuses_an_unmigrated_database(bare_bus: Bus, service: str) -> None:
    args = ["api", "--port", str(bare_bus.api_port)] if service == "api" else ["tracker"]
    proc = bare_bus.start(service, *args)
    wait_for(lambda: proc.popen.poll() is not None, timeout=60, what=f"the {service} to exit")
    assert proc.popen.returncode != 0
    expected = f"has no convbus schema, this release needs {head()}: run `convbus migrate`"
    assert expected in proc.output()


def test_the_tracker_waits_for_an_unreachable_database(
    namespace: Namespace, tmp_path: Path
) -> None:
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere"
    with running(Bus(namespace=namespace, database_url=url, workdir=tmp_path)) as bus:
        proc = bus.start_tracker(RELAY_DB_RETRY="0.1")
        wait_for(
            lambda: proc.output().count("database not ready") >= 3,
            timeout=60,
            what="the tracker to retry the database",
        )
        assert proc.popen.poll() is None
        assert proc.stop() == 0


def test_the_api_starts_without_its_database(namespace: Namespace, tmp_path: Path) -> None:
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere"
    with running(Bus(namespace=namespace, database_url=url, workdir=tmp_path)) as bus:
        proc = bus.start("api", "api", "--port", str(bus.api_port))
        wait_for(lambda: http_ready(bus.api, proc, "/healthz"), timeout=60, what="the API")
        assert httpx.get(f"{bus.api}/readyz", timeout=5).status_code == 503
        assert "database not reachable at start" in proc.output()


@pytest.mark.slow
@pytest.mark.parametrize("empty_database_url", ["sqlite"], indirect=True)
def _free_run(count: int) -> int:
    """The first of `count` consecutive free ports (convbus up gives its children the ports
    after the tracker's: one of those taken made the child exit, in CI)."""
    while True:
        first = free_port()
        others = range(first + 1, first + count)
        if all(_bindable(port) for port in others):
            return first


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_convbus_up_migrates_a_fresh_database(bare_bus: Bus) -> None:
    ops_port = str(_free_run(3))  # the tracker, the child, the webhooks worker
    up = bare_bus.start(
        "up", "up", "--port", str(bare_bus.api_port), RELAY_DEV_MODE="true", RELAY_OPS_PORT=ops_port
    )
    bare_bus.namespace.pools.add("child")
    wait_for(lambda: http_ready(bare_bus.api, up), timeout=60, what="convbus up")
    engine = migration_engine(bare_bus.database_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == head()
    finally:
        engine.dispose()
