"""One flush must not hold the sink's poll loop past ``max.poll.interval.ms`` (300 s), nor a
stopping sink past its drain's deadline. A slow Salesforce (each call within
``SF_TIMEOUT_S``) and a batch bisected to the record it refuses made one flush of many
calls: past 300 s librdkafka leaves the group, the commit fails, the batch comes back and
its refused record is dead-lettered again. Now a flush starts no call that could end past
the interval (less ``WRITE_MARGIN_S``); the calls it has no time for wait for the next
turn, capped at their size, so the bisection goes on where it stopped. No broker; a fake
clock."""

from __future__ import annotations

import time
from itertools import pairwise
from typing import Any

import pytest

from sinks.app import WRITE_MARGIN_S
from sinks.batch import Tracked
from sinks.beating import CALL_EXCHANGES
from sinks.writer import CollectionWriter
from tests.sinks.fakes import FakeCollections
from tests.sinks.test_settings_sink_liveness import BAD, Clock, SlowOrg, refuse_bad, sink_on
from tests.sinks.test_writer import entries

MAX_POLL_S = 300.0


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(time, "monotonic", fake)  # the sink's clock
    return fake


def test_the_writer_leaves_the_calls_it_may_not_make_unsent() -> None:
    fake = FakeCollections()
    fake.fail_call = lambda records: refuse_bad([{"id": BAD}]) \
        if any(r["id"] == "8010007" for r in records) else None
    # time for one call more than the first
    result = CollectionWriter(fake).write(entries(20), may_call=lambda: len(fake.calls) < 2)
    # the call of 20 refused, its first half (0-9, holding 7) refused again; then no time
    assert result.calls == 2 and len(fake.calls) == 2
    assert [[e.key.record_id for e in call] for call in result.unsent] == [
        [f"801{i:04d}" for i in range(0, 5)], [f"801{i:04d}" for i in range(5, 10)],
        [f"801{i:04d}" for i in range(10, 20)]]
    assert not result.acked and not result.permanent


def test_the_first_call_is_made_even_out_of_time() -> None:
    fake = FakeCollections()
    result = CollectionWriter(fake).write(entries(3), may_call=lambda: False)
    assert result.calls == 1 and len(result.acked) == 3 and not result.unsent


def turns(sink: Any, clock: Clock, limit: int = 30) -> list[float]:
    """The loop's turns, as the poll loop makes them: a poll, then a flush; the length of
    each (poll to the flush's end) until nothing is pending."""
    spans = []
    while len(sink.batcher) and len(spans) < limit:
        sink._polled_at = polled = clock.now  # the loop's poll
        sink._flush(clock.now)
        spans.append(clock.now - polled)
    return spans


def calls_of_one_turn() -> int:
    """The calls of the same bisection in one flush of calls answered at once."""
    org = SlowOrg(Clock(), call_s=0.0)
    org.fail_call = refuse_bad
    sink = sink_on(org, [])
    try:
        sink._flush(0.0)
        assert not len(sink.batcher)
        return len(org.calls)
    finally:
        sink.dead_letters.close()


def test_a_bisection_of_slow_calls_never_outlasts_the_poll_interval(clock: Clock) -> None:
    org = SlowOrg(clock, call_s=35.0, timeout_s=40.0)  # each call within SF_TIMEOUT_S
    org.fail_call = refuse_bad
    dead: list[Tracked] = []
    sink = sink_on(org, dead)
    try:
        spans = turns(sink, clock)
        # before: one turn of every call of the bisection (9 calls, 315 s: past the interval
        # itself; at SINK_BATCH_SIZE 200 about 16 calls, 560 s)
        assert max(spans) <= MAX_POLL_S - WRITE_MARGIN_S, spans
        assert len(spans) > 1
        # and the bisection went on where it stopped: the calls of one turn without a bound
        assert [t.offset for t in dead] == [7] and sink.stats.records_written == 19
        assert len(org.calls) == calls_of_one_turn(), [len(c) for c in org.calls]
    finally:
        sink.dead_letters.close()


def test_each_turn_of_calls_longer_than_the_budget_still_makes_progress(clock: Clock) -> None:
    # SF_TIMEOUT_S=60: a call's worst case (four exchanges, 240 s) leaves no time for a
    # second call in a turn; each turn makes one, and the bisection still ends
    org = SlowOrg(clock, call_s=50.0, timeout_s=60.0)
    org.fail_call = refuse_bad
    dead: list[Tracked] = []
    sink = sink_on(org, dead)
    try:
        assert CALL_EXCHANGES * 60.0 > MAX_POLL_S - WRITE_MARGIN_S - 50.0
        spans = turns(sink, clock)
        assert all(span == 50.0 for span in spans), spans
        assert [t.offset for t in dead] == [7] and sink.stats.records_written == 19
    finally:
        sink.dead_letters.close()


def test_a_stop_during_a_bisection_ends_the_drain_at_its_deadline(clock: Clock) -> None:
    org = SlowOrg(clock, call_s=10.0)
    org.fail_call = refuse_bad
    sink = sink_on(org, [])
    try:
        sink.stop()  # SIGTERM just before the flush: the drain has 30 s from here
        stopped = clock.now
        sink._drain()
        # before: the drain's one flush made every call of the bisection (10, 100 s)
        assert clock.now - stopped <= sink.settings.drain_timeout_s + org.call_s
        assert len(sink.batcher)  # left uncommitted: redelivered, never lost
    finally:
        sink.dead_letters.close()


def test_a_long_drain_of_a_slow_bisection_polls_within_the_interval(clock: Clock) -> None:
    """SINK_DRAIN_TIMEOUT_S=400: the drain flushed turn after turn without polling (only
    its waits polled), 315 s of calls with no poll — past max.poll.interval.ms, the group
    left and the drain's commit failed."""
    org = SlowOrg(clock, call_s=35.0, timeout_s=40.0)
    org.fail_call = refuse_bad
    dead: list[Tracked] = []
    sink = sink_on(org, dead, drain_timeout_s=400.0)
    polls: list[float] = []
    real_poll = sink.consumer.poll

    def poll(timeout: float = 0) -> Any:
        polls.append(clock.now)
        return real_poll(timeout)
    sink.consumer.poll = poll  # type: ignore[method-assign]
    sink._polled_at = started = clock.now  # the loop's last poll
    try:
        sink.stop()
        sink._drain()
        marks = [started, *polls, clock.now]
        assert max(b - a for a, b in pairwise(marks)) <= MAX_POLL_S - WRITE_MARGIN_S, \
            [m - started for m in marks]
        assert [t.offset for t in dead] == [7] and not len(sink.batcher)
    finally:
        sink.dead_letters.close()
