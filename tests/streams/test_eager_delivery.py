"""The seam's eager delivery of fetched records (streams.faust_seam.consumer.eager_delivery):
faust's per-record ``wait_first(callback(record), suspend_flow.wait())`` without its four
tasks when the delivery finishes at once, and ``wait_first``'s own race when it waits.

Runs on a real faust app's consumer (not started: ``wait_first`` needs no broker), with the
consumer's ``callback`` replaced by deliveries the tests control. The worker's deliveries
against the broker are exercised by every worker test (tests/streams/test_worker_*.py,
tests/e2e) and by the chaos runs' rebalances."""

from __future__ import annotations

import asyncio
import gc
import warnings
from collections.abc import Awaitable, Callable
from typing import Any

import faust
import pytest

from streams.faust_seam.consumer import EagerDelivery, eager_delivery


def _consumer(deliver: Callable[[str], Awaitable[Any]], *, eager: bool = True
              ) -> tuple[Any, EagerDelivery | None]:
    """A faust app's consumer delivering with ``deliver``, made inside the running loop (its
    services take that loop), with the seam's eager delivery or without."""
    app = faust.App("eager-test", broker="kafka://localhost:1", autodiscover=False,
                    loop=asyncio.get_running_loop())
    consumer = app.consumer
    consumer.callback = deliver
    return consumer, (eager_delivery(consumer) if eager else None)


def _run(run: Callable[[], Awaitable[None]]) -> None:
    """``asyncio.run(run())``; fails on a coroutine left never awaited (the suspension's
    wait, when the delivery finished at once)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        asyncio.run(run())
        gc.collect()
    unawaited = [str(w.message) for w in caught if "never awaited" in str(w.message)]
    assert unawaited == []


async def _waiting_delivery(consumer: Any, deliver: Callable[[str], Awaitable[Any]]
                            ) -> asyncio.Future[Any]:
    """The drainer's call for record ``r1``, left running for 10 ms (its delivery waits)."""
    waiting = asyncio.ensure_future(
        consumer.wait_first(deliver("r1"), consumer.suspend_flow.wait()))
    await asyncio.sleep(0.01)
    return waiting


async def _tasks_made_during(call: Awaitable[Any]) -> tuple[Any, int]:
    loop = asyncio.get_running_loop()
    made = 0
    factory = loop.get_task_factory()

    def counting(loop: asyncio.AbstractEventLoop, coro: Any, **kw: Any) -> asyncio.Task[Any]:
        nonlocal made
        made += 1
        return asyncio.Task(coro, loop=loop, **kw)
    loop.set_task_factory(counting)
    try:
        return await call, made
    finally:
        loop.set_task_factory(factory)


def test_a_delivery_that_finishes_at_once_needs_no_task() -> None:
    delivered: list[str] = []

    async def deliver(message: str) -> str:
        delivered.append(message)
        return f"ok {message}"

    async def run() -> None:
        consumer, counts = _consumer(deliver)
        results, tasks = await _tasks_made_during(
            consumer.wait_first(deliver("r1"), consumer.suspend_flow.wait()))
        assert tasks == 0
        assert delivered == ["r1"]
        assert results.stopped is False and results.results == ["ok r1"]
        assert len(results.done) == 1 and results.done[0].cr_code is deliver.__code__
        assert counts is not None and (counts.at_once, counts.raced) == (1, 0)
        # without the seam: faust's own wait_first makes four tasks for the same call
        plain, _ = _consumer(deliver, eager=False)
        results, tasks = await _tasks_made_during(
            plain.wait_first(deliver("r2"), plain.suspend_flow.wait()))
        assert tasks == 4 and results.results == ["ok r2"]
    _run(run)


def test_a_delivery_that_waits_is_raced_and_finishes_where_it_stopped() -> None:
    steps: list[str] = []
    room = asyncio.Event()

    async def deliver(message: str) -> str:
        steps.append(f"start {message}")
        await room.wait()  # a full queue
        steps.append(f"put {message}")
        return message

    async def run() -> None:
        consumer, counts = _consumer(deliver)
        waiting = await _waiting_delivery(consumer, deliver)
        assert steps == ["start r1"] and not waiting.done()  # its first step ran once
        room.set()
        results = await asyncio.wait_for(waiting, 1)
        assert steps == ["start r1", "put r1"]
        assert results.results == ["r1"] and results.stopped is False
        assert results.done[0].cr_code is deliver.__code__  # the delivery, not its rest
        assert counts is not None and (counts.at_once, counts.raced) == (0, 1)
    _run(run)


def test_a_suspension_still_cancels_a_delivery_that_waits() -> None:
    seen: list[str] = []

    async def deliver(message: str) -> str:
        try:
            await asyncio.Event().wait()  # never room
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise
        return message

    async def run() -> None:
        consumer, _ = _consumer(deliver)
        waiting = await _waiting_delivery(consumer, deliver)
        consumer.suspend_flow.set()  # a rebalance stops the flow
        results = await asyncio.wait_for(waiting, 1)
        await asyncio.sleep(0)
        assert results.results == [True]  # the suspension's wait won, as in faust
        assert results.done[0].cr_code is asyncio.Event.wait.__code__
        assert seen == ["cancelled"]
    _run(run)


def test_a_delivery_that_raises_at_once_raises_to_the_drainer() -> None:
    async def deliver(message: str) -> str:
        raise ValueError(f"bad {message}")

    async def run() -> None:
        consumer, _ = _consumer(deliver)
        with pytest.raises(ValueError, match="bad r1"):
            await consumer.wait_first(deliver("r1"), consumer.suspend_flow.wait())
    _run(run)


def test_any_other_call_and_a_suspended_flow_take_faust_s_own_path() -> None:
    async def deliver(message: str) -> str:
        return message

    async def other() -> str:
        return "other"

    async def run() -> None:
        consumer, counts = _consumer(deliver)
        # another coroutine than the delivery: faust's wait_first (its tasks)
        results, tasks = await _tasks_made_during(
            consumer.wait_first(other(), consumer.suspend_flow.wait()))
        assert results.results == ["other"] and tasks == 4
        # with a timeout: faust's
        results, tasks = await _tasks_made_during(consumer.wait_first(deliver("r0"),
                                                                      timeout=1))
        assert results.results == ["r0"] and tasks == 3
        # the flow already suspended: faust's race (which the suspension may win)
        consumer.suspend_flow.set()
        _, tasks = await _tasks_made_during(
            consumer.wait_first(deliver("r1"), consumer.suspend_flow.wait()))
        assert tasks == 4
        assert counts is not None and (counts.at_once, counts.raced) == (0, 0)
    _run(run)
