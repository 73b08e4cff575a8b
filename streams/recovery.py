"""The sweep: nothing stays half-done, and the dedupe memory stays bounded.

Runs at start-up and every ``WORKER_SWEEP_INTERVAL_S`` over the Orders of partitions this
worker actively owns. It reads the tables without holding the batches' lock, yielding to the
event loop as it goes, and takes the lock only to act on the entries that need it (re-read
and re-checked under the lock), so it never overlaps a batch's changes. The tables tell the
sweep of every change (:attr:`streams.tables.DurableTable.watch`), so a sweep reads only
the entries that may need action — pending intents and unsent outcomes; the whole tables
are read at the first sweep, after a new assignment, and every 6 hours (dedupe expiry).
Reading 60,000 entries took the event loop ~2.6 s (a gap in the backlog drain of
``make bench``); the indexed sweep reads a handful:

* an intent still ``pending`` after ``WORKER_RECOVERY_AFTER_S`` (its event was not
  redelivered — e.g. it was dead-lettered by the catch-all) → WHMCS lookup on the
  ``sfOrderId=`` marker: found Pending → AcceptOrder; found Active → ``Provisioned``
  (``recovered``); absent → ``Failed(PROVISIONING_INTERRUPTED)``. The sweep never calls
  ``AddOrder``: creating needs the Order's current data, and the Flow's retry path exists
  for that. The outcome is recorded like a batch's (idem entry + intent, flush, send), so
  a late redelivery of the event emits nothing new;
* an outcome recorded but never acknowledged as sent (``emitted`` false) for that long →
  sent again, identical;
* idem entries older than ``WORKER_DEDUPE_TTL_DAYS`` and finished intents older than that
  are deleted (tombstones in the changelog) — pending intents are never deleted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from common.errors import WhmcsError
from streams import metrics
from streams.batch import BatchProcessor
from streams.decide import ACCEPTED, FAILED_STATE, PENDING, Event, outcome_record, sends_until
from streams.lease import Fenced
from streams.mapping import WhmcsOrderRequest
from streams.provision import Fence, no_fence

log = logging.getLogger(__name__)
DAY_MS = 24 * 3600 * 1000
SCAN_SLICE = 500  # table entries read between two yields to the event loop, at most
SCAN_BUDGET_S = 0.005  # and at most this long (faust's RocksDB store: ~55 µs per entry)
FULL_SCAN_EVERY_S = 6 * 3600  # the whole tables: dedupe expiry, and a check of the index


class _Slicer:
    """Yields to the event loop every ``SCAN_SLICE`` entries or ``SCAN_BUDGET_S``, whichever
    comes first, for as long as the slice took: the scan gets at most half of the loop. A bare
    ``sleep(0)`` after 20 ms slices gave it ~95 %: every await of a batch (guard query, WHMCS
    calls, broker acks) waited a slice, and a 0.9 s scan still delayed Orders by 1 s."""

    def __init__(self) -> None:
        self.started = self.since = time.perf_counter()
        self.count = 0
        self.slices = 0
        self.longest = 0.0

    async def tick(self) -> None:
        self.count += 1
        now = time.perf_counter()
        if self.count >= SCAN_SLICE or now - self.since >= SCAN_BUDGET_S:
            self.longest = max(self.longest, now - self.since)
            self.slices += 1
            await asyncio.sleep(now - self.since)
            self.count, self.since = 0, time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.started


async def _keys(table: Any, slicer: _Slicer) -> list[str]:
    """The table's keys, read a slice at a time. Not ``list(table.keys())``: ``list()`` asks
    ``len()`` first, which faust's RocksDB store answers by iterating every key of every
    partition, and then reads them all again — both in one go on the event loop: 2 s with
    10,000 Orders, every batch waiting (the p99 of ``make bench``). RocksDB iterators read a
    snapshot, so the table may change while the scan yields; a dict-backed table (memory://,
    tests) raises instead, and is then listed at once (fast for a dict)."""
    keys: list[str] = []
    try:
        for key in table:
            keys.append(key)
            await slicer.tick()
    except RuntimeError:  # "dictionary changed size during iteration"
        return [*table]
    return keys


class _NoLock:
    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc: object) -> None:
        return None


@dataclass
class SweepReport:
    recovered: int = 0
    interrupted: int = 0
    resent: int = 0
    expired_idem: int = 0
    expired_intents: int = 0
    pending: int = 0


class Sweeper:
    def __init__(self, processor: BatchProcessor, *, recovery_after_s: float,
                 dedupe_ttl_days: float, owns: Callable[[str], bool],
                 full_scan_every_s: float = FULL_SCAN_EVERY_S,
                 fence_for: Callable[[str], Fence] = lambda _oid: no_fence) -> None:
        self.processor = processor
        self.fence_for = fence_for  # the ownership lease of an Order's partition, now
        self.recovery_after_ms = int(recovery_after_s * 1000)
        self.ttl_ms = int(dedupe_ttl_days * DAY_MS)
        self.owns = owns
        self.full_scan_every_ms = int(full_scan_every_s * 1000)
        # The index (see watch_intent/watch_idem), rebuilt by each full scan and kept up to
        # date by the tables; a state without change reports (DictState) is always scanned.
        self.pending: set[str] | None = None
        self.unemitted: set[str] | None = None
        self.last_full_scan_ms: int | None = None
        self.full_scans = 0
        self.rescans = 0  # a rescan asked for during a full scan still counts afterwards

    # -- the index of entries the sweep must look at -----------------------------------

    def watch_intent(self, oid: str, intent: Any) -> None:
        if self.pending is None:
            self.pending = set()
        if isinstance(intent, dict) and intent.get("state") == PENDING:
            self.pending.add(oid)
        else:
            self.pending.discard(oid)

    def watch_idem(self, oid: str, entries: Any) -> None:
        if self.unemitted is None:
            self.unemitted = set()
        if isinstance(entries, dict) and any(
                isinstance(e, dict) and not e.get("emitted") and e.get("outcome")
                for e in entries.values()):
            self.unemitted.add(oid)
        else:
            self.unemitted.discard(oid)

    def rescan(self) -> None:
        """Make the next sweep a full scan (new partitions: entries the index never saw)."""
        self.last_full_scan_ms = None
        self.rescans += 1

    async def run_once(self, lock: asyncio.Lock | None = None) -> SweepReport:
        """One sweep. The scan holds no lock and yields to the event loop every
        :data:`SCAN_SLICE` entries or :data:`SCAN_BUDGET_S` (a table of 100,000 Orders must
        not stop the batches for seconds); only the few entries that need action are handled
        under ``lock`` (the batches' lock), each re-read and re-checked first."""
        report = SweepReport()
        proc = self.processor
        state = proc.state
        now = proc._clock()
        watched = getattr(state, "watched", False)  # the tables report every change
        if watched and self.last_full_scan_ms is not None and \
                now - self.last_full_scan_ms < self.full_scan_every_ms:
            return await self._run_indexed(report, now, lock)
        self.pending, self.unemitted = set(), set()  # rebuilt by this scan
        due, stale_intents, idem_dirty = [], [], []
        rescans = self.rescans
        slicer = _Slicer()
        intent_keys = await _keys(state.intents, slicer)
        for oid in intent_keys:
            await slicer.tick()
            intent = state.intents.get(oid)
            self.watch_intent(oid, intent)
            if not intent or not self.owns(oid):
                continue
            if intent.get("state") == PENDING:
                report.pending += 1
                if now - int(intent.get("at") or 0) >= self.recovery_after_ms:
                    due.append(oid)
            elif now - int(intent.get("at") or 0) > self.ttl_ms:
                stale_intents.append(oid)
        idem_keys = await _keys(state.idem, slicer)
        for oid in idem_keys:
            await slicer.tick()
            entries = state.idem.get(oid)
            self.watch_idem(oid, entries)
            if entries and self.owns(oid) and self._idem_work(entries, now):
                idem_dirty.append(oid)
        if self.rescans == rescans:  # only a completed scan of the current assignment
            self.last_full_scan_ms = now
        self.full_scans += 1
        log.info("sweep: full scan of %d intents and %d dedupe entries in %.0f ms, "
                 "%d slices, the longest %.0f ms", len(intent_keys), len(idem_keys),
                 slicer.elapsed() * 1000, slicer.slices, slicer.longest * 1000,
                 extra={"count": len(intent_keys) + len(idem_keys),
                        "duration_ms": round(slicer.elapsed() * 1000)})
        if not (due or stale_intents or idem_dirty):
            metrics.PENDING_INTENTS.set(report.pending)
            return report
        async with lock or _NoLock():
            return await self._act(report, now, due, stale_intents, idem_dirty)

    async def _run_indexed(self, report: SweepReport, now: int,
                           lock: asyncio.Lock | None) -> SweepReport:
        """Only the entries the index names: pending intents and unsent outcomes."""
        state = self.processor.state
        assert self.pending is not None and self.unemitted is not None
        due = []
        for oid in list(self.pending):
            intent = state.intents.get(oid)
            if intent and intent.get("state") == PENDING and self.owns(oid):
                report.pending += 1
                if now - int(intent.get("at") or 0) >= self.recovery_after_ms:
                    due.append(oid)
        idem_dirty = [oid for oid in list(self.unemitted)
                      if (entries := state.idem.get(oid)) and self.owns(oid)
                      and self._idem_work(entries, now)]
        if not (due or idem_dirty):
            metrics.PENDING_INTENTS.set(report.pending)
            return report
        async with lock or _NoLock():
            return await self._act(report, now, due, [], idem_dirty)

    def _idem_work(self, entries: dict[str, Any], now: int) -> bool:
        for entry in entries.values():
            age = now - int(entry.get("at") or 0)
            if age > self.ttl_ms:
                return True
            if not entry.get("emitted") and entry.get("outcome") and \
                    age >= self.recovery_after_ms:
                return True
        return False

    async def _act(self, report: SweepReport, now: int, due: list[str],
                   stale_intents: list[str], idem_dirty: list[str]) -> SweepReport:
        proc = self.processor
        state = proc.state
        outcomes: list[tuple[str, str, str | None, dict[str, Any]]] = []
        for oid in due:
            intent = state.intents.get(oid)  # re-read: a batch may have settled it
            if not intent or intent.get("state") != PENDING or oid in proc.in_flight or \
                    now - int(intent.get("at") or 0) < self.recovery_after_ms:
                continue
            entry = (state.idem.get(oid) or {}).get(intent.get("idem_key"))
            if entry and entry.get("outcome") and proc.settle_intent(
                    oid, intent.get("idem_key"), entry.get("event_uuid"), entry["outcome"]):
                continue  # decided before a crash cut step 5 short; its entry re-sends it
            outcome = await self._recover(oid, intent)
            if outcome is not None:
                outcomes.append((oid, intent["idem_key"], intent.get("event_uuid"), outcome))
                if outcome["status"] == "Provisioned":
                    report.recovered += 1
                else:
                    report.interrupted += 1
        for oid in stale_intents:
            intent = state.intents.get(oid)
            if intent and intent.get("state") != PENDING and oid not in proc.in_flight and \
                    now - int(intent.get("at") or 0) > self.ttl_ms:
                del state.intents[oid]
                report.expired_intents += 1
        for oid in idem_dirty:
            entries = state.idem.get(oid)
            if not entries or oid in proc.in_flight:
                continue
            kept = {}
            for idem_key, entry in entries.items():
                age = now - int(entry.get("at") or 0)
                if age > self.ttl_ms:
                    report.expired_idem += 1
                    continue
                kept[idem_key] = entry
                if not entry.get("emitted") and entry.get("outcome") and \
                        age >= self.recovery_after_ms:
                    outcomes.append((oid, idem_key, entry.get("event_uuid"), entry["outcome"]))
                    report.resent += 1
            if not kept:
                del state.idem[oid]
            elif len(kept) != len(entries):
                state.idem[oid] = kept
        metrics.PENDING_INTENTS.set(report.pending - report.recovered - report.interrupted)
        await state.flush()
        if outcomes:
            await proc.emitter.send_outcomes([o for *_k, o in outcomes])
            for oid, idem_key, event_uuid, _o in outcomes:
                proc._mark_emitted(oid, idem_key, event_uuid)
            await state.flush()
        if any((report.recovered, report.interrupted, report.resent, report.expired_idem,
                report.expired_intents)):
            log.info("sweep: %s", report)
        return report

    async def _recover(self, oid: str, intent: dict[str, Any]) -> dict[str, Any] | None:
        proc = self.processor
        event = Event(order_id=oid, idem_key=intent["idem_key"],
                      event_uuid=intent.get("event_uuid") or "",
                      correlation_id=intent.get("correlation_id"),
                      requested_at=intent.get("requested_at"))
        request = WhmcsOrderRequest(order_id=oid, client_id=int(intent["client_id"]), items=(),
                                    notes="")
        fence = self.fence_for(oid)
        until = sends_until(intent)
        try:
            found = await proc.provisioner.lookup(
                request, fence=fence,
                settle_at_ms=proc.provisioner.policy.settle_at_ms((until or 0) / 1000))
            if found is not None and found.needs_accept and found.whmcs_order_id:
                failure = await proc.provisioner.accept(found.whmcs_order_id, fence=fence)
                if failure is not None:
                    found = failure
        except Fenced as fenced:
            metrics.FENCED.labels(f"sweep-{fenced.stage}").inc()
            log.warning("fenced: %s; the sweep leaves the Order to the partition's owner",
                        fenced.check.reason, extra={"order_id": oid})
            return None
        except WhmcsError as exc:
            log.warning("sweep: WHMCS lookup failed; will retry", extra={
                "order_id": oid, "cause": str(exc)})
            return None
        if found is None:
            outcome = outcome_record(
                event, "Failed", opportunity_id=intent.get("opportunity_id"),
                whmcs_client_id=request.client_id, error_code="PROVISIONING_INTERRUPTED",
                error_message="the request was interrupted and not redelivered; no WHMCS order "
                              "exists for this Order — approve it again to retry",
                attempts=int(intent.get("attempt") or 0), completed_at=proc._clock())
        else:
            outcome = outcome_record(
                event, found.status, opportunity_id=intent.get("opportunity_id"),
                whmcs_client_id=request.client_id, whmcs_order_id=found.whmcs_order_id,
                service_ids=found.service_ids, addon_ids=found.addon_ids,
                invoice_id=found.invoice_id, error_code=found.error_code,
                error_message=found.error_message, attempts=int(intent.get("attempt") or 0),
                recovered=True, completed_at=proc._clock(), duplicate_ids=found.duplicate_ids)
        proc.state.intents[oid] = {
            **intent, "outcome": outcome, "whmcs_order_id": outcome["whmcs_order_id"],
            "state": ACCEPTED if outcome["status"] == "Provisioned" else FAILED_STATE,
            "may_exist": outcome["whmcs_order_id"] is not None, "at": proc._clock()}
        proc._record(event, outcome)
        log.info("sweep recovered a pending intent", extra={
            "order_id": oid, "status": outcome["status"],
            "whmcs_order_id": outcome["whmcs_order_id"]})
        return outcome
