"""A rebalance's revoke releases every event of the generation it revokes — those in the
lanes, and those the agent holds and has not handed in yet (a chunk waiting for its decode:
the schema registry looked up, or unreachable). faust's rebalance waits for every message it
handed out (``wait_empty``); an event of the revoked generation run after the revoke would
wait for a lease the rebalance cannot give back, and hold the rebalance until the group
expelled the worker."""

from __future__ import annotations

import asyncio
import threading
from types import SimpleNamespace
from typing import Any

from faust.types import ConsumerMessage

from streams import faust_seam
from streams.app import Worker
from streams.checkpoint import Checkpoint
from streams.lanes import Admitted, Lanes

TOPIC = "requests-revoke-test"


def _worker(generation: int) -> Worker:
    """A Worker with only the parts a revoke and the agent's intake touch, on a faust app
    (not started) whose consumer is in ``generation``."""
    app = faust_seam.build_app("revoke-test", broker="kafka://127.0.0.1:1",
                               web_enabled=False, autodiscover=False)
    app.consumer_generation_id = generation  # what faust sets at each assignment
    worker = Worker.__new__(Worker)
    worker.app = app
    worker.consumer = faust_seam.ConsumerSeam(app, TOPIC)
    worker.checkpoint = Checkpoint(lambda w: {}, commit=lambda o: asyncio.sleep(0, True),
                                   seek=lambda p, o: None)
    worker.lanes = Lanes(worker.checkpoint, worker.consumer.release)
    worker.settings = SimpleNamespace(drain_timeout_s=0.1)
    worker.progress = SimpleNamespace(touch=lambda: None)
    worker.ops = SimpleNamespace(event_started=lambda m, **_kw: None, event_finished=lambda m: None)
    worker.events = 0
    worker.consumer.before_wait_empty(worker._leaving)  # as Worker.__init__ does
    return worker


async def _rebalance(worker: Worker) -> None:
    """faust's revoke waits for the messages it handed out: the seam's wait_empty (the
    worker's _leaving first, then faust's own). It must end: nothing may hold it."""
    consumer = worker.consumer.consumer
    waiting = asyncio.ensure_future(consumer.wait_empty())
    done, _ = await asyncio.wait([waiting], timeout=5)
    if not done:  # faust's wait swallows a cancellation: end it as a stop would
        consumer._stopped.set()
        await waiting
        raise AssertionError("faust's wait_empty was held by a message of the revoked "
                             f"generation: {sorted(m.offset for m in _unacked(worker))}")


def _message(worker: Worker, offset: int, generation: int) -> Any:
    """A requests record as faust hands it to the agent (tracked: a rebalance waits for it)."""
    message = ConsumerMessage(TOPIC, 0, offset, 0.0, 0, [], b"801L00000000001AAA", b"v",
                              None, generation_id=generation)
    message.incref()  # the conductor's reference
    worker.consumer.consumer.track_message(message)
    return message


def _unacked(worker: Worker) -> set[Any]:
    return set(worker.consumer.consumer._unacked_messages)


def test_a_rebalance_revokes_the_generation_faust_stamps_on_what_it_fetches_now():
    """No event of generation 7 (the consumer's) reached the lanes before the revoke; one
    handed in after it is released at once, not run."""
    async def go() -> tuple[int, list[int], bool]:
        worker = _worker(7)
        ran: list[int] = []
        never = asyncio.Event()

        async def needs_the_lease() -> bool:
            ran.append(5)
            await never.wait()  # as a lease check "rebalance under way" would
            return True
        await _rebalance(worker)
        message = _message(worker, 5, 7)  # fetched before the revoke, taken after it
        worker.consumer.hold(message)
        await asyncio.wait_for(worker.lanes.admit(
            "801L00000000001AAA", Admitted(0, 5, message, needs_the_lease, generation=7)), 1)
        await asyncio.sleep(0.05)
        return worker.lanes.in_flight, ran, message in _unacked(worker)
    in_flight, ran, unacked = asyncio.run(go())
    assert in_flight == 0 and ran == []
    assert not unacked  # faust's wait_empty does not wait for it


class _Intake:
    """faust's stream as the agent reads it: one chunk of ``events``, then nothing."""

    def __init__(self, events: list[Any]) -> None:
        self.events = events
        self.asked_again = asyncio.Event()

    async def take_events(self, n: int, within: float) -> Any:
        yield self.events
        self.asked_again.set()
        await asyncio.Event().wait()


