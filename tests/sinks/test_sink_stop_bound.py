"""A sink's stop ends within its supervisor's grace while Salesforce answers slowly
(lifecycle review). The drain counted its ``SINK_DRAIN_TIMEOUT_S`` from its own start — after
the flush under way at SIGTERM, which could make several calls —, and the close's revoke
flushed for up to ``REVOKE_BUDGET_S`` more, each loop finishing its call past its budget:
with 15 s calls a stop took about 60 s, past the 50 s grace, and the sink was SIGKILLed in
its revoke (what Salesforce had acknowledged then was never committed)."""

from __future__ import annotations

import time
from typing import Any

from confluent_kafka import TopicPartition

from ops.supervisor import STOP_MARGIN_S, stop_grace
from tests.sinks.fakes import FakeCollections
from tests.sinks.test_sink_probing import assigned_sink
from tests.sinks.test_sink_rebalance import Message

CALL_S, DRAIN_S = 0.5, 2.0


def slow_sink(pending: int) -> tuple[Any, FakeCollections]:
    fake = FakeCollections()
    real = fake.update_collection

    def slow(records: list[dict[str, Any]], **kw: Any) -> list[dict[str, Any]]:
        time.sleep(CALL_S)  # Salesforce answering slowly, under SF_TIMEOUT_S
        return real(records, **kw)
    fake.update_collection = slow  # type: ignore[method-assign]
    sink = assigned_sink(fake, [], drain_timeout_s=DRAIN_S, batch_size=2, linger_s=0.0)
    for offset in range(pending):
        sink._handle(Message(0, offset))
    return sink, fake


def test_the_drain_counts_from_the_stop_and_starts_no_call_after_it() -> None:
    sink, fake = slow_sink(40)
    sink.stop()
    time.sleep(1.5)  # the flush under way at SIGTERM: most of the drain's time is gone
    started = time.monotonic()
    sink._drain()
    took = time.monotonic() - started
    # what is left (0.5 s) and one call under way at its end: about 1 s, not the whole
    # SINK_DRAIN_TIMEOUT_S again from the drain's start (2 s and more)
    assert took < DRAIN_S - 0.3, took
    assert 0 < len(fake.calls) < 20 and len(sink.batcher) > 0  # cut short, not finished


def test_a_stopping_sinks_revoke_commits_without_flushing_again() -> None:
    sink, fake = slow_sink(10)
    sink.stop()
    calls = len(fake.calls)
    started = time.monotonic()
    sink._on_revoke(sink.consumer, [TopicPartition(sink.kafka.outcomes, 0)])
    assert time.monotonic() - started < CALL_S
    assert len(fake.calls) == calls


def test_a_revoke_while_running_still_flushes_what_it_can() -> None:
    sink, fake = slow_sink(4)
    sink._on_revoke(sink.consumer, [TopicPartition(sink.kafka.outcomes, 0)])
    assert len(fake.calls) == 2


def test_the_sinks_grace_allows_for_a_call_under_way_at_the_drains_end() -> None:
    assert stop_grace("sink", {}) == 30.0 + 30.0 + STOP_MARGIN_S
    assert stop_grace("sink", {"SF_TIMEOUT_S": "5", "SINK_DRAIN_TIMEOUT_S": "10"}) == \
        10.0 + 5.0 + STOP_MARGIN_S
    assert stop_grace("worker", {"SF_TIMEOUT_S": "5"}) == 20.0 + 5.0 + STOP_MARGIN_S
