"""The callback endpoint failing, and a child killed between its callback and its ack."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from shared.contract import CALLBACK_PATH, CALLBACKS_PATH
from tests.support.api import finished, logs, record, send_task
from tests.support.bus import Bus, wait_for
from tests.support.callback_proxy import callback_proxy
from tests.support.ledger import assert_exactly_once, ledger

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

HANDLERS = ("--handlers", "bus_handlers:handlers")


def test_callbacks_failing_for_a_while_are_retried_until_they_go_through(bus: Bus) -> None:
    bus.start_tracker()
    bus.start_api()
    with callback_proxy(bus.api) as proxy:
        proxy.mode = "fail"
        bus.start_child(
            "child", *HANDLERS, LYNKER_API_BASE=proxy.url, RELAY_CALLBACK_BACKOFF="0.1",
            RELAY_RETRY='{"default": {"max_retries": 8, "backoff": 0.5, "factor": 1.5}}',
        )  # fmt: skip
        ids = [send_task(bus, "echo") for _ in range(10)]

        def every_task_retried() -> bool:
            _, counts = ledger(bus.database_url)
            return all(counts.get((t, "retry"), 0) >= 1 for t in ids)

        # Fail until every task has gone through the retry queue at least once.
        wait_for(every_task_retried, timeout=60, what="every task to be retried")
        proxy.mode = "pass"
        assert_exactly_once(bus.database_url, ids)


def test_a_callback_that_never_succeeds_parks_the_task_and_replay_completes_it(bus: Bus) -> None:
    bus.start_tracker()
    bus.start_api()
    count = bus.workdir / "runs.count"
    with callback_proxy(bus.api) as proxy:
        proxy.mode = "fail"
        bus.start_child(
            "child", *HANDLERS, LYNKER_API_BASE=proxy.url, RELAY_CALLBACK_BACKOFF="0.05"
        )
        task_id = send_task(bus, "flaky", payload={"counter": str(count), "fail_times": 0})
        failed = wait_for(lambda: finished(bus, task_id), timeout=60)
        assert failed["task_status"] == "failed" and "retries exhausted" in failed["error"]
        proxy.mode = "pass"
        replay = subprocess.run(
            [sys.executable, "-m", "cli", "dlq", "replay", task_id],
            env=bus.env(), capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert replay.returncode == 0, replay.stderr
        wait_for(lambda: record(bus, task_id)["task_status"] == "completed", timeout=60)
    assert_exactly_once(bus.database_url, [task_id])
    assert int(count.read_text()) == 1  # the handler ran once; only its callback was retried


#: The child's two ways of calling back: batched (its default) and alone (the seed's).
BOTH_WAYS = pytest.mark.parametrize("batched", ["true", "false"], ids=["batched", "alone"])
CALLBACK_PATHS = {"true": CALLBACKS_PATH, "false": CALLBACK_PATH}


@BOTH_WAYS
def test_a_child_killed_after_its_callback_before_its_ack_does_not_run_it_again(
    bus: Bus, batched: str
) -> None:
    bus.start_tracker()
    bus.start_api()
    count = bus.workdir / "runs.count"
    with callback_proxy(bus.api) as proxy:
        proxy.mode = "hold"
        victim = bus.start_child(
            "child", *HANDLERS, LYNKER_API_BASE=proxy.url, RELAY_CALLBACK_BATCH=batched
        )
        task_id = send_task(bus, "flaky", payload={"counter": str(count), "fail_times": 0})
        assert proxy.held.wait(30), "the callback never reached the API"
        victim.popen.send_signal(signal.SIGKILL)  # the completion is on the bus, the ack is not
        victim.popen.wait(10)
        proxy.release.set()
        bus.start_child("child", *HANDLERS)
        assert_exactly_once(bus.database_url, [task_id])
        wait_for(lambda: bus.namespace.queue_depth(bus.namespace.topo.pool_queue("child")) == 0)
    assert int(count.read_text()) == 1
    assert proxy.forwarded_callbacks == 1
    assert proxy.callback_paths == [CALLBACK_PATHS[batched]]


@BOTH_WAYS
def test_a_child_killed_while_its_callback_is_on_the_way_leaves_the_task_to_the_next(
    bus: Bus, batched: str
) -> None:
    # The callback never reaches the API: only a child that acks after its callback answered
    # leaves the delivery to be redelivered. One that acked earlier (before the callback, or
    # while it was on the way) would lose the task here: it would never complete.
    bus.start_tracker()
    bus.start_api()
    count = bus.workdir / "runs.count"
    with callback_proxy(bus.api) as proxy:
        proxy.mode = "hold_before"
        victim = bus.start_child(
            "child", *HANDLERS, LYNKER_API_BASE=proxy.url, RELAY_CALLBACK_BATCH=batched
        )
        task_id = send_task(bus, "flaky", payload={"counter": str(count), "fail_times": 0})
        assert proxy.held.wait(30), "the child never called back"
        victim.popen.send_signal(signal.SIGKILL)
        victim.popen.wait(10)
        proxy.release.set()  # the callback is dropped: the API never saw it
        wait_for(lambda: proxy.dropped_callbacks == 1, what="the callback to be dropped")
        assert record(bus, task_id)["task_status"] != "completed"
        bus.start_child("child", *HANDLERS)
        assert_exactly_once(bus.database_url, [task_id])
    assert proxy.forwarded_callbacks == 0
    assert proxy.callback_paths == [CALLBACK_PATHS[batched]]
    # The next child found the outcome the first one recorded before calling back.
    assert int(count.read_text()) == 1


def test_the_api_killed_while_batches_of_callbacks_are_out_loses_nothing(bus: Bus) -> None:
    # Batches in flight when the API dies: some of their events may be published, none
    # answered. Each callback is sent again and recorded once; no task is acked unanswered.
    bus.start_tracker()
    api = bus.start_api()
    bus.start_child("child", *HANDLERS, RELAY_CALLBACK_BACKOFF="0.2")
    counters = [bus.workdir / f"runs-{n}.count" for n in range(150)]
    ids = [
        send_task(bus, "counted_nap", payload={"counter": str(c), "seconds": 1.5}) for c in counters
    ]
    wait_for(lambda: len(logs(bus, event="callback")) >= 5, what="the first callbacks")
    through = len(logs(bus, event="callback", limit=1000))
    api.popen.send_signal(signal.SIGKILL)
    api.popen.wait(10)
    bus.start_api()
    assert_exactly_once(bus.database_url, ids)
    assert [int(c.read_text()) for c in counters] == [1] * len(counters)  # each handler ran once
    assert through < len(ids)  # the kill came while callbacks were still to come