def test_a_chunk_waiting_for_the_schema_registry_is_released_by_the_revoke():
    """The registry is unreachable: the agent retries the chunk's decode. A rebalance's
    revoke releases its messages at once, and the agent gives the chunk up (faust
    redelivers it from the committed offsets) instead of retrying for ever."""
    async def go() -> tuple[bool, bool, bool, int, int]:
        worker = _worker(7)
        worker.serde = SimpleNamespace(offline=lambda value, headers: False)
        attempts: list[int] = []

        def unreachable(records: list[Any]) -> list[Any]:
            attempts.append(len(records))
            raise ConnectionError("schema registry unreachable")
        worker._decode = unreachable  # type: ignore[method-assign]
        messages = [_message(worker, offset, 7) for offset in range(3)]
        intake = _Intake([SimpleNamespace(message=m) for m in messages])
        agent = asyncio.ensure_future(Worker._agent(worker, intake))
        for _ in range(200):
            if attempts:
                break
            await asyncio.sleep(0.01)
        held = all(m in _unacked(worker) for m in messages)
        await _rebalance(worker)
        released = not any(m in _unacked(worker) for m in messages)
        try:
            await asyncio.wait_for(intake.asked_again.wait(), 5)
            moved_on = True
        except TimeoutError:
            moved_on = False
        tried = len(attempts)
        await asyncio.sleep(0.5)
        agent.cancel()
        return held, released, moved_on, tried, len(attempts)
    held, released, moved_on, tried, later = asyncio.run(go())
    assert held  # the agent held the chunk while it waited
    assert released  # faust's wait_empty need not wait for the registry
    assert moved_on and later == tried  # the chunk was given up, not retried for ever


def test_a_chunk_decoded_after_the_revoke_is_released_not_run():
    """The decode was under way at the revoke (a first lookup of a writer's schema) and
    returns after it: the chunk's events reach the lanes and leave at once."""
    async def go() -> tuple[list[int], int, bool]:
        worker = _worker(7)
        worker.serde = SimpleNamespace(offline=lambda value, headers: False)
        lookup, started = threading.Event(), threading.Event()

        def slow(records: list[Any]) -> list[Any]:
            started.set()
            lookup.wait(5)
            return [SimpleNamespace(order_id=f"801L0000000000{r.offset}AAA") for r in records]
        worker._decode = slow  # type: ignore[method-assign]
        ran: list[int] = []
        never = asyncio.Event()

        async def handle(event: Any, rec: Any) -> bool:
            ran.append(rec.offset)
            await never.wait()
            return True
        worker.handler = SimpleNamespace(handle=handle)
        messages = [_message(worker, offset, 7) for offset in range(3)]
        intake = _Intake([SimpleNamespace(message=m) for m in messages])
        agent = asyncio.ensure_future(Worker._agent(worker, intake))
        while not started.is_set():
            await asyncio.sleep(0.01)
        await _rebalance(worker)
        lookup.set()
        await asyncio.wait_for(intake.asked_again.wait(), 5)
        await asyncio.sleep(0.05)
        agent.cancel()
        return ran, worker.lanes.in_flight, any(m in _unacked(worker) for m in messages)
    ran, in_flight, unacked = asyncio.run(go())
    assert ran == [] and in_flight == 0 and not unacked


def test_a_generation_assigned_again_runs_its_events():
    """A member's rejoin the coordinator answers without a rebalance keeps its generation:
    once assigned again, that generation's events run (they are the new assignment's)."""
    async def go() -> list[int]:
        worker = _worker(7)
        await _rebalance(worker)
        ran: list[int] = []

        async def quick() -> bool:
            ran.append(9)
            return True
        worker.sweeper = SimpleNamespace(rescan=lambda: None)
        worker.kafka = SimpleNamespace(requests=TOPIC)
        await Worker._on_assigned(worker, worker.app, set())  # generation 7 again
        message = _message(worker, 9, 7)
        await worker.lanes.admit("801L00000000001AAA", Admitted(0, 9, message, quick,
                                                                generation=7))
        await asyncio.sleep(0.05)
        return ran
    assert asyncio.run(go()) == [9]
