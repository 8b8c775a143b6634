"""The services reach RabbitMQ over TLS (amqps://) with the credentials in RELAY_AMQP_URL."""

from __future__ import annotations

import pytest

from tests.support.api import finished, send_task
from tests.support.bus import Bus, wait_for
from tests.support.servers import PrivateRabbit

pytestmark = pytest.mark.parametrize("private_rabbit", [True], ids=["tls"], indirect=True)


def test_the_bus_runs_over_amqps(rabbit_bus: Bus, private_rabbit: PrivateRabbit) -> None:
    bus = rabbit_bus
    tls = private_rabbit.tls_url
    bus.start_all(RELAY_AMQP_URL=tls)
    task_id = send_task(bus, "verify_chart", payload={"user_id": "u1"})
    done = wait_for(lambda: finished(bus, task_id), what="the task over TLS")
    assert done["task_status"] == "completed"
    # Only the TLS URL was given to the services; the password never reaches their logs.
    assert all("guest:guest" not in p.output() for p in bus.procs)
