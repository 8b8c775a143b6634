"""A bus of its own on this machine for `make bench`: a fresh namespace and database, the
services as processes (cli/processes.py), and the cleanup of all of it."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pika
import psycopg

from cli.processes import CONVBUS, BusProcess, free_port, stop_all
from services.child.schedule import STEPS_MS
from shared.retry import RetryPolicies
from shared.topology import Topology

POOL = "child"
#: The handlers `convbus bench --handler-ms` asks for, beside the built-in echo.
BENCH_HANDLERS = "cli.bench.handlers:registry"
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 40.0  # more than a child's shutdown grace (30 s)


@dataclass
class LocalBus:
    """A namespace, a database and the bus's processes on this machine, and their cleanup."""

    amqp_url: str
    pg_admin_url: str | None  # None: SQLite
    workdir: Path
    namespace: str = field(default_factory=lambda: f"bench{uuid.uuid4().hex[:10]}")
    key: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    api_port: int = field(default_factory=free_port)
    database: str | None = None
    procs: list[BusProcess] = field(default_factory=list)

    def database_url(self) -> str:
        if self.pg_admin_url is None:
            return f"sqlite:///{self.workdir / 'bus.db'}"
        return f"{self.pg_admin_url.rsplit('/', 1)[0]}/{self.database}"

    def create_database(self) -> None:
        if self.pg_admin_url is None:
            return
        name = f"convbus_bench_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.pg_admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        self.database = name

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            RELAY_NAMESPACE=self.namespace,
            RELAY_AMQP_URL=self.amqp_url,
            RELAY_DATABASE_URL=self.database_url(),
            RELAY_API_KEY=self.key,
            LYNKER_API_BASE=f"http://127.0.0.1:{self.api_port}",  # where the children call back
            RELAY_DEV_MODE="false",
            RELAY_LOG_LEVEL="WARNING",
            RELAY_STATE_DIR=str(self.workdir / "child-state"),
            # The benchmark measures the bus, not the per-key limit on sends.
            RELAY_SEND_RATE="0",
        )
        env.update(extra)
        return env

    def migrate(self) -> None:
        subprocess.run([*CONVBUS, "migrate"], env=self.env(), check=True, stdout=subprocess.DEVNULL)

    def start(self, name: str, *args: str, port: int | None = None) -> BusProcess:
        """Start `convbus ARGS`; its ops port (or the API's) is `port`, else a free one."""
        port = port or free_port()
        proc = BusProcess.start(
            name,
            args,
            self.env(RELAY_OPS_PORT=str(port)),
            log=self.workdir / f"{name}.log",
            port=port,
            own_session=True,
        )
        self.procs.append(proc)
        return proc

    def start_bus(self, children: int) -> BusProcess:
        """Tracker, children and API; returns the API once every process is ready."""
        self.start("tracker", "tracker")
        api = self.start("api", "api", "--port", str(self.api_port), port=self.api_port)
        for n in range(children):
            self.start(f"child-{n + 1}", "child", "--pool", POOL, "--handlers", BENCH_HANDLERS)
        for proc in self.procs:
            proc.wait_ready(READY_TIMEOUT)
        return api

    def check_alive(self) -> None:
        for proc in self.procs:
            if not proc.running:
                raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}")

    def stop(self) -> None:
        # The children first, while the API still takes their callbacks; the tracker last.
        for proc in reversed(self.procs):
            if stop_all([proc], STOP_TIMEOUT):
                print(f"bench: {proc.name} did not stop in time; killed", file=sys.stderr)

    def delete_namespace(self) -> None:
        topo = Topology(self.namespace)
        exchanges, queues = topo.names([POOL])
        policy = RetryPolicies().default
        retries = {policy.delay_ms(a) for a in range(1, policy.max_retries + 1)}
        # Every wait the child declares (Worker._declare_waits): retries and schedule steps,
        # normal and high.
        delays = sorted({*STEPS_MS, *(d for d in retries if d)})
        queues += [topo.delay_queue(POOL, d, p) for d in delays for p in (None, "high")]
        delete_queues(self.amqp_url, queues, exchanges)

    def drop_database(self) -> None:
        if self.pg_admin_url is None or self.database is None:
            return
        with psycopg.connect(self.pg_admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')


def delete_queues(amqp_url: str, queues: list[str], exchanges: list[str]) -> None:
    """Delete these queues and exchanges (those missing are no error)."""
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = connection.channel()
        for queue in queues:
            channel.queue_delete(queue)
        for exchange in exchanges:
            channel.exchange_delete(exchange)
    finally:
        connection.close()
