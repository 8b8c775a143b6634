"""A newcomer's first errors: every subcommand that cannot start says why in one line,
`convbus <command>: …`, and exits non-zero; with the broker down, one log line per retry."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from cli.main import main
from cli.processes import CONVBUS, free_port


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No RELAY_* variable of the machine leaks in; a database of this test's own."""
    for name in list(os.environ):
        if name.upper().startswith(("RELAY_", "LYNKER_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("RELAY_DATABASE_URL", f"sqlite:///{tmp_path / 'bus.db'}")
    monkeypatch.setenv("RELAY_OPS_PORT", "0")


@pytest.mark.parametrize(
    ("argv", "env", "said"),
    [
        (["up"], {}, "convbus up: RELAY_API_KEY is not set."),
        (["api"], {}, "convbus api: RELAY_API_KEY is not set."),
        (["child", "--pool", "child"], {}, "convbus child: RELAY_API_KEY is not set."),
        (["bench", "-n", "1"], {}, "convbus bench: RELAY_API_KEY is not set."),
        (["child", "--pool", "a.parked"], {"RELAY_DEV_MODE": "true"},
         "convbus child: --pool 'a.parked': not a valid pool name"),
        (["child", "--pool", "c", "--handlers", "nowhere_at_all:x"], {"RELAY_DEV_MODE": "true"},
         "convbus child: --handlers 'nowhere_at_all:x': cannot import nowhere_at_all"),
        (["api"], {"RELAY_DEV_MODE": "true", "RELAY_PORT": "abc"},
         "convbus api: invalid settings: RELAY_PORT: Input should be a valid integer"),
        (["tracker"], {"RELAY_BATCH_SIZE": "0"},
         "convbus tracker: invalid settings: RELAY_BATCH_SIZE: Input should be greater than"),
        (["child", "--pool", "c"],
         {"RELAY_DEV_MODE": "true", "RELAY_CONCURRENCY": "100", "RELAY_PREFETCH": "32"},
         "convbus child: invalid settings: RELAY_PREFETCH=32 would hold the child to 32"),
        (["child", "--pool", "c", "--concurrency", "0"], {"RELAY_DEV_MODE": "true"},
         "convbus child: error: argument --concurrency: '0': give a whole number of at least 1"),
        (["bench", "--sync"], {"RELAY_DEV_MODE": "true"},
         "convbus bench: --sync needs --handler-ms"),
        (["bench", "--cmd", "x", "--handler-ms", "10"], {"RELAY_DEV_MODE": "true"},
         "convbus bench: give --cmd or --handler-ms, not both"),
        (["migrate"], {"RELAY_DATABASE_URL": "mysql://db/bus"},
         "convbus migrate: RELAY_DATABASE_URL: unsupported database 'mysql'"),
        (["dlq", "list", "--pool", "child"],
         {"RELAY_AMQP_URL": f"amqp://guest:guest@127.0.0.1:{free_port()}/"},
         "convbus dlq: cannot connect to RabbitMQ at"),
    ],
)  # fmt: skip
def test_a_command_that_cannot_start_says_why_in_one_line(
    argv: list[str],
    env: dict[str, str],
    said: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code not in (0, None)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("convbus ")]
    assert lines == [lines[0]] and lines[0].startswith(said), err
    assert "Traceback" not in err


def test_with_the_broker_down_each_retry_is_one_log_line(tmp_path: Path) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("RELAY_", "LYNKER_"))},
        "RELAY_DATABASE_URL": f"sqlite:///{tmp_path / 'bus.db'}",
        "RELAY_AMQP_URL": f"amqp://guest:guest@127.0.0.1:{free_port()}/",
        "RELAY_OPS_PORT": "0",
    }
    subprocess.run([*CONVBUS, "migrate"], env=env, check=True, capture_output=True, timeout=60)
    log = tmp_path / "tracker.log"
    with log.open("wb") as out:
        tracker = subprocess.Popen([*CONVBUS, "tracker"], env=env, stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 30
        while log.read_text().count("RabbitMQ unreachable") < 2:  # attempts 1 and 2, ~1 s apart
            assert tracker.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
    finally:
        tracker.send_signal(signal.SIGTERM)
        tracker.wait(20)
    lines = log.read_text().splitlines()
    refused = [line for line in lines if "Connection refused" in line or "refused" in line]
    retries = [line for line in lines if "RabbitMQ unreachable (attempt" in line]
    assert refused == retries, "\n".join(lines)
    assert not any(line.startswith("Traceback") for line in lines)
