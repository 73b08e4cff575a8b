"""A worker's stop drains once (stop-bounds review).

faust waits empty twice on a stop — the app's ``_stop_consumer``, then its consumer's own
``on_stop`` — and each wait ran the worker's drain for the whole ``WORKER_DRAIN_TIMEOUT_S``:
with an event that cannot finish (Salesforce down, an outcome the brokers do not take) a
stop took twice the drain, the supervisor's whole grace, and was SIGKILLed (no LeaveGroup:
its partitions idle for a session timeout)."""

from __future__ import annotations

import asyncio
import time
from functools import partial
from types import SimpleNamespace

from ops.supervisor import STOP_MARGIN_S, stop_grace
from streams.app import Worker
from streams.checkpoint import Checkpoint
from streams.lanes import Admitted, Lanes

DRAIN_S = 1.0


class Lease:
    def __init__(self) -> None:
        self.losses = 0

    def lost(self) -> None:
        self.losses += 1


def test_the_second_wait_empty_of_a_stop_does_not_drain_again() -> None:
    async def go() -> tuple[float, float, int]:
        checkpoint = Checkpoint(lambda w: {}, commit=lambda o: asyncio.sleep(0, True),
                                seek=lambda _p, _o: None)
        lanes = Lanes(checkpoint, lambda _m: None)

        async def hung() -> bool:  # an event that cannot finish before the stop's end
            await asyncio.sleep(100)
            return True
        await lanes.admit("801X", Admitted(0, 0, "m0", hung, generation=1))
        lease = Lease()
        worker = SimpleNamespace(lanes=lanes, checkpoint=checkpoint, lease=lease,
                                 settings=SimpleNamespace(drain_timeout_s=DRAIN_S),
                                 _drain_deadline=None)
        worker._commit = partial(Worker._commit, worker)
        started = time.monotonic()
        await Worker._leaving(worker, True, 1)  # the app's stop: consumer.wait_empty
        first = time.monotonic() - started
        await Worker._leaving(worker, True, 1)  # the consumer's own on_stop: wait_empty
        both = time.monotonic() - started
        for task in list(lanes._tasks.values()):
            task.cancel()
        return first, both, lease.losses
    first, both, losses = asyncio.run(go())
    assert first >= DRAIN_S * 0.9
    assert both - first < DRAIN_S * 0.5, (first, both)  # the second drained again: twice
    assert losses == 2  # fenced by each (idempotent)


def test_the_workers_grace_allows_for_a_salesforce_call_joined_at_exit() -> None:
    """A guard query runs in a thread, which the interpreter joins at exit: one under way
    at the drain's end may take SF_TIMEOUT_S more."""
    assert stop_grace("worker", {}) == 20.0 + 30.0 + STOP_MARGIN_S
    assert stop_grace("worker", {"SF_TIMEOUT_S": "5", "WORKER_DRAIN_TIMEOUT_S": "2"}) == \
        2.0 + 5.0 + STOP_MARGIN_S
