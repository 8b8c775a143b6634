"""When a `scheduled` task next looks at its clock: the steps of its wait in RabbitMQ.

A task sent with a `not_before` ahead waits in the pool's delay queues (shared/topology.py),
which hold each message for a fixed time: one queue per length of wait. A child that receives
the task early sends it to wait again, for the longest step that ends before the task's time, so
that a handful of queues serve every wait, the last hop ends within STEPS_MS[0] after the time,
and the task never starts before it. A 30-day wait is about 740 hops, one an hour at first.
"""

from __future__ import annotations

#: The lengths of a wait's hops, shortest first: 250 ms, 1 s, 5 s, 30 s, 5 min, 1 h.
STEPS_MS = (250, 1_000, 5_000, 30_000, 300_000, 3_600_000)


def hop_ms(remaining_s: float) -> int:
    """The next hop of a wait with `remaining_s` seconds to go (above 0): the longest step that
    ends before then, or the shortest one (the task is then late by less than it)."""
    remaining_ms = remaining_s * 1000
    return max((step for step in STEPS_MS if step <= remaining_ms), default=STEPS_MS[0])
