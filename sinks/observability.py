"""The sink's probes, lag gauge and trace spans, apart from its loop (see :mod:`common.probes`,
:mod:`common.lagmetrics`, :mod:`common.tracing`).

* ``/livez``: the poll loop beat within :data:`common.probes.LIVENESS_SILENCE_S` (it polls
  even while paused, so a long limit pause is alive; a Salesforce call beats as it starts
  and ends, and counts as a beat until its worst case — four ``SF_TIMEOUT_S`` — is over:
  ``sinks.beating.BeatingClient``).
* ``/readyz``: it can write back now — started (its consumer's first assignment came, an
  empty one too: the group joined), not paused for Salesforce's API limit or an outage,
  the dead-letter producer not failed, the group's offsets readable from Kafka.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from common import tracing
from common.lag import lag_reader
from common.lagmetrics import LagPublisher
from common.probes import LIVENESS_SILENCE_S, failing_for, loop_liveness, readiness
from sinks.pausing import LIMIT, OUTAGE

if TYPE_CHECKING:
    from sinks.app import Sink
    from sinks.batch import Entry, Tracked


class SinkOps:
    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        group, topic = sink.kafka.topic(sink.settings.group_id), sink.kafka.outcomes
        self.lag = LagPublisher(lag_reader(sink.kafka, group, topic),
                                group=group, topic=topic)
        self.spans = tracing.OpenSpans()

    def start(self) -> SinkOps:
        self.lag.start()
        return self

    def live(self) -> tuple[bool, dict[str, Any]]:
        # a beat ahead (a Salesforce call under way, within its bound) is no silence
        silent = max(0.0, time.monotonic() - self.sink._heartbeat)
        return loop_liveness(silent, LIVENESS_SILENCE_S, "poll loop")

    def ready(self) -> tuple[bool, dict[str, Any]]:
        sink = self.sink
        _ok, details = sink.health()
        now = time.monotonic()
        reasons = sink.pauses.reasons
        return readiness([
            # a first poll returns after its timeout whether or not the group was joined:
            # the first assignment (Sink._on_assign) is what says the consumer works
            ("starting", sink.started,
             "waiting for the consumer group's first assignment (Kafka reachable, the group "
             "joined)"),
            ("salesforce", LIMIT not in reasons,
             f"API limit reached (REQUEST_LIMIT_EXCEEDED); resuming in "
             f"{max(0.0, reasons.get(LIMIT, now) - now):.0f} s"),
            ("salesforce_reachable", OUTAGE not in reasons,
             "Salesforce unavailable; retrying with backoff"),
            ("kafka", sink.dead_letters.failure is None and
             not failing_for(self.lag.error_since),
             f"Kafka: {sink.dead_letters.failure or self.lag.last_error}"),
            # the loop's own check: a dead-letter producer's failure is the kafka check's
            ("loop", now - sink._heartbeat < LIVENESS_SILENCE_S,
             f"poll loop silent for {now - sink._heartbeat:.0f} s"),
        ], details)

    # -- tracing hooks ---------------------------------------------------------------

    def taken(self, tracked: Tracked, headers: Any) -> None:
        if tracing.enabled() and tracked.outcome is not None:
            self.spans.start((tracked.partition, tracked.offset), "sink.write_back",
                             headers=headers, order_id=tracked.outcome.get("order_id"),
                             correlation_id=tracked.outcome.get("correlation_id"),
                             status=tracked.outcome.get("status"))

    def called(self, entries: list[Entry], seconds: float, result: str) -> None:
        if tracing.enabled():
            spans = {id(s): s for e in entries for t in e.sources
                     if (s := self.spans._by_key.get((t.partition, t.offset))) is not None}
            tracing.call_span("salesforce.composite_update", spans.values(), seconds,
                              result=result, records=len(entries))

    def completed(self, tracked: Tracked) -> None:
        self.spans.finish((tracked.partition, tracked.offset),
                          error_code=tracked.errors[0].code if tracked.errors else None)

    def forget(self, partitions: set[int]) -> None:
        """The partitions were revoked or lost: the spans of their outcomes still open end
        now, marked ``sfprov.revoked`` (the new owner traces its own write-back)."""
        for key in [k for k in self.spans.open_keys()
                    if isinstance(k, tuple) and k[0] in partitions]:
            self.spans.finish(key, revoked=True)
