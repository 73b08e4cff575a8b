"""``sfprov_sink_end_to_end_lag_seconds`` times write-backs: an outcome that wrote nothing
is not observed. A Duplicate outcome (a replay's, or Salesforce redelivering an event)
carries its event's request time, hours old after a replay; each one observed put the
dashboard's "Approval → written back" p95 at hours while no Order waited."""

from __future__ import annotations

import datetime as dt
import time

from confluent_kafka import TopicPartition

from common.settings import SinkSettings
from sinks import metrics as m
from sinks.app import Sink
from tests.sinks.fakes import FakeCollections
from tests.sinks.helpers import outcome
from tests.sinks.test_sink_rebalance import KAFKA, Message, RevokingConsumer


def _observed(since: str) -> tuple[float, float]:
    """(count, sum) of the histogram's ``since`` series."""
    samples = m.LAG.collect()[0].samples
    count = sum(s.value for s in samples if s.name.endswith("_count")
                and s.labels["since"] == since)
    total = sum(s.value for s in samples if s.name.endswith("_sum")
                and s.labels["since"] == since)
    return count, total


def test_only_outcomes_that_wrote_something_are_timed():
    fake = FakeCollections()
    sink = Sink(KAFKA, SinkSettings.load({}, http_port=0), fake)
    real, sink.consumer = sink.consumer, RevokingConsumer(sink, [])
    real.close()
    sink._on_assign(sink.consumer, [TopicPartition(KAFKA.outcomes, 0)])
    hours_ago = dt.datetime.now(dt.UTC) - dt.timedelta(hours=3)
    before = _observed("requested")
    for offset, status in enumerate(("Duplicate", "Skipped")):
        sink._handle(Message(0, offset, outcome(f"80100000000000000{offset}", status,
                                          requested_at=hours_ago)))
    assert fake.calls == [] and _observed("requested") == before  # nothing written
    sink._handle(Message(0, 2, outcome("801000000000000002", "Provisioned",
                                 opportunity_id="006000000000000002", n=2)))
    deadline = time.monotonic() + 5
    while _observed("requested")[0] == before[0] and time.monotonic() < deadline:
        sink._flush(time.monotonic() + 60)
    count, total = _observed("requested")
    assert fake.calls, "the Provisioned outcome was never written"
    assert count == before[0] + 1  # the written one, timed
    assert total - before[1] < 60  # seconds, not the Duplicate's hours
