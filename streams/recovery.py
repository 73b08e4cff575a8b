"""The sweep: nothing stays half-done, and the dedupe memory stays bounded.

Runs at start-up and every ``WORKER_SWEEP_INTERVAL_S`` over the Orders of partitions this
worker actively owns. It reads the tables a slice at a time, yielding to the event loop as
it goes; the few Orders that need action are handled **in their Order's lane**
(:meth:`streams.lanes.Lanes.exclusive`), so the work never interleaves with the Order's
events, and each entry is re-read and re-checked there first. An Order with an event in
flight is left to a later sweep: the sweep never waits behind an event. The tables tell the sweep of
every change (:attr:`streams.faust_seam.DurableTable.watch`), so a sweep reads only the
entries that may need action — pending intents and unsent outcomes; the whole tables are
read after a new assignment and every 6 hours (dedupe expiry) — docs/decisions/0007.

* an intent still ``pending`` after ``WORKER_RECOVERY_AFTER_S`` whose event will not be
  delivered again — the group's committed offset of the requests topic (or the log start,
  when later) has passed the event's (it was dead-lettered, a replay moved the offsets on,
  retention removed it) → WHMCS lookup on the
  ``sfOrderId=`` marker:
  found Pending → AcceptOrder (refused by WHMCS → ``Failed(WHMCS_ERROR)`` naming the
  order, as an event's attempt ends; left unanswered or unreachable → the next sweep); found
  Active → ``Provisioned`` (``recovered``); absent → ``Failed(PROVISIONING_INTERRUPTED)``.
  The sweep never calls ``AddOrder``: creating needs the Order's current data, and the
  Flow's retry path exists for that. The outcome is
  recorded like an event's (dedupe entry + settled intent, durable, sent), so a late
  redelivery of the event emits nothing new — the entry made durable before the intent is
  settled: no redelivery repairs a crash between the two, and the entry alone is repaired
  by the sweep (the intent settled from it, its outcome resent). The sweep's WHMCS writes (``AcceptOrder``,
  a duplicate's ``CancelOrder``) are fenced like an event's
  (:meth:`streams.lease.IntentLease.fence`): the ownership lease holds, and the intent is
  renewed — this worker its writer, ``lease_until`` at most ``WORKER_INTENT_LEASE_S``
  ahead, durable — before each, the write's send deadline capped at it. The next sweep
  of the intent (this worker's, or the partition's next owner's) then looks the Order up
  only once that write can no longer be running: an unanswered ``AcceptOrder`` is never
  repeated blindly. An intent whose event is not committed past yet is left alone, however
  old: that event is still to come (the worker was down or paused past the recovery delay
  and has not reached it again — it waits uncommitted, or in the agent's chunk while the
  window is full), and its redelivery resumes the attempt, a WHMCS lookup before any
  ``AddOrder`` (:mod:`streams.handler`) — settled here first, the Order would be failed and
  the redelivery end silently on the outcome recorded. The intent names the event's
  partition and offset; the committed offsets are read once a sweep, from the broker
  (:meth:`streams.lanes.Lanes.committed_offsets`), and while they cannot be read the
  intents wait for a later sweep. An intent written before offsets were kept is settled as
  before (nothing to tell by);
* an outcome recorded but never acknowledged as sent for that long → sent again, identical;
* dedupe entries older than ``WORKER_DEDUPE_TTL_DAYS`` and finished intents older than that
  are deleted (tombstones in the changelog) — pending intents are never deleted, nor one
  that names a WHMCS order or whose AddOrder may have landed (:attr:`Intent.forgettable`),
  nor an entry holding an outcome never acknowledged as sent until the sweep has resent it
  (one its schema refuses, said once, is not kept for that).
  Only of Orders still this worker's when deleted, and not after an assignment changed
  during the scan that read them (the next sweep's full scan does it).

Every table write of the sweep — an expiry, an intent settled from its dedupe entry, an
outcome recorded or marked as sent — is made only while the ownership lease holds, asked
right before it: ``owns`` (the consumer's assignment, no rebalance seen) still says yes
during a broker cut or right after a pause past the session timeout. A write the lease
refuses is skipped, left to the next sweep or the partition's new owner.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

from common.avro import SerdeError
from common.errors import WhmcsError
from streams import metrics
from streams.decide import Event, now_ms, outcome_record
from streams.lease import Fenced, IntentLease, LeaseCheck, Own
from streams.mapping import WhmcsOrderRequest
from streams.provision import AcceptFailed, Fence, Provisioner, ProvisionResult
from streams.state import (
    DECODE_ERRORS,
    PENDING,
    DedupeEntry,
    DurabilityError,
    Intent,
    OrderState,
    UnreadableState,
    has_unsent,
    memory_from_json,
    read_value,
)

log = logging.getLogger(__name__)
DAY_MS = 24 * 3600 * 1000
SCAN_SLICE = 500  # table entries read between two yields to the event loop, at most
SCAN_BUDGET_S = 0.005  # and at most this long (faust's RocksDB store: ~55 µs per entry)
FULL_SCAN_EVERY_S = 6 * 3600  # the whole tables: dedupe expiry, and a check of the index


class _Slicer:
    """Yields to the event loop every ``SCAN_SLICE`` entries or ``SCAN_BUDGET_S``, whichever
    comes first, for as long as the slice took: the scan gets at most half of the loop
    (docs/decisions/0007)."""

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
    """The table's keys, read a slice at a time — never ``list(table.keys())``, which asks
    ``len()`` first (a pass over every RocksDB key) and then reads them all, in one go
    (docs/decisions/0007). RocksDB iterators read a snapshot, so the table may change while
    the scan yields; a dict-backed table (memory://, tests) raises instead, and is then
    listed at once."""
    keys: list[str] = []
    try:
        for key in table:
            keys.append(key)
            await slicer.tick()
    except RuntimeError:  # "dictionary changed size during iteration"
        return [*table]
    return keys


class Emitter(Protocol):
    async def send_outcome(self, outcome: dict[str, Any]) -> None: ...


class OrderLanes(Protocol):
    def busy(self, order_id: str) -> bool: ...

    async def exclusive(self, order_id: str, job: Callable[[], Awaitable[None]]) -> None: ...


# partitions → partition → the group's committed offset of the requests topic
CommittedOffsets = Callable[[list[int]], Awaitable[Mapping[int, int]]]


async def _unleased(_action: str) -> LeaseCheck | None:
    """The lease of work no ownership lease governs (unit tests)."""
    return None


class _Inline:
    """No lanes (unit tests): the job runs at once."""

    def busy(self, order_id: str) -> bool:
        return False

    async def exclusive(self, order_id: str, job: Callable[[], Awaitable[None]]) -> None:
        await job()


@dataclass
class SweepReport:
    recovered: int = 0
    interrupted: int = 0
    resent: int = 0
    expired_idem: int = 0
    expired_intents: int = 0
    pending: int = 0
    awaiting: int = 0  # pending intents left to their events' redelivery (not committed past)
    oldest_pending_at: int | None = None  # epoch ms: the oldest pending intent's attempt

    def saw_pending(self, at: int) -> None:
        self.pending += 1
        if self.oldest_pending_at is None or at < self.oldest_pending_at:
            self.oldest_pending_at = at


class Sweeper:
    def __init__(self, state: OrderState, provisioner: Provisioner, emitter: Emitter, *,
                 recovery_after_s: float, dedupe_ttl_days: float, owns: Callable[[str], bool],
                 lanes: OrderLanes | None = None,
                 durable: Callable[[], Awaitable[None]] | None = None,
                 fence_for: Callable[[str], Own] = lambda _oid: _unleased,
                 writer_id: str = "", intent_lease_s: float = 10.0,
                 clock_ms: Callable[[], int] = now_ms,
                 full_scan_every_s: float = FULL_SCAN_EVERY_S,
                 committed_offsets: CommittedOffsets | None = None) -> None:
        self.state, self.provisioner, self.emitter = state, provisioner, emitter
        self.lanes: OrderLanes = lanes or _Inline()
        # the group's committed offsets of the requests topic: the worker's lanes read them
        # (streams.lanes); None, no consumer (unit tests): no event is ever delivered again
        self.committed_offsets: CommittedOffsets | None = \
            committed_offsets or getattr(lanes, "committed_offsets", None)
        self.durable = durable or state.flush
        # the ownership lease of an Order's partition, for a job that begins now
        self.fence_for = fence_for
        # the intent's lease, renewed before each WHMCS write (as an event's)
        self.intent_lease = IntentLease(state, lambda: self.durable(), writer=writer_id,
                                        length_s=intent_lease_s, clock_ms=clock_ms)
        self._clock = clock_ms
        self.recovery_after_ms = int(recovery_after_s * 1000)
        self.ttl_ms = int(dedupe_ttl_days * DAY_MS)
        self.owns = owns
        self.full_scan_every_ms = int(full_scan_every_s * 1000)
        # The index (see watch_intent/watch_idem), rebuilt by each full scan and kept up to
        # date by the tables; a state without change reports (dicts) is always scanned.
        self.pending: set[str] | None = None
        self.unemitted: set[str] | None = None
        self.last_full_scan_ms: int | None = None
        self.full_scans = 0
        self.rescans = 0  # a rescan asked for during a full scan still counts afterwards
        # outcomes the schema cannot hold, said once: their events are dead-lettered by the
        # handler, which meets the same refusal; the sweep stops trying (bounded: a few)
        self.unsendable: set[tuple[str, str]] = set()
        # (table, Order) of the values that could not be decoded, said once each
        self.unreadable: set[tuple[str, str]] = set()

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
        if isinstance(entries, dict) and any(has_unsent(e) for e in entries.values()):
            self.unemitted.add(oid)
        else:
            self.unemitted.discard(oid)

    def rescan(self) -> None:
        """Make the next sweep a full scan (new partitions: entries the index never saw)."""
        self.last_full_scan_ms = None
        self.rescans += 1

    async def run_once(self) -> SweepReport:
        """One sweep: read (no lane held, yielding as it goes), then act in the lanes."""
        report = SweepReport()
        state, now = self.state, self._clock()
        rescans = self.rescans  # the assignment the entries are read in
        if state.watched and self.last_full_scan_ms is not None and \
                now - self.last_full_scan_ms < self.full_scan_every_ms:
            due, stale, dirty = self._indexed(report, now)
        else:
            due, stale, dirty = await self._full_scan(report, now)
        if due or stale or dirty:
            await self._act(report, now, due, stale, dirty, rescans)
        metrics.PENDING_INTENTS.set(report.pending - report.recovered - report.interrupted)
        # as the sweep read them: an Order in doubt for long (WHMCS lookups failing, its
        # event never redelivered) pages (SfprovIntentPendingTooLong); 0 when none
        metrics.OLDEST_PENDING_INTENT.set(
            0.0 if report.oldest_pending_at is None
            else max(0.0, (now - report.oldest_pending_at) / 1000))
        if any((report.recovered, report.interrupted, report.resent, report.expired_idem,
                report.expired_intents)):
            log.info("sweep: %s", report)
        return report

    async def _full_scan(self, report: SweepReport, now: int
                         ) -> tuple[list[str], list[str], list[str]]:
        state = self.state
        self.pending, self.unemitted = set(), set()  # rebuilt by this scan
        due, stale, dirty = [], [], []
        rescans = self.rescans
        slicer = _Slicer()
        unreadable = 0
        intent_keys = await _keys(state.intents, slicer)
        for oid in intent_keys:
            await slicer.tick()
            try:
                raw = read_value(state.intents, oid)
                intent = Intent.from_json(raw)
            except DECODE_ERRORS as exc:
                unreadable += self._unreadable(UnreadableState("intents", oid, exc))
                continue
            self.watch_intent(oid, raw)
            if intent is None or not self.owns(oid):
                continue
            if intent.is_pending:
                report.saw_pending(intent.at)
                if now - intent.at >= self.recovery_after_ms:
                    due.append(oid)
            elif now - intent.at > self.ttl_ms and intent.forgettable:
                # an attempt that created a WHMCS order, or whose AddOrder may have landed,
                # is kept (Intent.forgettable): the Order's write-back may never have landed
                # (Provisioned) or there is none (Failed), and its next request must be
                # Skipped, or look before it creates
                stale.append(oid)
        idem_keys = await _keys(state.idem, slicer)
        for oid in idem_keys:
            await slicer.tick()
            try:
                raw = read_value(state.idem, oid)
                if raw and self.owns(oid) and self._idem_work(memory_from_json(raw), now):
                    dirty.append(oid)
            except DECODE_ERRORS as exc:
                unreadable += self._unreadable(UnreadableState("idem", oid, exc))
                continue
            self.watch_idem(oid, raw)
        metrics.UNREADABLE_ENTRIES.set(unreadable)
        if self.rescans == rescans:  # only a completed scan of the current assignment
            self.last_full_scan_ms = now
        self.full_scans += 1
        log.info("sweep: full scan of %d intents and %d dedupe entries in %.0f ms, "
                 "%d slices, the longest %.0f ms", len(intent_keys), len(idem_keys),
                 slicer.elapsed() * 1000, slicer.slices, slicer.longest * 1000,
                 extra={"count": len(intent_keys) + len(idem_keys),
                        "duration_ms": round(slicer.elapsed() * 1000)})
        return due, stale, dirty

    def _indexed(self, report: SweepReport, now: int) -> tuple[list[str], list[str], list[str]]:
        """Only the entries the index names: pending intents and unsent outcomes."""
        assert self.pending is not None and self.unemitted is not None
        due, dirty = [], []
        for oid in list(self.pending):
            try:
                intent = self.state.intent(oid)
            except UnreadableState as exc:  # the index only holds values it could read
                self._unreadable(exc)
                self.pending.discard(oid)
                continue
            if intent is not None and intent.is_pending and self.owns(oid):
                report.saw_pending(intent.at)
                if now - intent.at >= self.recovery_after_ms:
                    due.append(oid)
        for oid in list(self.unemitted):
            try:
                if self.owns(oid) and self._idem_work(self.state.memory(oid), now):
                    dirty.append(oid)
            except UnreadableState as exc:
                self._unreadable(exc)
                self.unemitted.discard(oid)
        return due, [], dirty

    def _unreadable(self, exc: UnreadableState) -> int:
        """An entry that does not decode (:class:`UnreadableState`): passed over, so that one
        bad value does not stop the sweep for every Order; said once per entry at ERROR,
        and counted by each full scan (``sfprov_worker_unreadable_table_entries``, which
        pages). Its Order's events are dead-lettered (``STATE_UNREADABLE``)."""
        if (exc.table, exc.order_id) not in self.unreadable:
            self.unreadable.add((exc.table, exc.order_id))
            log.error("sweep: %s; passed over (its events are dead-lettered with "
                      "STATE_UNREADABLE)", exc, extra={"order_id": exc.order_id})
        return 1

    def _idem_work(self, memory: dict[str, DedupeEntry], now: int) -> bool:
        for entry in memory.values():
            age = now - entry.newest
            if age > self.ttl_ms or (age >= self.recovery_after_ms and any(entry.unsent())):
                return True
        return False

    async def _act(self, report: SweepReport, now: int, due: list[str], stale: list[str],
                   dirty: list[str], rescans: int) -> None:
        # The expiry: each Order's checks and write follow its lease check with nothing
        # interleaving (the sweep's lease is asked, never waited for).
        # A full scan yields for seconds; an Order it read may have left this worker since
        # (its tombstone would reopen the revoked partition's store and land in the new
        # owner's changelog after its claim), and a partition assigned meanwhile — lost
        # and regained included — is restored from its changelog: none of what was read
        # then is written. The assignment's rescan expires it. And ``owns()`` is the
        # consumer's view, stale during a broker cut or after a long pause: the ownership
        # lease is asked too (:meth:`_may_write`).
        if self.rescans != rescans:
            if stale or dirty:
                log.info("sweep: the assignment changed during the scan; expiry left to "
                         "the next sweep's full scan")
        else:
            for oid in stale:
                await self._expire_intent(oid, now, report, rescans)
            for oid in dirty:
                await self._expire(oid, now, report, rescans)
        # recovery and resends re-check in the Order's lane, under the job's own lease
        recover, resend = set(due), set(dirty)
        committed = await self._committed(due) if due else {}
        jobs = list(dict.fromkeys([*due, *dirty]))
        results = await asyncio.gather(*(
            self._when_idle(oid, partial(self._work, oid, report, oid in recover,
                                         oid in resend, committed))
            for oid in jobs), return_exceptions=True)
        # one Order's failed job neither stops the others (each ran to its end) nor skips
        # the sweep's flush and gauges; a table not made durable stops the worker
        failures = [(oid, r) for oid, r in zip(jobs, results, strict=True)
                    if isinstance(r, BaseException)]
        for _oid, exc in failures:
            if isinstance(exc, (DurabilityError, asyncio.CancelledError)):
                raise exc
        await self.durable()
        for oid, exc in failures:
            if isinstance(exc, UnreadableState):  # said once, not at every sweep
                self._unreadable(exc)
                continue
            log.error("sweep: the job of Order %s failed; the next sweep looks again", oid,
                      exc_info=exc, extra={"order_id": oid})

    async def _committed(self, due: list[str]) -> Mapping[int, int] | None:
        """The group's committed offsets of the partitions whose due intents name their
        event's place (one read for the sweep); None when they cannot be read. Read before
        the jobs: a commit only moves forward, so an offset read early only leaves an
        intent for a later sweep."""
        if self.committed_offsets is None:
            return {}
        partitions = set()
        for oid in due:
            intent = self.state.intent(oid)
            if intent is not None and intent.partition is not None and \
                    intent.offset is not None:
                partitions.add(intent.partition)
        if not partitions:
            return {}
        try:
            return await self.committed_offsets(sorted(partitions))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the next sweep reads them again
            log.warning("sweep: the requests topic's committed offsets could not be read "
                        "(%s: %s); pending intents whose events may still come are left to "
                        "a later sweep", type(exc).__name__, exc)
            return None

    def _redelivery_owed(self, intent: Intent, committed: Mapping[int, int] | None) -> bool:
        """The pending ``intent``'s event is still to be delivered (the group's commit has
        not passed it), or may be (the offsets could not be read): its redelivery resumes
        the attempt. False for an intent that does not say where its event is (written
        before offsets were kept), and with no consumer."""
        if intent.partition is None or intent.offset is None or \
                self.committed_offsets is None:
            return False
        base = None if committed is None else committed.get(intent.partition)
        return base is None or base <= intent.offset

    async def _when_idle(self, oid: str, job: Callable[[], Awaitable[None]]) -> None:
        """``job`` in the Order's lane — only if no event is in flight there. A job queued
        behind an event waits for it, and an event may wait indefinitely (a guard read while
        Salesforce is down, WHMCS refusing the credentials): the sweep would wait with it,
        and every later sweep (faust's timer runs them in turn) — nothing resent, recovered
        or expired for any Order. A busy Order's event resumes its pending intent itself;
        what is left after it, a later sweep finds (the index keeps it). Checked and queued
        in one step (``exclusive`` queues before its first await): an idle lane runs the job
        first, events admitted meanwhile wait for it."""
        if not self.lanes.busy(oid):
            await self.lanes.exclusive(oid, job)

    async def _work(self, oid: str, report: SweepReport, recover: bool, resend: bool,
                    committed: Mapping[int, int] | None = None) -> None:
        """In the Order's lane: its pending intent recovered, then its unsent outcomes
        resent — one job, so the Order's lane is busy with the sweep only once."""
        if recover:
            await self._recover_pending(oid, report, committed)
        if resend:
            await self._resend(oid, report)

    def _intent_expired(self, oid: str, now: int) -> bool:
        intent = self.state.intent(oid)
        return intent is not None and intent.forgettable and self.owns(oid) \
            and not self.lanes.busy(oid) and now - intent.at > self.ttl_ms

    def _memory_expired(self, oid: str, now: int) -> bool:
        return self.owns(oid) and not self.lanes.busy(oid) and \
            any(self._expirable(oid, e, now) for e in self.state.memory(oid).values())

    def _expirable(self, oid: str, entry: DedupeEntry, now: int) -> bool:
        """Past the TTL, with no outcome left to send: an entry holding an outcome never
        acknowledged as sent is the only holder of it (:func:`streams.state.bounded` keeps it
        too), kept until the sweep has resent and marked it — unless its schema refuses it
        (:meth:`_unsendable`: it can never be sent)."""
        return now - entry.newest > self.ttl_ms and all(
            (oid, event_uuid) in self.unsendable for event_uuid, _o in entry.unsent())

    async def _expire_intent(self, oid: str, now: int, report: SweepReport,
                             rescans: int) -> None:
        """The Order's finished, forgettable intent past the TTL deleted — under the lease,
        asked once the delete is due and checked again after it, with nothing yielding from
        there to the write (as for :meth:`_expire`)."""
        if not self._intent_expired(oid, now) or not await self._may_write(oid, "expire"):
            return
        if self.rescans == rescans and self._intent_expired(oid, now):
            self.state.delete_intent(oid)
            report.expired_intents += 1

    async def _expire(self, oid: str, now: int, report: SweepReport, rescans: int) -> None:
        """The Order's dedupe entries past the TTL dropped (not one with an outcome still to
        send: :meth:`_expirable`), under the lease (see :meth:`_expire_intent`); the memory
        is read after it, so nothing written meanwhile is lost with the trim."""
        if not self._memory_expired(oid, now) or not await self._may_write(oid, "expire"):
            return
        if self.rescans != rescans or not self.owns(oid) or self.lanes.busy(oid):
            return
        memory = self.state.memory(oid)
        kept = {k: e for k, e in memory.items() if not self._expirable(oid, e, now)}
        report.expired_idem += len(memory) - len(kept)
        if len(kept) != len(memory):
            self.state.set_memory(oid, kept)

    async def _may_write(self, oid: str, stage: str, own: Own | None = None) -> bool:
        """The ownership lease holds right before the sweep writes one of the Order's table
        entries (the job's own lease when given, else the current generation's, asked now).
        ``owns()`` is the consumer's own view: cut off from the brokers, or just resumed from
        a pause past the session timeout, it still names the partition the group has given
        to another member, whose changelog the write would land in after that owner's own.
        Not held: the write is skipped — this worker's next sweep, or the partition's new
        owner, makes it — counted (``sfprov_worker_fenced_total{stage="sweep-…"}``) and
        logged at debug."""
        try:
            await (own or self.fence_for(oid))(stage)
        except Fenced as fenced:
            metrics.FENCED.labels(f"sweep-{fenced.stage or stage}").inc()
            log.debug("sweep: the ownership lease does not hold (%s); %s left to the next "
                      "sweep or the partition's owner", fenced.check.reason, stage,
                      extra={"order_id": oid})
            return False
        return True

    async def _owned(self, oid: str, action: str, own: Own | None = None) -> bool:
        """The Order's partition is still ours right before an outcome is sent (the sweep's
        lease, the job's own when given); otherwise its new owner sends it."""
        try:
            await (own or self.fence_for(oid))(action)
        except Fenced as fenced:
            _left_to_owner(oid, fenced)
            return False
        return True

    async def _resend(self, oid: str, report: SweepReport) -> None:
        """In the Order's lane: outcomes recorded but never acknowledged as sent."""
        now = self._clock()
        if not self.owns(oid):  # lost, or its tables restoring, since the scan
            return
        own = self.fence_for(oid)  # the job's: the generation it began in
        for idem_key, entry in self.state.memory(oid).items():
            if now - entry.newest < self.recovery_after_ms:
                continue
            for event_uuid, outcome in list(entry.unsent()):
                if (oid, event_uuid) in self.unsendable:
                    continue
                if not await self._owned(oid, "send", own):
                    return
                try:
                    await self.emitter.send_outcome(outcome)
                except SerdeError as exc:
                    if exc.retryable:
                        raise
                    self._unsendable(oid, event_uuid, exc)
                    continue
                report.resent += 1
                if not await self._may_write(oid, "mark", own):
                    return  # sent again, identical, by whoever sweeps the Order next
                self.state.mark_emitted(oid, idem_key, event_uuid)

    def _unsendable(self, oid: str, event_uuid: str, exc: SerdeError) -> None:
        """An outcome its schema refuses: every sweep met the same refusal and failed with
        it (a traceback a minute), the sweep's other work for the Order with it. Said once;
        the event itself ends as a dead letter (the handler meets the refusal too)."""
        if len(self.unsendable) >= 1_000:
            self.unsendable.clear()  # said again, at worst
        self.unsendable.add((oid, event_uuid))
        log.error("sweep: an unsent outcome cannot be encoded (%s): not sent; its event ends "
                  "as a dead letter", exc, extra={"order_id": oid, "event_uuid": event_uuid})

    async def _recover_pending(self, oid: str, report: SweepReport,
                               committed: Mapping[int, int] | None = None) -> None:
        """In the Order's lane: a pending intent no event will come back for."""
        now = self._clock()
        if not self.owns(oid):  # lost, or its tables restoring, since the scan
            return
        own = self.fence_for(oid)  # the job's: the generation it began in
        # the lease before settle_from_entry's write, and the intent read after it
        if not await self._may_write(oid, "settle", own):
            return
        intent = self.state.intent(oid)  # re-read: an event may have settled it
        if intent is None or not intent.is_pending or now - intent.at < self.recovery_after_ms:
            return
        if self.state.settle_from_entry(oid, now):
            return  # decided before a crash cut the two writes short; its entry re-sends it
        if self._redelivery_owed(intent, committed):
            report.awaiting += 1  # its event resumes it: a lookup before any AddOrder
            return
        outcome = await self._recover(oid, intent, own)
        if outcome is None:
            return
        await self.durable()
        if not await self._owned(oid, "send", own):
            return
        await self.emitter.send_outcome(outcome)
        # counted as the handler counts its outcomes: the dashboard's decisions and
        # "recovered by lookup" left out exactly the outcomes a crash leaves to the sweep
        metrics.DECISIONS.labels(outcome["status"], outcome.get("error_code") or "").inc()
        if outcome.get("recovered"):
            metrics.RECOVERED.inc()
        if outcome["status"] == "Provisioned":
            report.recovered += 1
        else:
            report.interrupted += 1
        if await self._may_write(oid, "mark", own):  # else sent again by the next sweep
            self.state.mark_emitted(oid, intent.idem_key, intent.event_uuid)

    async def _recover(self, oid: str, intent: Intent, own: Own) -> dict[str, Any] | None:
        """The lookup, then ``AcceptOrder`` of an order found Pending; every WHMCS write
        (that, or a duplicate's ``CancelOrder``) under the intent's lease, renewed first."""
        # the lookup waits out the writes the intent's lease let its writer make (an
        # earlier sweep's included), and its own writes renew it
        fence = self.intent_lease.fence(own, [intent])
        event = Event(order_id=oid, idem_key=intent.idem_key, event_uuid=intent.event_uuid,
                      correlation_id=intent.correlation_id, requested_at=intent.requested_at)
        client = int(intent.client_id or 0)
        try:
            found = await look_up_attempt(self.provisioner, oid, intent, fence)
        except Fenced as fenced:
            _left_to_owner(oid, fenced)
            return None
        except AcceptFailed as exc:
            if not _refused(exc):
                log.warning("sweep: AcceptOrder of WHMCS order %s got no definite answer; "
                            "will retry", exc.result.whmcs_order_id, extra={
                                "order_id": oid, "cause": str(exc)})
                return None
            # WHMCS refused the accept (a provisioning module failing): the Order ends as
            # an event's attempt does (Failed WHMCS_ERROR, naming the order) — tried again
            # at every sweep, the module would run again each time, and no outcome
            log.warning("sweep: AcceptOrder of WHMCS order %s refused (%s)",
                        exc.result.whmcs_order_id, exc, extra={"order_id": oid})
            found = exc.result
        except WhmcsError as exc:
            log.warning("sweep: WHMCS lookup failed; will retry", extra={
                "order_id": oid, "cause": str(exc)})
            return None
        # the AddOrder calls made for this decision, as the handler counts them: the sweep
        # makes none (an order its lookup found is written with 0, as the handler's lookup
        # writes it) — not intent.attempt, the Order's counter across IdemKeys and resumptions
        attempts = 0
        if found is None:
            outcome = outcome_record(
                event, "Failed", opportunity_id=intent.opportunity_id,
                whmcs_client_id=client, error_code="PROVISIONING_INTERRUPTED",
                error_message="the request was interrupted and not redelivered; no WHMCS order "
                              "exists for this Order — approve it again to retry",
                attempts=attempts, completed_at=self._clock())
        else:
            outcome = outcome_record(
                event, found.status, opportunity_id=intent.opportunity_id,
                # the client the order was found under: an earlier one's when the
                # Account's client changed between the attempts
                whmcs_client_id=found.client_or(client),
                whmcs_order_id=found.whmcs_order_id,
                service_ids=found.service_ids, addon_ids=found.addon_ids,
                invoice_id=found.invoice_id, error_code=found.error_code,
                error_message=found.error_message, attempts=attempts, recovered=True,
                completed_at=self._clock(), duplicate_ids=found.duplicate_ids)
        if not await self._owned(oid, "record", own):  # the lookup took time: still ours?
            return None
        # The dedupe entry first, durable, and only then the intent settled: the two tables'
        # changelogs are acknowledged separately, and this event never comes back to send
        # the outcome again (it is committed past). A crash between the two leaves the
        # entry beside the intent still pending, which a later sweep settles from the entry
        # and whose outcome it resends (settle_from_entry, _resend) — never a settled intent
        # with no entry, whose outcome nothing would ever send. (This splits the sweep's
        # writes over two flushes; held by a cut, the second can land after another owner's
        # decision — its records carry their generation, and a restore leaves them out:
        # decision 0016's stamp. Before the stamp, chaos runs gave 4 and 17 events with two
        # different outcomes from exactly this.)
        self.state.record(oid, intent.idem_key, intent.event_uuid, outcome, self._clock())
        await self.durable()
        if not await self._may_write(oid, "settle", own):
            return None  # the partition's owner settles it from the entry, and sends it
        self.state.settle(oid, outcome, self._clock())
        log.info("sweep recovered a pending intent", extra={
            "order_id": oid, "status": outcome["status"],
            "whmcs_order_id": outcome["whmcs_order_id"]})
        return outcome


async def look_up_attempt(provisioner: Provisioner, oid: str, intent: Intent,
                          fence: Fence, *, settle_unanswered: bool = False
                          ) -> ProvisionResult | None:
    """The WHMCS order the pending ``intent``'s attempt may have created for Order ``oid``,
    or None: looked up once every ``AddOrder`` its writer could send has landed, under the
    client it sent to and the earlier ones; found ``Pending``, accepted under ``fence``
    (:meth:`~streams.provision.Provisioner.accept_found`). The sweep's recovery — an
    unanswered ``AcceptOrder`` is left to its next run, whose lookup waits it out — and an
    event whose own attempt was pending when it ends without WHMCS
    (:meth:`streams.handler.EventHandler._handle`), which has no next run:
    ``settle_unanswered``, the order is read once that accept can no longer be running.
    Raises Fenced, WhmcsError when the lookup fails (nothing known), and
    :class:`~streams.provision.AcceptFailed` (a WhmcsError) when the order found could not
    be accepted: its ``result`` names the order, for a caller that ends with it."""
    request = WhmcsOrderRequest(order_id=oid, client_id=int(intent.client_id or 0),
                                items=(), notes="")
    found = await provisioner.lookup(
        request, fence=fence, earlier_client_ids=intent.earlier_client_ids,
        settle_at_ms=provisioner.policy.settle_at_ms((intent.sends_until() or 0) / 1000))
    if found is not None and found.needs_accept and found.whmcs_order_id:
        return await provisioner.accept_found(found, fence=fence,
                                              settle_unanswered=settle_unanswered)
    return found


def _refused(exc: AcceptFailed) -> bool:
    """WHMCS refused the ``AcceptOrder`` (``result=error``: a provisioning module failing), a
    definite answer about the order — not one left unanswered or unreachable, nor this
    installation's access refused (both ``WHMCS_UNAVAILABLE``:
    :meth:`~streams.provision.Provisioner.accept_found` labels them)."""
    return exc.result.error_code == "WHMCS_ERROR"


def _left_to_owner(oid: str, fenced: Fenced) -> None:
    """The sweep met the lease's fence for ``oid``: counted and logged, nothing done."""
    metrics.FENCED.labels(f"sweep-{fenced.stage}").inc()
    log.warning("fenced: %s; the sweep leaves the Order to the partition's owner",
                fenced.check.reason, extra={"order_id": oid})
