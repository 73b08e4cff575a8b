"""One batch of request events, end to end: decode → dedupe → guard → provision → outcome.

Order of effects (the contract the crash tests check)::

    1. decode; undecodable records become dead letters (never exceptions) — a Confluent-framed
       one whose schema id the registry does not know too; an unreachable registry is
       retried (the batch waits), never a dead letter
    2. ONE guard query for the batch's Orders (retried while Salesforce is down)
    3. decide each event (streams.decide); an Order's events stay in arrival order
    4. for Orders to provision: intents[order] = pending (attempt n)
       → FLUSH: the intents changelog records are acknowledged by the broker
       → AddOrder / AcceptOrder (different Orders overlap, bounded by a semaphore)
       (an Order with more events in the batch repeats 3–4 for the next event)
    5. idem[order][idem_key] = {event_uuid, outcome, emitted: False};
       intents[order] = accepted | failed, with the outcome
       → FLUSH: decided outcomes are durable before anyone can see them
    6. send the outcomes and dead letters, await the broker's acks
    7. idem entries emitted = True (made durable by the next batch's flushes)
    8. the caller acks the batch's offsets (streams.app)

Crash windows and what a redelivery does:

* before 4's flush: nothing happened anywhere; the batch is redone from scratch.
* between 4's flush and 5's flush (the ``AddOrder`` window): the intent is ``pending``;
  the redelivered event is *resumed*: WHMCS lookup on the ``sfOrderId=`` marker, then
  accept / done / create — never a second order. The guard is bypassed for it, so it can
  never become a contradicting ``Skipped`` after the sink wrote the WHMCS id back.
* during 5's flush (the kill lands between its two table writes): the entry without the
  intent → the entry re-sends its outcome and settles the intent (a redelivery, or the sweep
  if none comes); the intent without the entry → ``decide`` finds this very event in the
  intent and re-sends the intent's outcome (seen in the two-worker crash test before this
  rule: a contradicting ``Skipped(ALREADY_PROVISIONED)`` for a provisioned event).
* between 5's flush and 7 (outcome maybe sent): the event's idem entry holds the decided
  outcome with ``emitted`` false; the redelivery re-sends **that identical record** (same
  fields, same ``completed_at``). Consumers may therefore see one outcome twice, always
  identical: dedupe on ``(order_id, idem_key, event_uuid)``.
* after 7: the redelivery emits nothing.

A duplicate event (same IdemKey, other event uuid) gets its own ``Duplicate`` outcome with
the same ``(order_id, idem_key)`` as the original decision — analysts tell them apart by
``status``/``event_uuid``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from common.avro import AvroSerde
from streams import metrics
from streams.decide import (
    ACCEPTED,
    FAILED_STATE,
    PENDING,
    Context,
    Event,
    Final,
    Provision,
    Redelivery,
    decide,
    now_ms,
    outcome_record,
)
from streams.guard import Guard
from streams.lease import Fenced, LeaseCheck, OwnershipLease
from streams.provision import Fence, Provisioner, ProvisionResult

log = logging.getLogger(__name__)
MAX_DUPS_REMEMBERED = 20
RENEW_BEFORE_MS = 1000  # renew an intent's lease when less than this is left


@dataclass(frozen=True)
class RawRecord:
    key: bytes | None
    value: bytes | None
    topic: str = ""
    partition: int = -1
    offset: int = -1
    received_at: float = field(default_factory=time.monotonic)
    headers: Any = None  # the record's headers; None = unknown (the serde guesses the format)
    generation: int = -1  # the consumer group generation the record was taken in


@dataclass(frozen=True)
class DeadLetter:
    record: RawRecord
    reason: str
    error_class: str
    error_code: str = ""
    order_id: str | None = None
    event_uuid: str | None = None
    idem_key: str | None = None


class StateStore(Protocol):
    idem: MutableMapping[str, Any]
    intents: MutableMapping[str, Any]

    async def flush(self) -> None:
        """Return once every table write made so far is acknowledged by the broker."""


class Emitter(Protocol):
    async def send_outcomes(self, outcomes: list[dict[str, Any]]) -> None:
        """Send (key = order_id) and await the broker's acks for all of them."""

    async def send_dead_letters(self, letters: list[DeadLetter]) -> None: ...


