"""A second namespace's services on a database the first one's bus records: they refuse to start
(two buses would mix their tasks and logs), saying how to give it a database of its own."""

from __future__ import annotations

import pytest

from tests.support.api import finished, send_task
from tests.support.bus import Bus, wait_for


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_another_namespace_is_refused_by_a_claimed_database(bus: Bus) -> None:
    bus.start_all()
    wait_for(lambda: finished(bus, send_task(bus, "echo")), what="the first bus to work")
    for command in (("tracker",), ("api", "--port", "0")):
        intruder = bus.start(f"{command[0]}-other", *command, RELAY_NAMESPACE="other")
        wait_for(lambda p=intruder: not p.running, timeout=60, what=f"{command[0]} to exit")
        assert intruder.popen.returncode != 0
        assert "records the bus of namespace" in intruder.output(), intruder.output()[-2000:]
