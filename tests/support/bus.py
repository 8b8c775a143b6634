"""The bus under test: a RabbitMQ namespace of one's own, the `convbus` processes, waiting."""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pika
import pytest

from cli.processes import BusProcess, free_port
from services.child.schedule import STEPS_MS
from shared.topology import Topology

API_KEY = "test-key-" + uuid.uuid4().hex
#: The tests' folder: on the PYTHONPATH of the processes, so that `bus_handlers` imports.
TESTS = Path(__file__).parents[1]
#: Retries in tests: the same shape as the default (exponential), in tenths of a second.
FAST_RETRY = '{"default": {"max_retries": 2, "backoff": 0.1, "factor": 2}}'


def unavailable(what: str, why: str) -> None:
    """Fail under CI (a missing service there is a broken CI), skip on a developer's machine."""
    message = f"{what} unavailable: {why}"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def migrated(database_url: str) -> str:
    """The database at `database_url`, with the schema migrated to head (as `convbus migrate`)."""
    from shared.migrate import migrate_blocking

    migrate_blocking(database_url)
    return database_url


@dataclass
class Namespace:
    """A RELAY_NAMESPACE of its own for one test; what it declared is deleted after."""

    name: str
    amqp_url: str
    #: Pools to delete; the API declares `child` for any task sent there, child or not.
    pools: set[str] = field(default_factory=lambda: {"child"})
    #: Delays (ms) of the retry queues the test may have made, and those of scheduled tasks
    #: (every child declares them).
    delays: set[int] = field(default_factory=lambda: set(STEPS_MS))

    def add_retry_policy(self, policy_json: str) -> None:
        from shared.retry import RetryPolicies

        policies = RetryPolicies.model_validate_json(policy_json)
        for policy in [policies.default, *policies.pools.values(), *policies.cmds.values()]:
            self.delays.update(
                d for a in range(1, policy.max_retries + 1) if (d := policy.delay_ms(a))
            )

    @property
    def topo(self) -> Topology:
        return Topology(self.name)

    def channel(self) -> Any:
        connection = pika.BlockingConnection(pika.URLParameters(self.amqp_url))
        return connection.channel()

    def queue_depth(self, queue: str) -> int:
        channel = self.channel()
        try:
            return int(channel.queue_declare(queue, passive=True).method.message_count)
        finally:
            channel.connection.close()

    def purge(self, queue: str) -> None:
        channel = self.channel()
        try:
            channel.queue_purge(queue)
        finally:
            channel.connection.close()

    def publish_raw(self, queue: str, body: bytes, **props: Any) -> None:
        """Put raw bytes straight into a queue (through the default exchange)."""
        channel = self.channel()
        try:
            channel.confirm_delivery()
            channel.basic_publish(
                "", queue, body, pika.BasicProperties(delivery_mode=2, **props), mandatory=True
            )
        finally:
            channel.connection.close()

    def delete(self) -> None:
        exchanges, queues = self.topo.names(sorted(self.pools))
        queues += [
            self.topo.delay_queue(p, d, priority)
            for p in self.pools
            for d in self.delays
            for priority in (None, "high")
        ]
        connection = pika.BlockingConnection(pika.URLParameters(self.amqp_url))
        try:
            channel = connection.channel()
            for queue in queues:
                channel.queue_delete(queue)
            for exchange in exchanges:
                channel.exchange_delete(exchange)
        finally:
            connection.close()


def wait_for(
    condition: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05, what: str = ""
) -> Any:
    """Poll `condition` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or condition}")
        time.sleep(interval)


#: A convbus process started by a test (its `port`: where it serves /readyz and /metrics).
Proc = BusProcess


@dataclass
class Bus:
    """Starts the real `convbus` processes of one test, all in its namespace."""

    namespace: Namespace
    database_url: str
    workdir: Path
    api_port: int = field(default_factory=free_port)
    procs: list[Proc] = field(default_factory=list)

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RELAY_", "LYNKER_"))}
        env.update(
            RELAY_NAMESPACE=self.namespace.name,
            RELAY_AMQP_URL=self.namespace.amqp_url,
            RELAY_DATABASE_URL=self.database_url,
            RELAY_API_KEY=API_KEY,
            LYNKER_API_BASE=self.api,
            RELAY_CALLBACK_BACKOFF="0.2",
            RELAY_RETRY=FAST_RETRY,
            RELAY_STATE_DIR=str(self.workdir / "child-state"),
            RELAY_BATCH_WAIT="0.01",
            PYTHONPATH=os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")]),
        )
        env.update(extra)
        return env

    def start(self, name: str, *args: str, **env: str) -> Proc:
        env.setdefault("RELAY_OPS_PORT", str(free_port()))
        proc = BusProcess.start(
            name,
            args,
            self.env(**env),
            log=self.workdir / f"{name}-{len(self.procs)}.log",
            port=int(env["RELAY_OPS_PORT"]),
            cwd=self.workdir,
        )
        self.procs.append(proc)
        return proc

    def start_api(self, **env: str) -> Proc:
        proc = self.start("api", "api", "--port", str(self.api_port), **env)
        wait_for(lambda: http_ready(self.api, proc), timeout=30, what="the API to serve")
        return proc

    def start_tracker(self, **env: str) -> Proc:
        return self.start("tracker", "tracker", **env)

    def start_child(self, pool: str = "child", *args: str, **env: str) -> Proc:
        self.namespace.pools.add(pool)
        self.namespace.add_retry_policy(self.env(**env)["RELAY_RETRY"])
        return self.start(f"child-{pool}", "child", "--pool", pool, *args, **env)

    def start_all(self, pool: str = "child", **env: str) -> None:
        self.start_tracker(**env)
        self.start_child(pool, "--handlers", "bus_handlers:handlers", **env)
        self.start_api(**env)

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()


def http_ready(base: str, proc: Proc, path: str = "/readyz") -> bool:
    """Whether `base + path` answers 200; fails at once if `proc` exited."""
    import httpx

    if not proc.running:
        raise AssertionError(f"{proc.name} exited early:\n{proc.output()[-3000:]}")
    try:
        return httpx.get(f"{base}{path}", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@contextlib.contextmanager
def running(instance: Bus) -> Iterator[Bus]:
    """Stop the bus's processes at the end and print their logs (pytest shows them on failure)."""
    try:
        yield instance
    finally:
        instance.stop_all()
        for proc in instance.procs:
            print(f"----- {proc.name} (exit {proc.popen.returncode}) -----")
            print(proc.output()[-4000:])