@dataclass
class BatchReport:
    events: int = 0
    outcomes: int = 0
    dead_letters: int = 0
    redelivered_silent: int = 0
    by_status: Counter[str] = field(default_factory=Counter)
    # where the batch's time went, ms per step (decode, guard, intents, whmcs, flush, send):
    # logged with "batch done", so a slow batch names the call it waited on
    steps_ms: dict[str, int] = field(default_factory=dict)
    # events of Orders this worker was fenced from (streams.lease): never acked, left to
    # the partition's new owner
    fenced: list[RawRecord] = field(default_factory=list)

    def timed(self, step: str, since: float) -> float:
        now = time.monotonic()
        self.steps_ms[step] = self.steps_ms.get(step, 0) + int((now - since) * 1000)
        return now


class DictState:
    """A StateStore on plain dicts (unit tests, the benchmark's dry runs)."""

    def __init__(self) -> None:
        self.idem: dict[str, Any] = {}
        self.intents: dict[str, Any] = {}
        self.flushes = 0

    async def flush(self) -> None:
        self.flushes += 1


class BatchProcessor:
    def __init__(self, *, state: StateStore, guard: Guard, provisioner: Provisioner,
                 emitter: Emitter, context: Context, parallelism: int = 16,
                 clock_ms: Callable[[], int] = now_ms, serde: AvroSerde | None = None,
                 lease: OwnershipLease | None = None, writer_id: str = "",
                 intent_lease_s: float = 10.0) -> None:
        """``lease`` None: no ownership lease (unit tests and benchmarks only)."""
        self.state = state
        self.lease = lease
        self.writer_id = writer_id
        self.intent_lease_ms = int(intent_lease_s * 1000)
        self.guard = guard
        self.provisioner = provisioner
        self.emitter = emitter
        self.context = context
        self.serde = serde or AvroSerde("provision_request")
        self._sem = asyncio.Semaphore(parallelism)
        self._clock = clock_ms
        self.in_flight: set[str] = set()  # Orders of the batch being processed

    # -- decoding ----------------------------------------------------------------------

    def decode(self, records: list[RawRecord]) -> tuple[list[tuple[Event, RawRecord]],
                                                         list[DeadLetter]]:
        events, dead = [], []
        for rec in records:
            try:
                if rec.value is None:
                    raise ValueError("record has no value (tombstone)")
                value = self.serde.decode(rec.value, rec.headers)
                event = Event.from_request(value, topic=rec.topic, partition=rec.partition,
                                           offset=rec.offset)
            except Exception as exc:  # noqa: BLE001 - a bad record is data, not a crash
                if getattr(exc, "retryable", False):
                    raise  # schema registry unreachable: not the record's fault (see process)
                dead.append(DeadLetter(rec, f"cannot decode request: {exc}",
                                       type(exc).__name__, "UNDECODABLE"))
                continue
            events.append((event, rec))
        return events, dead

    # -- the batch ---------------------------------------------------------------------

    async def process(self, records: list[RawRecord]) -> BatchReport:
        report = BatchReport(events=len(records))
        t = time.monotonic()
        # In a thread: a registry lookup must not block the loop; retried while it is down.
        events, dead = await retry_forever("decoding requests (schema registry)",
                                           lambda: asyncio.to_thread(self.decode, records))
        report.timed("decode", t)
        by_order: dict[str, deque[tuple[Event, RawRecord]]] = {}
        for event, rec in events:
            by_order.setdefault(event.order_id, deque()).append((event, rec))
        self.in_flight = set(by_order)
        try:
            return await self._process(by_order, dead, report)
        finally:
            self.in_flight = set()

    async def _process(self, by_order: dict[str, deque[tuple[Event, RawRecord]]],
                       dead: list[DeadLetter], report: BatchReport) -> BatchReport:
        idem, intents = self.state.idem, self.state.intents
        need_guard = [oid for oid, evs in by_order.items()
                      if any(ev.idem_key not in (idem.get(oid) or {}) for ev, _ in evs)]
        t = time.monotonic()
        orders = await self.guard.fetch(need_guard) if need_guard else {}
        t = report.timed("guard", t)
        emit: list[tuple[dict[str, Any], RawRecord | None, tuple[str, str, str | None]]] = []
        pending = {oid: evs for oid, evs in by_order.items() if evs}
        while pending:
            provisions: list[tuple[Event, RawRecord, Provision, dict[str, Any] | None]] = []
            for oid in list(pending):
                queue = pending[oid]
                while queue:
                    event, rec = queue.popleft()
                    order = Guard.find(orders, oid)
                    decision = decide(event, idem.get(oid), intents.get(oid), order, self.context)
                    if isinstance(decision, Provision):
                        provisions.append((event, rec, decision, order))
                        break
                    if isinstance(decision, Redelivery):
                        if decision.restore and decision.outcome is not None:
                            log.warning("dedupe entry missing for an event its Order's intent "
                                        "records as decided; sending that outcome again",
                                        extra={"order_id": oid, "idem_key": event.idem_key,
                                               "event_uuid": event.event_uuid})
                            self._record(event, decision.outcome)
                        if decision.outcome is not None:
                            self.settle_intent(oid, event.idem_key, event.event_uuid,
                                               decision.outcome)
                        if decision.outcome is not None and not decision.emitted:
                            emit.append((decision.outcome, rec,
                                         (oid, event.idem_key, event.event_uuid)))
                        else:
                            report.redelivered_silent += 1
                        continue
                    outcome = self._final_outcome(event, decision, order)
                    self._record(event, outcome)
                    emit.append((outcome, rec, (oid, event.idem_key, event.event_uuid)))
                if not queue:
                    del pending[oid]
            if not provisions:
                break
            at = self._clock()
            live = []
            for item in provisions:
                event, rec, decision, order = item
                check = self._check(rec)
                if not check.ok:  # not even the intent: the Order is the new owner's
                    self._fence_order(event, rec, check, "intent", pending, report)
                    continue
                intents[event.order_id] = self._intent(event, decision, order, at, check)
                live.append(item)
            provisions = live
            if not provisions:
                continue
            t = time.monotonic()
            await self.state.flush()  # the pending intents are durable before any AddOrder
            t = report.timed("intents", t)
            results = await asyncio.gather(*(self._provision(e, r, p)
                                             for e, r, p, _o in provisions))
            report.timed("whmcs", t)
            for (event, rec, decision, order), result in zip(provisions, results, strict=True):
                if isinstance(result, Fenced):
                    self._fence_order(event, rec, result.check, result.stage, pending, report)
                    continue
                check = self._check(rec)
                if not check.ok:  # the call ran, but the result is no longer ours to record
                    self._fence_order(event, rec, check, "record", pending, report)
                    continue
                outcome = self._provision_outcome(event, decision, order, result)
                intents[event.order_id] = {
                    **intents[event.order_id], "outcome": outcome,
                    "state": ACCEPTED if result.status == "Provisioned" else FAILED_STATE,
                    "whmcs_order_id": result.whmcs_order_id, "may_exist": result.may_exist,
                    "at": self._clock()}
                self._record(event, outcome)
                emit.append((outcome, rec, (event.order_id, event.idem_key, event.event_uuid)))
        t = time.monotonic()
        await self.state.flush()  # decided outcomes are durable before they are sent
        t = report.timed("flush", t)
        await self.emitter.send_outcomes([o for o, _r, _k in emit])
        if dead:
            await self.emitter.send_dead_letters(dead)
        report.timed("send", t)
        for outcome, source, (oid, idem_key, event_uuid) in emit:
            self._mark_emitted(oid, idem_key, event_uuid)
            metrics.DECISIONS.labels(outcome["status"], outcome.get("error_code") or "").inc()
            if source is not None:
                metrics.LATENCY.observe(time.monotonic() - source.received_at)
            report.by_status[outcome["status"]] += 1
        for letter in dead:
            metrics.DEAD_LETTERS.labels(letter.error_code or letter.error_class).inc()
        report.outcomes, report.dead_letters = len(emit), len(dead)
        return report

    # -- helpers -----------------------------------------------------------------------

    async def _provision(self, event: Event, rec: RawRecord,
                         decision: Provision) -> ProvisionResult | Fenced:
        settle_at = None
        if decision.lookup_first:
            settle_at = self.provisioner.policy.settle_at_ms((decision.sends_until or 0) / 1000)
        try:
            async with self._sem:
                result = await self.provisioner.provision(
                    decision.request, settle_at_ms=settle_at, fence=self._fence(event, rec))
        except Fenced as fenced:
            return fenced
        if result.recovered:
            metrics.RECOVERED.inc()
        return result

    # -- the ownership lease (streams.lease) --------------------------------------------

    def _check(self, rec: RawRecord) -> LeaseCheck:
        if self.lease is None:
            wall = self._clock() / 1000 + self.intent_lease_ms / 1000
            return LeaseCheck(True, valid_until_wall=wall)
        return self.lease.check(rec.partition, rec.generation)

    def _lease_until(self, check: LeaseCheck) -> int:
        """The intent's lease: as long as the group lease, at most ``intent_lease_s``."""
        return min(int(check.valid_until_wall * 1000), self._clock() + self.intent_lease_ms)

    def _fence(self, event: Event, rec: RawRecord) -> Fence:
        """Awaited right before each WHMCS write of this event's provisioning: the group
        lease must hold, and the durable intent must say this writer may still send (else
        it is renewed — made durable — first), so a new owner that waits out the intent's
        ``lease_until`` cannot meet a late write of ours."""
        async def fence(action: str) -> None:
            check = self._check(rec)
            if check.ok:
                intent = self.state.intents.get(event.order_id) or {}
                if int(intent.get("lease_until") or 0) - self._clock() < RENEW_BEFORE_MS:
                    self.state.intents[event.order_id] = {
                        **intent, "lease_until": self._lease_until(check)}
                    await self.state.flush()
                    check = self._check(rec)  # the flush took time
            if not check.ok:
                raise Fenced(check, stage=action)
        return fence

    def _fence_order(self, event: Event, rec: RawRecord, check: LeaseCheck, stage: str,
                     pending: dict[str, deque[tuple[Event, RawRecord]]],
                     report: BatchReport) -> None:
        """Stop ``event``'s Order here: no call, no outcome, no ack (nor of its later events
        in this batch) — the partition's new owner redelivers and finishes it."""
        metrics.FENCED.labels(stage).inc()
        later = [r for _e, r in pending.pop(event.order_id, deque())]
        report.fenced.extend([rec, *later])
        log.warning("fenced: %s; the Order is left to the partition's new owner (%d event(s) "
                    "not acknowledged)", check.reason, 1 + len(later),
                    extra={"order_id": event.order_id, "partition": rec.partition,
                           "offset": rec.offset, "stage": stage})

    def _intent(self, event: Event, decision: Provision, order: dict[str, Any] | None,
                at: int, check: LeaseCheck) -> dict[str, Any]:
        return {"order_id": event.order_id, "idem_key": event.idem_key,
                "event_uuid": event.event_uuid, "correlation_id": event.correlation_id,
                "requested_at": event.requested_at, "state": PENDING,
                "attempt": decision.previous_attempts + 1,
                "client_id": decision.request.client_id,
                "opportunity_id": (order or {}).get("OpportunityId"),
                "whmcs_order_id": None, "outcome": None, "at": at,
                "writer": self.writer_id, "lease_until": self._lease_until(check)}

    def _final_outcome(self, event: Event, decision: Final,
                       order: dict[str, Any] | None) -> dict[str, Any]:
        return outcome_record(event, decision.status,
                              opportunity_id=(order or {}).get("OpportunityId"),
                              whmcs_order_id=decision.whmcs_order_id,
                              error_code=decision.error_code,
                              error_message=decision.error_message, attempts=0,
                              completed_at=self._clock())

    def _provision_outcome(self, event: Event, decision: Provision,
                           order: dict[str, Any] | None,
                           result: ProvisionResult) -> dict[str, Any]:
        return outcome_record(event, result.status,
                              opportunity_id=(order or {}).get("OpportunityId"),
                              whmcs_client_id=decision.request.client_id,
                              whmcs_order_id=result.whmcs_order_id,
                              service_ids=result.service_ids, addon_ids=result.addon_ids,
                              invoice_id=result.invoice_id, error_code=result.error_code,
                              error_message=result.error_message, attempts=result.attempts,
                              recovered=result.recovered, completed_at=self._clock(),
                              duplicate_ids=result.duplicate_ids)

    def _record(self, event: Event, outcome: dict[str, Any]) -> None:
        """Remember the decision under the event's IdemKey (duplicates under ``dups``)."""
        entries = dict(self.state.idem.get(event.order_id) or {})
        existing = entries.get(event.idem_key)
        if existing is not None and existing.get("event_uuid") != event.event_uuid:
            dups = dict(existing.get("dups") or {})
            dups[event.event_uuid] = {"outcome": outcome, "emitted": False}
            while len(dups) > MAX_DUPS_REMEMBERED:
                dups.pop(next(iter(dups)))
            entries[event.idem_key] = {**existing, "dups": dups}
        else:
            entries[event.idem_key] = {"event_uuid": event.event_uuid,
                                       "status": outcome["status"], "outcome": outcome,
                                       "emitted": False, "at": self._clock(), "dups": {}}
        self.state.idem[event.order_id] = entries

    def settle_intent(self, order_id: str, idem_key: str, event_uuid: str | None,
                      outcome: dict[str, Any]) -> bool:
        """A crash between step 5's two table writes can leave the decided outcome in the
        dedupe entry while the intent stays ``pending``: settle the intent from it (else the
        sweep would look the order up and send a second, ``recovered`` outcome)."""
        intent = self.state.intents.get(order_id)
        if not intent or intent.get("state") != PENDING or \
                intent.get("idem_key") != idem_key or intent.get("event_uuid") != event_uuid \
                or outcome.get("status") not in ("Provisioned", "Failed"):
            return False
        self.state.intents[order_id] = {
            **intent, "outcome": outcome,
            "state": ACCEPTED if outcome["status"] == "Provisioned" else FAILED_STATE,
            "whmcs_order_id": outcome.get("whmcs_order_id"), "at": self._clock()}
        return True

    def _mark_emitted(self, order_id: str, idem_key: str, event_uuid: str | None) -> None:
        entries = dict(self.state.idem.get(order_id) or {})
        entry = entries.get(idem_key)
        if entry is None:
            return
        if entry.get("event_uuid") == event_uuid:
            if entry.get("emitted"):
                return
            entries[idem_key] = {**entry, "emitted": True}
        elif event_uuid in (entry.get("dups") or {}):
            dups = dict(entry["dups"])
            if dups[event_uuid].get("emitted"):
                return
            dups[event_uuid] = {**dups[event_uuid], "emitted": True}
            entries[idem_key] = {**entry, "dups": dups}
        else:
            return
        self.state.idem[order_id] = entries


async def retry_forever(what: str, fn: Callable[[], Awaitable[Any]], *,
                        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                        max_delay: float = 10.0) -> Any:
    """Await ``fn()`` until it succeeds (Kafka sends that must not be given up)."""
    delay = 0.2
    while True:
        try:
            return await fn()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - logged, retried
            log.warning("%s failed; retrying", what, extra={"cause": repr(exc)})
            metrics.RETRIES.labels("kafka").inc()
            await sleep(delay)
            delay = min(delay * 2, max_delay)
