"""docker-compose.yml's bus services run here as processes, since this machine has no Docker.

Each runs its compose command with its compose environment (interpolated with .env.example's
values), where only the broker, the database, the namespace and the ports are this machine's:
the migration's exit, the health checks' own commands, a task through the seed's dev key, the
JSON logs and a stop within the compose file's grace period are what compose relies on.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

from cli.processes import free_port
from shared.settings import SEED_DEV_API_KEY
from tests.support.api import status
from tests.support.bus import Bus, Namespace, Proc, running, wait_for
from tests.support.compose_config import COMPOSE, command_of, compose_config, env_example

pytestmark = pytest.mark.parametrize("empty_database_url", ["postgresql"], indirect=True)


@pytest.fixture
def bus(namespace: Namespace, empty_database_url: str, tmp_path: Path) -> Iterator[Bus]:
    """Processes in the test's namespace, on a database without any schema yet."""
    with running(Bus(namespace=namespace, database_url=empty_database_url, workdir=tmp_path)) as b:
        yield b


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    config: dict[str, Any] = compose_config([COMPOSE], env_example())["services"]
    return config


def start(bus: Bus, name: str, service: dict[str, Any], ops_port: int = 0) -> Proc:
    """The service's compose command and environment, on this machine's broker and database."""
    args = command_of(service)[1:]
    if "--port" in args:
        args[args.index("--port") + 1] = str(bus.api_port)
    env = {
        key: "" if value is None else str(value) for key, value in service["environment"].items()
    }
    env.update(
        RELAY_AMQP_URL=bus.namespace.amqp_url,
        RELAY_DATABASE_URL=bus.database_url,
        RELAY_NAMESPACE=bus.namespace.name,
        # The shared broker here has no management plugin; nothing but `overview` reads it.
        RELAY_MANAGEMENT_URL="",
    )
    if "RELAY_OPS_PORT" in env:
        env["RELAY_OPS_PORT"] = str(ops_port)
    if "LYNKER_API_BASE" in env:
        env["LYNKER_API_BASE"] = bus.api
    if "RELAY_STATE_DIR" in env:
        env["RELAY_STATE_DIR"] = str(bus.workdir / f"state-{name}")
    # Nothing of this machine's RELAY_* settings: exactly what compose passes.
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("RELAY_", "LYNKER_"))}
    log = bus.workdir / f"{name}.log"
    # The log on stderr; stdout is a command's answer (migrate prints the revision).
    with log.open("wb") as err, (bus.workdir / f"{name}.out").open("wb") as out:
        popen = subprocess.Popen(
            [sys.executable, "-m", "cli", *args],
            env={**clean, **env},
            stdout=out,
            stderr=err,
            cwd=bus.workdir,
        )
    proc = Proc(name, popen, log, ops_port or bus.api_port)
    bus.procs.append(proc)
    return proc


def health_check(service: dict[str, Any], port: int) -> bool:
    """The service's compose health check, run here against `port`."""
    test = service["healthcheck"]["test"]
    url = urlsplit(test[-1])
    local = urlunsplit(url._replace(netloc=f"127.0.0.1:{port}"))
    done = subprocess.run(
        [sys.executable, *test[2:-1], local], capture_output=True, timeout=30, check=False
    )
    return done.returncode == 0


def test_the_compose_services_migrate_start_pass_their_checks_and_carry_a_task(
    bus: Bus, services: dict[str, Any]
) -> None:
    # The one-shot migration exits 0, and again on the next `docker compose up`.
    for run in ("migrate", "migrate-again"):
        migrate = start(bus, run, services["migrate"])
        assert migrate.popen.wait(60) == 0, migrate.output()
        answer = (bus.workdir / f"{run}.out").read_text()
        assert answer.startswith("database schema at revision"), answer

    tracker = start(bus, "tracker", services["tracker"], free_port())
    api = start(bus, "api", services["api"])
    children = [start(bus, f"child-{n}", services["child"], free_port()) for n in (1, 2)]
    for proc in (tracker, api, *children):
        service = services[proc.name.split("-")[0]]
        wait_for(
            lambda s=service, p=proc: p.popen.poll() is None and health_check(s, p.port),
            timeout=60,
            what=f"{proc.name}'s compose health check",
        )

    # Dev mode from .env.example: no key configured, the seed's published key works.
    task = {"from": "master", "to": "child", "type": "task", "cmd": "test"}
    sent = httpx.post(
        f"{bus.api}/api/relay/send", json=task, headers={"X-Relay-API-Key": SEED_DEV_API_KEY}
    )
    assert sent.status_code == 200, sent.text
    task_id = sent.json()["task_id"]

    wait_for(lambda: status(bus, task_id) == "completed", timeout=30, what="the task to finish")

    # Each process stops within the compose file's stop_grace_period (child 40 s, others 15 s).
    for proc in (*children, api, tracker):
        # uvicorn ends by re-raising the SIGTERM it handled (exit 143 in a container).
        assert proc.stop(timeout=15) in (0, -signal.SIGTERM), proc.output()[-3000:]
    for proc in bus.procs:
        lines = [line for line in proc.output().splitlines() if line.strip()]
        assert lines or proc.name.startswith("migrate"), f"{proc.name} logged nothing"
        for line in lines:
            record = json.loads(line)  # RELAY_LOG_FORMAT=json: one JSON object a line
            assert isinstance(record, dict) and "msg" in record, (proc.name, line)
