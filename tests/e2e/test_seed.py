"""The seed README's own curl commands, as written, against `convbus up` in dev mode."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time

import pytest

from tests.support.bus import Bus, http_ready, wait_for

SEED_KEY = "lynker_relay_secret_2025"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.parametrize("database_url", ["sqlite"], indirect=True),
    pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed"),
]


def curl(*args: str) -> str:
    done = subprocess.run(["curl", "-s", *args], capture_output=True, timeout=30, check=True)
    return done.stdout.decode()


def test_seed_curl_commands_work_against_convbus_up(bus: Bus) -> None:
    env = bus.env(RELAY_DEV_MODE="true", RELAY_API_KEY="")
    up = bus.start("up", "up", "--port", str(bus.api_port), **env)
    bus.namespace.pools.add("child")
    base = f"http://localhost:{bus.api_port}"
    wait_for(lambda: http_ready(bus.api, up), timeout=30, what="convbus up")

    # 发送任务 (the seed's send, verbatim but for the port)
    sent = json.loads(
        curl(
            "-X", "POST", f"{base}/api/relay/send",
            "-H", f"X-Relay-API-Key: {SEED_KEY}",
            "-H", "Content-Type: application/json",
            "-d", '{"from":"master","to":"child","type":"task","cmd":"test"}',
        )
    )  # fmt: skip
    assert sent["status"] == "ok" and sent["task_id"].startswith("t_")

    # 查询状态
    state = json.loads(curl(f"{base}/api/relay/task-status/{sent['task_id']}"))
    assert state["status"] == "ok" and state["task_status"] in (
        "pending",
        "processing",
        "completed",
    )

    # 并发测试: 10 concurrent sends, with curl's default (form) content type as in the seed
    procs = [
        subprocess.Popen(
            [
                "curl", "-s", "-X", "POST", f"{base}/api/relay/send",
                "-H", f"X-Relay-API-Key: {SEED_KEY}",
                "-d", f'{{"from":"master","to":"child","type":"task","cmd":"test_{i}"}}',
            ],
            stdout=subprocess.PIPE,
        )
        for i in range(1, 11)
    ]  # fmt: skip
    answers = [json.loads(p.communicate(timeout=30)[0]) for p in procs]
    ids = {a["task_id"] for a in answers}
    assert all(a["status"] == "ok" for a in answers) and len(ids) == 10

    def all_completed() -> bool:
        return all(
            json.loads(curl(f"{base}/api/relay/task-status/{t}"))["task_status"] == "completed"
            for t in [*ids, sent["task_id"]]
        )

    wait_for(all_completed, timeout=30, what="the 11 tasks to complete")

    # 查询日志
    logs = json.loads(curl(f"{base}/api/relay/logs?limit=10"))
    assert logs["status"] == "ok" and len(logs["logs"]) == 10
    assert [e["id"] for e in logs["logs"]] == sorted(e["id"] for e in logs["logs"])

    # Ctrl-C stops everything cleanly.
    started = time.monotonic()
    up.popen.send_signal(signal.SIGINT)
    assert up.popen.wait(30) == 0
    assert time.monotonic() - started < 30
    assert "Traceback" not in up.output()


def test_up_refuses_to_start_without_a_key_outside_dev_mode(bus: Bus) -> None:
    env = bus.env(RELAY_DEV_MODE="false", RELAY_API_KEY="")
    up = bus.start("up", "up", "--port", str(bus.api_port), **env)
    assert up.popen.wait(30) != 0
    assert "RELAY_API_KEY is not set" in up.output()
