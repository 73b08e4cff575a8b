"""A batch that fails as a whole the same retryable way every time (no broker, fake time).

Before: the batch was requeued without counting attempts, kept its age, and ``take`` gave
the same 200 records to every probe — nothing was written, ever, and lag grew. Now the
records of a call that keeps failing go in smaller calls (halved after two failures in a
row, down to one; other records keep the full size), a record whose call alone fails is
isolated, and it is dead-lettered only when Salesforce answers clearly more calls than it
fails in between; an outage of hours, or an org failing calls at random, dead-letters
nothing.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from confluent_kafka import TopicPartition

from common.errors import SalesforceAuthError, SalesforceError
from common.settings import SinkSettings
from sinks.app import Sink
from sinks.batch import Batcher, Tracked
from sinks.mapping import RecordKey, RecordUpdate
from tests.sinks.fakes import FakeCollections, limit_error
from tests.sinks.test_sink_rebalance import KAFKA, Message, RevokingConsumer

BACKLOG = 300


def assigned_sink(fake: FakeCollections, dead: list[Tracked], **settings: Any) -> Sink:
    """A sink writing to ``fake`` with a fake consumer assigned partition 0 of the outcomes
    topic; what it dead-letters is appended to ``dead``. (Also test_sink_review_fixes.)"""
    sink = Sink(KAFKA, SinkSettings.load({}, http_port=0, **settings), fake)
    sink.dead_letters.record_errors = dead.append  # type: ignore[method-assign]
    real = sink.consumer
    consumer = RevokingConsumer(sink, [])
    sink.consumer = consumer  # type: ignore[assignment]
    real.close()
    sink._on_assign(consumer, [TopicPartition(KAFKA.outcomes, 0)])  # type: ignore[arg-type]
    return sink


class Harness:
    """A sink on partition 0 with a fake consumer; ``probe`` advances a fake clock past
    every pause and backoff and makes one flush, as the loop would."""

    def __init__(self, fail: Callable[[list[dict[str, Any]]], Exception | None]) -> None:
        self.fake = FakeCollections()
        self.fake.fail_call = fail
        self.dead: list[Tracked] = []
        self.sink = assigned_sink(self.fake, self.dead)
        self.offset = 0
        self.now = 1e9

    def consume(self, n: int) -> None:
        for _ in range(n):
            self.sink._handle(Message(0, self.offset))
            self.offset += 1

    def probe(self, step: float = 0.001) -> None:
        sink = self.sink
        self.now = max(self.now + step, sink.pauses.resume_at(self.now) + 0.001,
                       (sink.batcher.next_ready_at() or self.now) + 0.001)
        sink._flush(self.now)

    def feed_until_dead(self, limit: int) -> None:
        """One new outcome a second, each flushed, until something is dead-lettered (at most
        ``limit`` seconds): Salesforce keeps writing other records meanwhile; then drain."""
        for _ in range(limit):
            if self.dead:
                break
            self.consume(1)
            self.probe(step=1.0)
        self.drain()

    def drain(self, limit: int = 2000) -> None:
        for _ in range(limit):
            if not len(self.sink.batcher):
                return
            self.probe()
        raise AssertionError(f"still {len(self.sink.batcher)} records pending after {limit} "
                             "probes")

    def written(self) -> set[str]:
        return {record_id for (_sobject, record_id) in self.fake.records}


@pytest.fixture
def harness() -> Iterator[Callable[..., Harness]]:
    made: list[Harness] = []

    def make(fail: Callable[[list[dict[str, Any]]], Exception | None]) -> Harness:
        made.append(Harness(fail))
        return made[-1]

    yield make
    for h in made:
        h.sink.dead_letters.close()


def order_id(offset: int) -> str:
    return Message(0, offset).key().decode()


def test_a_call_too_big_to_answer_in_time_shrinks_until_everything_is_written(
        harness: Callable[..., Harness]) -> None:
    """Every call of more than 50 records times out (the org's automation is slow for big
    calls): the calls shrink to 50 and everything is written, nothing dead-lettered."""
    h = harness(lambda records: SalesforceError("Salesforce unreachable: ReadTimeout",
                                                retryable=True) if len(records) > 50 else None)
    h.consume(BACKLOG)
    h.drain(limit=100)
    assert h.sink.stats.records_written == BACKLOG and h.dead == []
    assert h.written() == {order_id(o) for o in range(BACKLOG)}
    assert h.sink.offsets.outstanding() == 0
    assert len(h.fake.calls) < 40, [len(c) for c in h.fake.calls]


APEX_CPU = [{"statusCode": "CANNOT_INSERT_UPDATE_ACTIVATE_ENTITY", "fields": [],
             "message": "OrderTrigger: execution of AfterUpdate caused by: "
                        "System.LimitException: Apex CPU time limit exceeded"}]


def test_a_governor_limit_met_by_big_calls_shrinks_them_and_dead_letters_nothing(
        harness: Callable[..., Harness]) -> None:
    """The org's trigger passes for 50 records and hits Apex's CPU limit for more:
    Salesforce fails every record of the call with it, and the sink dead-lettered the whole
    batch at once — its records pass in smaller calls (sink review)."""
    h = harness(lambda records: None)
    h.fake.call_errors = lambda records: APEX_CPU if len(records) > 50 else None
    h.consume(BACKLOG)
    h.drain(limit=100)
    assert h.dead == []
    assert h.written() == {order_id(o) for o in range(BACKLOG)}
    assert h.sink.offsets.outstanding() == 0


def test_a_governor_limit_met_by_one_record_alone_is_that_records_dead_letter(
        harness: Callable[..., Harness]) -> None:
    poison = order_id(7)
    h = harness(lambda records: None)
    h.fake.call_errors = lambda records: APEX_CPU if any(
        r["id"] == poison for r in records) else None
    h.consume(20)
    h.feed_until_dead(200)
    assert [(d.partition, d.offset) for d in h.dead] == [(0, 7)]
    assert h.written() == {order_id(o) for o in range(h.offset)} - {poison}


def test_a_proxy_page_one_record_provokes_isolates_it_and_writes_the_rest(
        harness: Callable[..., Harness]) -> None:
    """A WAF in front of Salesforce answers a 400 page (no Salesforce error) to every call
    holding one record's contents: not the installation's fault — the sink requeued the same
    batch for ever and wrote nothing (regression review)."""
    poison = order_id(120)

    def fail(records: list[dict[str, Any]]) -> Exception | None:
        if any(r["id"] == poison for r in records):
            return SalesforceError("Salesforce 400 : <html>Request Rejected</html>",
                                   status=400, retryable=False)
        return None

    h = harness(fail)
    h.consume(BACKLOG)
    h.feed_until_dead(1000)
    assert [(d.partition, d.offset) for d in h.dead] == [(0, 120)]
    assert h.written() == {order_id(o) for o in range(h.offset)} - {poison}


def test_a_proxy_page_refusing_every_call_dead_letters_nothing(
        harness: Callable[..., Harness]) -> None:
    h = harness(lambda records: SalesforceError("Salesforce 400 : <html>Bad Request</html>",
                                                status=400, retryable=False))
    h.consume(50)
    for _ in range(300):
        h.probe(step=1.0)
    assert h.dead == [] and h.written() == set()
    assert h.sink.offsets.outstanding() == 50


def test_a_429_waits_its_retry_after_and_does_not_shrink_the_calls(
        harness: Callable[..., Harness]) -> None:
    h = harness(lambda records: SalesforceError("Salesforce 429 : slow down", status=429,
                                                retryable=True, retry_after=120.0))
    h.consume(50)
    for _ in range(3):
        h.probe()
    assert h.sink.pauses.resume_at(h.now) - h.now >= 119
    assert all(e.cap is None for entries in h.sink.batcher._pending.values() for e in entries)
    assert h.dead == []


def test_one_record_failing_every_call_is_dead_lettered_and_the_rest_written(
        harness: Callable[..., Harness]) -> None:
    """One record provokes a 5xx UNKNOWN_EXCEPTION in every call it is in: it is isolated,
    the others are written around it, and — while Salesforce keeps writing other records
    (outcomes keep arriving) — its lone failures count until SINK_MAX_ATTEMPTS."""
    poison = order_id(120)

    def fail(records: list[dict[str, Any]]) -> Exception | None:
        if any(r["id"] == poison for r in records):
            return SalesforceError("Salesforce 500 UNKNOWN_EXCEPTION: An unexpected error "
                                   "occurred", status=500, error_code="UNKNOWN_EXCEPTION",
                                   retryable=True)
        return None

    h = harness(fail)
    h.consume(BACKLOG)
    h.feed_until_dead(1000)
    [dead] = h.dead
    assert (dead.partition, dead.offset) == (0, 120)
    [error] = dead.errors
    assert error.code == "UNKNOWN_EXCEPTION" and "gave up after 10 attempts" in error.message
    assert h.written() == {order_id(o) for o in range(h.offset)} - {poison}
    assert h.sink.offsets.outstanding() == 0 and len(h.sink.batcher) == 0
    assert h.sink.offsets.committable() == {0: h.offset}


def test_an_outage_of_hours_dead_letters_nothing_and_then_writes_everything(
        harness: Callable[..., Harness]) -> None:
    """Every call fails, whatever its size (503, then connection errors): the sink pauses
    and probes for hours of (fake) time; no record is failed or dead-lettered. Then
    Salesforce is back and everything is written."""
    down = [True]

    def fail(records: list[dict[str, Any]]) -> Exception | None:
        if not down[0]:
            return None
        if len(h.fake.calls) % 2:
            return SalesforceError("Salesforce 503 SERVER_UNAVAILABLE", status=503,
                                   error_code="SERVER_UNAVAILABLE", retryable=True)
        return SalesforceError("Salesforce unreachable: ConnectionError", retryable=True)

    h = harness(fail)
    h.consume(BACKLOG)
    for _ in range(300):
        h.probe()
    assert h.now - 1e9 > 4 * 3600  # hours of outage
    assert {len(c) for c in h.fake.calls[-50:]} == {1}  # probing with one record
    assert h.dead == [] and h.sink.stats.records_written == 0
    assert h.sink.offsets.outstanding() == BACKLOG
    assert all(e.attempts == 0 for chain in h.sink.batcher._pending.values() for e in chain)
    assert "SALESFORCE_UNAVAILABLE" in h.sink.pauses.reasons
    down[0] = False
    before = len(h.fake.calls)
    h.drain(limit=100)
    assert h.dead == [] and h.sink.stats.records_written == BACKLOG
    assert h.sink.offsets.committable() == {0: BACKLOG}
    recovery = [len(c) for c in h.fake.calls[before:]]
    assert len(recovery) <= 25 and max(recovery) >= 64, recovery  # the calls grew back


@pytest.mark.parametrize("error", [
    limit_error(),
    SalesforceAuthError("session refused after re-authentication",
                        error_code="INVALID_SESSION_ID", status=401),
    SalesforceAuthError("JWT bearer login refused: invalid_grant: user is inactive",
                        error_code="invalid_grant", status=400, retryable=False),
], ids=["limit", "session refused", "login refused"])
def test_the_api_limit_or_a_refused_login_do_not_shrink_the_calls(
        harness: Callable[..., Harness], error: SalesforceError) -> None:
    """Failures no smaller call can cure keep the full batch and isolate nothing."""
    h = harness(lambda _records: error)
    h.consume(BACKLOG)
    for _ in range(20):
        h.probe()
    assert {len(c) for c in h.fake.calls} == {200}
    assert h.dead == []
    assert not any(e.isolated for chain in h.sink.batcher._pending.values() for e in chain)


def unavailable_at_random(p: float, seed: int) -> Callable[[list[dict[str, Any]]], Exception | None]:
    """A degraded org: a share ``p`` of calls fails with a 503, whatever they hold."""
    rnd = random.Random(seed)

    def fail(_records: list[dict[str, Any]]) -> Exception | None:
        if rnd.random() < p:
            return SalesforceError("Salesforce 503 SERVER_UNAVAILABLE", status=503,
                                   error_code="SERVER_UNAVAILABLE", retryable=True)
        return None
    return fail


def test_calls_failing_at_random_keep_their_size_and_write_everything(
        harness: Callable[..., Harness]) -> None:
    """60 % of calls fail (503) whatever their records: the calls stay large — failures at
    random halve only the batch that met two in a row, never the size of every call — and
    the backlog is written, nothing dead-lettered. (Before: the global call size halved
    after any two failures in a row and grew back only after three successes in a row, so
    it sank to one record per call: 2,000 of 5,000 written in 600 calls, median size 1.)"""
    h = harness(unavailable_at_random(0.6, seed=5))
    h.consume(5000)
    for _ in range(600):  # one call per 200 ms when not paused
        if not len(h.sink.batcher):
            break
        h.probe(step=0.2)
    sizes = [len(c) for c in h.fake.calls]
    assert h.dead == [] and h.sink.stats.records_written == 5000, len(h.sink.batcher)
    assert h.sink.offsets.committable() == {0: 5000}
    assert statistics.median(sizes) >= 25 and statistics.mean(sizes) >= 50, sizes
    assert len(sizes) <= 250  # at full size and 40 % answered: 5000 / 80 = 63 calls


def test_calls_failing_at_random_dead_letter_nothing_while_outcomes_trickle_in(
        harness: Callable[..., Harness]) -> None:
    """70 % of calls fail at random for hours while one outcome arrives per call: records
    that end up sent alone fail alone now and then, but Salesforce fails more calls than it
    answers, so no lone failure is blamed on the record and nothing is dead-lettered.
    (Before: any answered call since a record's last lone failure blamed it.)"""
    h = harness(unavailable_at_random(0.7, seed=1))
    h.consume(BACKLOG)
    for _ in range(8000):
        h.consume(1)
        h.probe(step=1.0)
    assert h.dead == []
    assert all(e.attempts == 0 for chain in h.sink.batcher._pending.values() for e in chain)
    assert h.sink.stats.records_written >= h.offset - 500, len(h.sink.batcher)


def test_take_sends_a_capped_batch_smaller_and_the_others_at_full_size() -> None:
    """Only the records whose calls kept failing are capped; a call never holds a record
    whose cap is below its size."""
    batcher = Batcher()
    for i in range(8):
        batcher.add(Tracked(0, i, None, None), [RecordUpdate(RecordKey("Order", f"80{i}"), {})],
                    now=i)
    taken = batcher.take(now=10, limit=200)
    for entry in taken:
        entry.cap = 2 if entry.key.record_id in {"800", "801", "802", "805"} else None
        if entry.key.record_id == "803":
            entry.cap = 1
        batcher.retry(entry, not_before=0, count_attempt=False)
    assert [e.key.record_id for e in batcher.take(now=10, limit=200)] == ["800", "801"]
    assert [e.key.record_id for e in batcher.take(now=10, limit=200)] == ["802", "805"]
    assert [e.key.record_id for e in batcher.take(now=10, limit=200)] == ["803"]
    assert [e.key.record_id for e in batcher.take(now=10, limit=200)] == ["804", "806", "807"]
