"""The worker's operational surface, apart from its flow: probes, gauges, tracing.

The flow (:mod:`streams.app`) feeds it through a few calls:

* :meth:`WorkerOps.event_started` when an event is taken, :meth:`WorkerOps.event_finished`
  once it leaves the worker — the in-flight set behind
  ``sfprov_worker_oldest_unfinished_event_age_seconds`` and the ``worker.event`` span;
* :meth:`WorkerOps.outcome_headers` for each outcome record (its ``traceparent``);
* :meth:`WorkerOps.salesforce_observer` / :meth:`WorkerOps.whmcs_observer` as the clients'
  observers (the metrics as before, plus child spans).

:meth:`WorkerOps.ready` and :meth:`WorkerOps.live` answer ``/readyz`` and ``/livez``;
:meth:`WorkerOps.start` starts the loop heartbeat and the lag gauges. ``/readyz`` says
``starting`` until faust's first rebalance has ended, its tables restored (:class:`StartUp`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import faust
from prometheus_client import Gauge

from common import tracing
from common.inflight import InFlight
from common.lag import lag_reader
from common.lagmetrics import LagPublisher
from common.metrics import reads_while_alive
from common.probes import Heartbeat, failing_for, readiness
from streams import faust_seam, metrics
from streams.guard import reading_orders

if TYPE_CHECKING:
    from streams.app import Worker

OLDEST_UNFINISHED = Gauge("sfprov_worker_oldest_unfinished_event_age_seconds",
                          "Age (since it entered Kafka) of the oldest event this worker has "
                          "taken and not yet finished; 0 when none.")
IN_FLIGHT = Gauge("sfprov_worker_events_in_flight", "Events taken and not yet finished.")
WHMCS_REFUSED = Gauge("sfprov_worker_whmcs_access_refused",
                      "1 while WHMCS refuses this installation's credentials, IP or API role.")
ROCKSDB_SAMPLE_S = 5.0
ROCKSDB_BYTES = Gauge("sfprov_worker_rocksdb_bytes",
                      "Memory RocksDB holds for the tables, by kind: memtables, table_readers "
                      "(indexes and filters outside the cache), block_cache (shared); "
                      "sampled every 5 s.",
                      ["kind"])
SF_UNAVAILABLE = Gauge("sfprov_worker_salesforce_unavailable",
                       "1 while the guard's Salesforce queries fail (retried).")


class StartUp(faust.Sensor):
    """The worker's start-up, over when faust's first rebalance has ended: the app started,
    joined the group and recovered the tables of what it was given (an empty assignment
    too, more workers than partitions), its streams resumed — ``on_rebalance_end``, faust's
    hook for "rebalance fully completed (including recovery)". Out of the app's sensors once
    it fired: no per-event sensor call reaches it after."""

    done = False

    def on_rebalance_end(self, app: Any, state: dict[Any, Any]) -> None:
        if self.done:
            return
        self.done = True
        with contextlib.suppress(RuntimeError):  # no loop running: it stays, a no-op
            # after the loop over the sensors that called it
            asyncio.get_running_loop().call_soon(app.sensors.remove, self)


class WorkerOps:
    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.start_up = StartUp()
        worker.app.sensors.add(self.start_up)  # before faust's first rebalance starts
        self.inflight = InFlight()
        self.spans = tracing.OpenSpans()
        self.heartbeat = Heartbeat()
        group, topic = worker.kafka.topic(worker.settings.app_id), worker.kafka.requests
        self.lag = LagPublisher(lag_reader(worker.kafka, group, topic),
                                group=group, topic=topic)
        OLDEST_UNFINISHED.set_function(reads_while_alive(
            self, lambda ops: ops.inflight.oldest_unfinished_age() or 0.0))
        IN_FLIGHT.set_function(reads_while_alive(self, lambda ops: len(ops.inflight)))
        WHMCS_REFUSED.set_function(reads_while_alive(
            self, lambda ops: int(ops.worker.provisioner.access_refused_since is not None)))
        SF_UNAVAILABLE.set_function(reads_while_alive(
            self, lambda ops: int(ops.worker.guard.unavailable_since is not None)))
        self.rocksdb_held: dict[str, int] = {}

        def held(kind: str) -> Callable[[WorkerOps], float]:
            return lambda ops: ops.rocksdb_held.get(kind, 0)
        for kind in ("memtables", "table_readers", "block_cache"):
            ROCKSDB_BYTES.labels(kind).set_function(reads_while_alive(self, held(kind)))

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.heartbeat.install_on(loop)
        self.lag.start()
        loop.call_soon(self._sample_rocksdb, loop)

    def _sample_rocksdb(self, loop: asyncio.AbstractEventLoop) -> None:
        """Read RocksDB's memory on the loop's thread, where faust opens and closes the DBs
        (a scrape, on the HTTP server's thread, could meet a DB being closed)."""
        with contextlib.suppress(Exception):
            self.rocksdb_held = faust_seam.rocksdb_memory((self.worker.idem,
                                                           self.worker.intents))
        loop.call_later(ROCKSDB_SAMPLE_S, self._sample_rocksdb, loop)

    # -- the flow's calls ------------------------------------------------------------------

    def event_started(self, message: Any, *, of_order: bool = True) -> None:
        """An event taken; ``of_order`` False: its span is not found by its Order (a dead
        letter, which runs outside the Order's lane), though it carries the Order's id."""
        key = (message.partition, message.offset)
        self.inflight.started(key, since=getattr(message, "timestamp", None))
        if tracing.enabled():
            order_id = message.key.decode(errors="replace") if message.key else None
            self.spans.start(key, "worker.event", headers=message.headers, order_id=order_id,
                             by_order=of_order, partition=message.partition,
                             offset=message.offset)

    def event_finished(self, message: Any) -> None:
        key = (message.partition, message.offset)
        self.inflight.finished(key)
        self.spans.finish(key)

    def outcome_headers(self, outcome: dict[str, Any]) -> dict[str, bytes]:
        span = self.spans.of_order(outcome.get("order_id"))
        if span is None:
            return {}
        for key in ("status", "error_code", "correlation_id"):
            if outcome.get(key):
                span.set_attribute(f"sfprov.{key}", outcome[key])
        return dict(tracing.headers_of(span))

    def salesforce_observer(self, seconds: float, result: str) -> None:
        metrics.salesforce_observer(seconds, result)
        if tracing.enabled():
            tracing.call_span("salesforce.query", self.spans.of_orders(
                reading_orders()), seconds, result=result)

    def whmcs_observer(self, action: str, seconds: float, result: str) -> None:
        metrics.whmcs_observer(action, seconds, result)
        if tracing.enabled():
            tracing.call_span(f"whmcs.{action}",
                              [self.spans.of_order(tracing.current_order())], seconds,
                              result=result)

    # -- probes ------------------------------------------------------------------------

    def live(self) -> tuple[bool, dict[str, Any]]:
        return self.heartbeat.check()

    def ready(self) -> tuple[bool, dict[str, Any]]:
        w = self.worker
        provisioner = w.provisioner
        now, grace = time.time(), w.settings.ready_grace_s
        starting_why = (f"restoring the tables of its first assignment (requests partitions "
                        f"{sorted(w.assigned)}) before it takes events"
                        if w.app.rebalancing else
                        "waiting for the faust app to start and join the consumer group")
        return readiness([
            ("starting", self.start_up.done, starting_why),
            ("broker", not failing_for(self.lag.error_since, grace, now=now),
             f"cannot read the group's offsets from Kafka: {self.lag.last_error}"),
            ("salesforce", not failing_for(w.guard.unavailable_since, grace, now=now),
             f"Salesforce queries fail: {w.guard.last_error}"),
            ("whmcs", not failing_for(provisioner.access_refused_since, grace, now=now),
             f"WHMCS refuses this installation's credentials, IP or API role: "
             f"{provisioner.access_error}"),
            # outcomes or dead letters not acknowledged (an offline leader, under min ISR, a
            # deleted topic): the events wait in flight, which the stall watchdog counts as
            # progress, so only this says why nothing finishes
            self._kafka_write_check(now, grace),
            # a chunk of events waits for its writer's schema (retried, no event taken)
            ("schema_registry",
             not failing_for(w.registry_unavailable_since, grace, now=now),
             f"{w.registry_last_error}"),
            # a wedged loop takes nothing in and finishes nothing: /healthz (compose, make
            # up) said ready while /livez alone said so, and events in flight kept the
            # stall watchdog from firing (as the sink's readiness has its poll loop)
            self._loop_check(),
        ], w.details())

    def _kafka_write_check(self, now: float, grace: float) -> tuple[str, bool, str]:
        since, error = self.worker.emitter.failing_since()
        return ("kafka_write", not failing_for(since, grace, now=now),
                f"writes to Kafka not acknowledged: {error}")

    def _loop_check(self) -> tuple[str, bool, str]:
        alive, details = self.heartbeat.check()
        return ("loop", alive,
                f"event loop silent for {details.get('loop_silent_s', 0):.0f} s: wedged")
