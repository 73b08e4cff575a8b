"""Gaps close themselves: the connector re-requests stranded Orders without an operator.

The connector is a fenced singleton (one live instance per ``transactional.id``), so running
reconciliation here means exactly one instance runs it, and its re-requests are written in
the connector's own Kafka transaction: an instance that was fenced cannot write one.

Two triggers, one mechanism (:mod:`common.reconcile`, the same as ``sfprov reconcile``):

* **gap** — the connector recorded a replay gap (its stored replay id was older than
  Salesforce's retention, or it opened a LATEST stream again before a position was
  committed). Once the resubscription was accepted (its first answer, or
  ``connectors.source.GAP_ARM_OPEN_S`` open unrefused) and delivered what Salesforce still
  had (no event written for :data:`GAP_SETTLE_S` since), the Orders last changed before the gap
  was found (before a LATEST resubscription was accepted: what was published until then is
  skipped too) that are ``Activating`` with no request in Kafka are re-requested, whatever
  their age. A connector that starts finds the last gap recorded in the last :data:`GAP_REARM_S` and
  plans the pass again (its instance may have stopped before the pass ran: a pass finding
  nothing stranded re-requests nothing).
* **periodic** — every ``CONNECTOR_RECONCILE_INTERVAL_S`` (first pass one interval after the
  start), Orders ``Activating`` and unchanged for ``CONNECTOR_RECONCILE_OLDER_THAN_S`` with
  no request since their last change, or whose latest request has no outcome although the
  worker's group consumed past it — covering events lost anywhere.

A pass that cannot read the topics whole (the schema registry or a broker away) fails —
logged, counted, tried again — instead of taking the Orders it did not read for stranded.
A failed gap pass is tried again after a backoff (:data:`GAP_RETRY_S`, doubling up to
``CONNECTOR_RECONCILE_INTERVAL_S``, or :data:`GAP_RETRY_MAX_S` when that is 0), and a
periodic pass due meanwhile runs; one that gets through makes the gap pass due at once.
Retried at each turn, a gap pass Salesforce kept refusing (the day's API limit spent, a
field missing) cost a query every ~11 s and held every periodic pass back.

Division of work: a thread of its own queries Salesforce and reads the topics (slow, never in
the connector's loop); the connector's loop calls :meth:`Reconciler.write_due` each turn,
which writes a finished plan's requests (at most ``CONNECTOR_RECONCILE_MAX_PER_PASS``, oldest
first; the rest wait for the next pass) in one transaction, then logs each re-request
(``order_id``, ``re-requested``) and counts them. No pass is planned while a plan waits for
that write or is being written (until its transaction commits, a read_committed pass does not
see its re-requests and planned the same Orders again): a pass due meanwhile runs after it.
They show in ``sfprov trace`` as events ``RequestedBy__c = sfprov reconciler (gap|periodic)``.
A write that fails retryably (a broker blip, a transaction timed out) keeps the plan, with
the very records it tried, for the loop's next turn: the gap that planned it is no longer
pending, and with ``CONNECTOR_RECONCILE_INTERVAL_S=0`` no later pass would find those Orders.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import Counter, Gauge

from common.avro import AvroSerde, registry_for
from common.backoff import Backoff
from common.reconcile import Plan, QueryClient, find_stranded, request_record, sf_time
from common.settings import ConnectorSettings, KafkaSettings

log = logging.getLogger("connectors.reconciler")
GAP_SETTLE_S = 10.0
MAX_REREQUESTS = 3  # re-requests of one Order by this process before it is left to an operator
GAP_SETTLE_MAX_S = 300.0  # traffic that never pauses for GAP_SETTLE_S: run the gap pass anyway
GAP_REARM_S = 72 * 3600.0  # a gap recorded this recently is passed again at start-up
GAP_RETRY_S = 10.0  # the first wait before a failed gap pass is tried again
GAP_RETRY_MAX_S = 600.0  # the longest wait before a failed gap pass, without periodic passes
#: Orders remembered as decided and unchanged (find_stranded's ``settled``); past it, no more
#: are added (a pass then reads as it did without them)
SETTLED_MAX = 100_000

REQUESTS = Counter("sfprov_connector_reconcile_requests_total",
                   "Stranded Orders re-requested by the connector's reconciliation, by "
                   "trigger (gap|periodic).", ["trigger"])
PASSES = Counter("sfprov_connector_reconcile_passes_total",
                 "Reconciliation passes, by trigger and result (ok|error).",
                 ["trigger", "result"])
STRANDED = Gauge("sfprov_connector_reconcile_stranded_orders",
                 "Stranded Orders the last pass found (including those deferred by the "
                 "per-pass limit), by trigger.", ["trigger"])
LAST_PASS = Gauge("sfprov_connector_reconcile_last_pass_timestamp_seconds",
                  "When the last reconciliation pass finished (unix time), by trigger.",
                  ["trigger"])
#: the label values REQUESTS and PASSES are counted with (see _run and _pass)
TRIGGERS = ("gap", "periodic")
RESULTS = ("ok", "error")


def prime() -> None:
    """REQUESTS and PASSES at zero for every trigger and result, from the connector's start
    (:func:`connectors.metrics.prime`): the alert rules' ``increase()`` misses a first
    event otherwise."""
    for trigger in TRIGGERS:
        REQUESTS.labels(trigger)
        for result in RESULTS:
            PASSES.labels(trigger, result)


Record = tuple[str, bytes, bytes, list[tuple[str, bytes]]]


class Reconciler:
    def __init__(self, kafka: KafkaSettings, settings: ConnectorSettings, sf: QueryClient, *,
                 worker_group: str, written: Callable[[], int],
                 clock: Callable[[], float] = time.time) -> None:
        self.kafka, self.settings, self.sf = kafka, settings, sf
        self.worker_group = worker_group
        self._written = written  # events the connector wrote so far (gap settling)
        self._clock = clock
        self._serde = AvroSerde("provision_request", topic=kafka.requests,
                                registry=registry_for(kafka))
        self._gap_at: float | None = None
        # a failed gap pass is tried again no sooner than this (unix time), backing off
        interval = settings.reconcile_interval_s
        self._gap_backoff = Backoff(GAP_RETRY_S, max(GAP_RETRY_S, interval if interval > 0
                                                     else GAP_RETRY_MAX_S), jitter=False)
        self._gap_retry_at = 0.0
        self._requested: dict[str, int] = {}  # Order → re-requests written by this process
        # Order → its LastModifiedDate when a pass found its request decided: left out of
        # the next passes until it changes (find_stranded's ``settled``)
        self._settled: dict[str, str] = {}
        # (trigger, orders, their records once built: a retry writes the same ones) to write
        self._ready: tuple[str, list[str], list[Record] | None] | None = None
        # a plan taken out of _ready is being written: its transaction is open, and a
        # read_committed pass would not see its re-requests (it planned them again)
        self._writing = False
        self._lock = threading.Lock()  # _ready, _writing and _requested's keys
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="reconciler", daemon=True)

    def start(self) -> Reconciler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def gap_recorded(self, at: float | None = None) -> None:
        """The connector recorded a replay gap (at ``at``, unix time; now if None): plan a
        gap pass once replay settles, for the Orders last changed before it (the later of
        two gaps not yet passed: its pass covers the earlier one's Orders too)."""
        at = self._clock() if at is None else at
        self._gap_at = at if self._gap_at is None else max(self._gap_at, at)
        self._wake.set()

    # -- called by the connector's loop --------------------------------------------------

    def write_due(self, write: Callable[[list[Record]], None]) -> int:
        """Write a finished plan's requests with ``write`` (one transaction); returns how
        many. Raises what ``write`` raises. A retryable error keeps the plan for the next
        call (unless a newer one took its place), with the same records: the transaction
        that failed was aborted, so they are written once — and were it ever in doubt, a
        second copy has the first one's ``IdemKey__c`` and event uuid, which the worker
        deduplicates. Any other error drops the plan: it would fail again on every turn of
        the connector's loop (a non-retryable Kafka error ends the connector anyway)."""
        with self._lock:
            ready, self._ready = self._ready, None
            if not ready:
                return 0
            self._writing = True  # until the write ends: the planning thread waits (_run)
        trigger, orders, records = ready
        try:
            if records is None:
                now_ms = int(self._clock() * 1000)
                records = [request_record(self.kafka, oid, source=f"reconcile-{trigger}",
                                          requested_by=f"sfprov reconciler ({trigger})",
                                          now_ms=now_ms, serde=self._serde) for oid in orders]
            write(records)
            with self._lock:  # counted before the next pass can be planned
                for oid in orders:
                    self._requested[oid] = self._requested.get(oid, 0) + 1
        except Exception as exc:
            if getattr(exc, "retryable", False):
                with self._lock:
                    if self._ready is None:
                        self._ready = (trigger, orders, records)
                log.warning("reconciliation (%s pass): writing %d re-requests failed (%s); "
                            "they are written after the connector resubscribes", trigger,
                            len(orders), exc, extra={"cause": trigger})
            else:
                log.error("reconciliation (%s pass): writing %d re-requests failed (%s); "
                          "the next pass finds the Orders again", trigger, len(orders), exc,
                          extra={"cause": trigger})
            raise
        finally:
            with self._lock:
                self._writing = False
        REQUESTS.labels(trigger).inc(len(records))
        for oid in orders:
            log.warning("stranded Order re-requested (%s pass)", trigger,
                        extra={"order_id": oid, "status": "Activating", "cause": trigger})
        return len(records)

    # -- the planning thread -------------------------------------------------------------

    def _run(self) -> None:
        interval = self.settings.reconcile_interval_s
        next_periodic = self._clock() + interval if interval > 0 else float("inf")
        while not self._stop.is_set():
            self._wake.wait(timeout=1.0)
            self._wake.clear()
            if self._stop.is_set():
                return
            with self._lock:
                # the loop has not written the last plan yet, or is writing it: its
                # transaction still open, a pass would not see its re-requests and plan
                # the same Orders again (the pass runs once the write is done)
                busy = self._ready is not None or self._writing
            if busy:
                continue
            trigger = "periodic"
            try:
                if self._gap_at is not None and self._clock() >= self._gap_retry_at \
                        and self._gap_settled():
                    trigger, gap_at, self._gap_at = "gap", self._gap_at, None
                    self._pass("gap", older_than_s=0.0, changed_before=gap_at)
                elif self._clock() >= next_periodic:
                    next_periodic = self._clock() + interval
                    self._pass("periodic", older_than_s=self.settings.reconcile_older_than_s)
            except Exception:  # noqa: BLE001 - a pass must never end the planning thread
                PASSES.labels(trigger, "error").inc()
                log.exception("reconciliation: a pass failed unexpectedly; the next one runs "
                              "as planned")

    def _gap_settled(self) -> bool:
        """True once no event was written for GAP_SETTLE_S (the replay after the gap ended),
        or after GAP_SETTLE_MAX_S of steady traffic (new approvals after the replay would
        otherwise hold the gap pass, and every periodic pass behind it, for as long as they
        last)."""
        count, since = self._written(), self._clock()
        started = since
        while self._clock() - since < GAP_SETTLE_S:
            if self._stop.wait(1.0):
                return False
            if self._clock() - started >= GAP_SETTLE_MAX_S:
                return True
            if self._written() != count:
                count, since = self._written(), self._clock()
        return True

    def _pass(self, trigger: str, **kwargs: Any) -> None:
        try:
            plan = find_stranded(self.sf, self.kafka, consumed_by=self.worker_group,
                                 settled=dict(self._settled), **kwargs)
        except Exception as exc:  # noqa: BLE001 - Salesforce/Kafka away: the next pass retries
            PASSES.labels(trigger, "error").inc()
            log.warning("reconciliation pass (%s) failed: %s", trigger, exc,
                        extra={"cause": repr(exc)})
            if trigger == "gap":  # try again, after a backoff
                self._gap_at = self._gap_at or kwargs.get("changed_before")
                self._gap_retry_at = self._clock() + self._gap_backoff.next_delay()
            return
        # Salesforce and the topics answered: a gap pass waiting out its backoff is due now
        self._gap_backoff.reset()
        self._gap_retry_at = 0.0
        PASSES.labels(trigger, "ok").inc()
        LAST_PASS.labels(trigger).set(time.time())
        STRANDED.labels(trigger).set(len(plan.stranded))
        if trigger == "periodic":  # forget Orders no longer Activating (the dict's bound)
            with self._lock:
                self._requested = {oid: n for oid, n in self._requested.items()
                                   if oid in plan.candidates}
            still = set(plan.settled)
            self._settled = {oid: at for oid, at in self._settled.items() if oid in still}
        if len(self._settled) + len(plan.decided) <= SETTLED_MAX:
            self._settled.update(plan.decided)
        eligible = self._eligible(plan)
        chosen = self._limit(plan, eligible)
        if trigger == "gap" and len(chosen) < len(eligible):
            # the rest of the gap's Orders in the next gap pass (re-requested ones are no
            # longer stranded): a gap never waits for a periodic pass, which may be off
            self._gap_at = self._gap_at or kwargs.get("changed_before")
        log.info("reconciliation pass (%s): %d Activating, %d candidates, %d without a "
                 "request, %d without an outcome; re-requesting %d", trigger, plan.activating,
                 len(plan.candidates), len(plan.no_request), len(plan.undecided), len(chosen),
                 extra={"count": len(chosen)})
        if chosen:
            with self._lock:
                self._ready = (trigger, chosen, None)

    def _eligible(self, plan: Plan) -> list[str]:
        """The stranded Orders this process has not re-requested :data:`MAX_REREQUESTS`
        times: one whose every request ends as a dead letter (no outcome: stranded again)
        would otherwise be re-requested by every pass, and, oldest first, crowd out the
        Orders behind it."""
        eligible = []
        for oid in plan.stranded:
            count = self._requested.get(oid, 0)
            if count < MAX_REREQUESTS:
                eligible.append(oid)
            elif count == MAX_REREQUESTS:
                self._requested[oid] = count + 1  # said once
                log.error("Order re-requested %d times and still stranded: not re-requested "
                          "again by this process (see `sfprov trace` and its dead letters)",
                          MAX_REREQUESTS, extra={"order_id": oid, "status": "Activating"})
        return eligible

    def _limit(self, plan: Plan, eligible: list[str]) -> list[str]:
        """At most CONNECTOR_RECONCILE_MAX_PER_PASS of ``eligible``: the least re-requested
        first, then the oldest."""
        ranked = sorted(eligible, key=lambda oid: (self._requested.get(oid, 0), sf_time(
            plan.candidates[oid].get("LastModifiedDate"))))
        return ranked[:self.settings.reconcile_max_per_pass]
