"""A slow but working Salesforce must not fail the sink's /livez (common.probes): the loop
beat only at its top, so one flush turn of several calls (a batch bisected to the record
Salesforce refuses, describes, the fence check) or one call longer than
``LIVENESS_SILENCE_S`` (``SF_TIMEOUT_S=120``) left it silent past 60 s, and Kubernetes'
liveness probe killed the sink mid-write. Each call now beats as it starts and as it ends,
and counts as a beat until its worst case is over (four exchanges of ``SF_TIMEOUT_S``). No
broker; a fake clock."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import pytest

from common.errors import SalesforceError
from common.probes import LIVENESS_SILENCE_S
from sinks.app import Sink
from sinks.batch import Tracked
from tests.sinks.fakes import FakeCollections
from tests.sinks.test_sink_probing import assigned_sink
from tests.sinks.test_sink_rebalance import Message

BAD = "801000000000000007"  # the Order of offset 7: Salesforce refuses any call holding it


class Clock:
    def __init__(self) -> None:
        self.now = 1e6

    def __call__(self) -> float:
        return self.now


class SlowOrg(FakeCollections):
    """Salesforce answering every call after ``call_s`` (of the fake clock); what /livez
    answers at the end of each call, before it returns, is kept in ``live`` (and the
    silence it reports in ``silent``)."""

    def __init__(self, clock: Clock, call_s: float, timeout_s: float | None = None) -> None:
        super().__init__()
        self.clock, self.call_s = clock, call_s
        if timeout_s is not None:  # as SalesforceClient has it: SF_TIMEOUT_S
            self.settings = SimpleNamespace(timeout_s=timeout_s)
        self.sink: Sink | None = None
        self.live: list[bool] = []
        self.silent: list[float] = []

    def _answer_slowly(self) -> None:
        self.clock.now += self.call_s
        assert self.sink is not None
        live, details = self.sink.ops.live()
        self.live.append(live)
        self.silent.append(details["loop_silent_s"])

    def update_collection(self, records: list[dict[str, Any]], *,
                          all_or_none: bool = False) -> list[dict[str, Any]]:
        self._answer_slowly()
        return super().update_collection(records, all_or_none=all_or_none)

    def describe(self, sobject: str) -> dict[str, Any]:
        self._answer_slowly()
        return super().describe(sobject)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(time, "monotonic", fake)  # the sink's and its probes' clock
    return fake


def sink_on(org: SlowOrg, dead: list[Tracked], **settings: Any) -> Sink:
    sink = assigned_sink(org, dead, **settings)
    org.sink = sink
    for offset in range(20):
        sink._handle(Message(0, offset))
    sink._heartbeat = time.monotonic()  # the loop's top: its beat before the flush
    return sink


def refuse_bad(records: list[dict[str, Any]]) -> Exception | None:
    if any(r["id"] == BAD for r in records):
        return SalesforceError("Salesforce 400 MALFORMED_ID: bad id", status=400,
                               error_code="MALFORMED_ID", retryable=False)
    return None


def test_a_bisected_batch_of_slow_calls_keeps_the_loop_alive(clock: Clock) -> None:
    org = SlowOrg(clock, call_s=25.0)  # each call well within SF_TIMEOUT_S (30 s)
    org.fail_call = refuse_bad
    dead: list[Tracked] = []
    sink = sink_on(org, dead)
    started = clock.now
    try:
        sink._flush(clock.now)
        # one flush turn: the call of 20, bisected down to the refused record
        assert len(org.calls) >= 8 and clock.now - started > 3 * LIVENESS_SILENCE_S
        assert org.live and all(org.live), org.live
        assert sink.ops.live()[0] and sink.ops.ready()[1]["checks"]["loop"]
        assert [t.offset for t in dead] == [7] and sink.stats.records_written == 19
    finally:
        sink.dead_letters.close()


def test_one_call_longer_than_the_liveness_silence_within_sf_timeout_is_alive(
        clock: Clock) -> None:
    org = SlowOrg(clock, call_s=100.0, timeout_s=120.0)  # SF_TIMEOUT_S=120, answered at 100 s
    sink = sink_on(org, [])
    try:
        sink._flush(clock.now)
        assert org.live == [True] and sink.stats.records_written == 20
        assert org.silent == [0.0]  # within its bound: no silence (never a negative one)
    finally:
        sink.dead_letters.close()


def test_a_call_that_logs_in_again_first_within_its_bounds_is_alive(clock: Clock) -> None:
    """One client call may be a re-login (its session expired) and the request, each up to
    SF_TIMEOUT_S: with one SF_TIMEOUT_S of credit such a call of 200 s (120 s each) failed
    the probe at 180 s."""
    org = SlowOrg(clock, call_s=200.0, timeout_s=120.0)
    sink = sink_on(org, [])
    try:
        sink._flush(clock.now)
        assert org.live == [True] and sink.stats.records_written == 20
    finally:
        sink.dead_letters.close()


def test_a_call_stuck_past_its_timeout_still_fails_liveness(clock: Clock) -> None:
    # the client bounds a call by SF_TIMEOUT_S an exchange, four at most (a login, the
    # request, a re-login, the request again): one still waiting long past that is a wedge
    from sinks.beating import CALL_EXCHANGES

    org = SlowOrg(clock, call_s=CALL_EXCHANGES * 120.0 + LIVENESS_SILENCE_S + 1,
                  timeout_s=120.0)
    sink = sink_on(org, [])
    try:
        sink._flush(clock.now)
        assert org.live == [False]
        assert sink.ops.live()[0]  # it returned: beaten as it ended
    finally:
        sink.dead_letters.close()
