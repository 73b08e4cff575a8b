"""Pause bookkeeping: timed reasons block calls; lifted by a probe or when nothing to probe."""

from __future__ import annotations

from sinks.pausing import BACKPRESSURE, LIMIT, OUTAGE, Pauses


def test_limit_pause_blocks_calls_until_its_time_then_waits_for_the_probe() -> None:
    changes: list[bool] = []
    pauses = Pauses(changes.append)
    pauses.pause(LIMIT, until=10.0)
    assert changes == [True] and pauses.blocked(5.0) and pauses.resume_at(5.0) == 10.0
    pauses.expire(11.0, backpressure_over=True, can_probe=True)
    assert pauses.paused and not pauses.blocked(11.0)  # time ran out: probe allowed
    pauses.lift(LIMIT, OUTAGE)  # the probe succeeded
    assert changes == [True, False]


def test_timed_pause_lifts_by_itself_when_nothing_is_pending() -> None:
    pauses = Pauses(lambda _p: None)
    pauses.pause(OUTAGE, until=3.0)
    pauses.expire(2.0, backpressure_over=True, can_probe=False)
    assert pauses.paused
    pauses.expire(3.0, backpressure_over=True, can_probe=False)
    assert not pauses.paused


def test_backpressure_holds_until_pending_falls() -> None:
    pauses = Pauses(lambda _p: None)
    pauses.pause(BACKPRESSURE)
    assert not pauses.blocked(0.0)  # backpressure never stops calls, only consumption
    pauses.expire(1.0, backpressure_over=False, can_probe=True)
    assert pauses.paused
    pauses.expire(2.0, backpressure_over=True, can_probe=True)
    assert not pauses.paused and pauses.snapshot(2.0) == {"paused": False, "pause_reasons": {}}
