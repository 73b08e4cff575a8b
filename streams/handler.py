"""One request event, end to end: dedupe → guard → provision → outcome.

Runs inside the event's Order lane (:mod:`streams.lanes`): no other work on the same Order
runs meanwhile, so the Order's state read at the start is still current at the end.
Different Orders run concurrently; what they share is coalesced (guard reads,
:class:`~streams.guard.GuardReads`; durability flushes, :class:`~streams.state.GroupCommit`).

Order of effects for one event (the contract the crash tests check)::

    1. the Order's dedupe memory and intent (tables); the Order from Salesforce when the
       IdemKey is new (a coalesced guard read, retried while Salesforce is down)
    2. decide (streams.decide)
    3. to provision: the ownership lease holds (streams.lease) → intents[order] = pending,
       with this worker as writer and until when it may send
       → DURABLE (group commit) → AddOrder / AcceptOrder, the lease checked before each,
       and the guard read of 1 read again before the AddOrder once stale (older than
       WORKER_GUARD_MAX_AGE_S, or a wait since: streams.guard_check.GuardCheck)
    4. the lease holds → idem[order][idem_key] = the outcome; intents[order] settled
       → DURABLE: the decided outcome is durable before anyone can see it
    5. send the outcome, await the broker's ack
    6. idem entry marked emitted (made durable by later flushes)
    7. the lane reports the event finished; the checkpoint may commit past it

Crash windows and what a redelivery does:

* before 3's flush: nothing happened anywhere; the event is done again from scratch.
* between 3's flush and 4's (the ``AddOrder`` window): the intent is ``pending``; the
  redelivered event is *resumed*: once every ``AddOrder`` its writer could have sent has
  landed (``lease_until`` + the WHMCS timeout + a grace), a WHMCS lookup on the
  ``sfOrderId=`` marker, then accept / done / create — never a second order. An order
  found is the outcome, whatever Salesforce says now, so it can never become a
  contradicting ``Skipped`` after the sink wrote the WHMCS id back; none found, the guard
  decides as for any event (``Skipped``, no ``AddOrder``, once the Order was set back or
  given a WHMCS id). A redelivery that ends without WHMCS (the Order deleted, its mapping
  broken) looks up first the same way, as the sweep does
  (:func:`~streams.recovery.look_up_attempt`). The intent names the event's partition and
  offset: until the group's commit has passed them the sweep leaves the intent to this
  redelivery, however late it comes.
* during 4 (between its two table writes): the entry without the settled intent → the
  intent is settled from the entry (:meth:`~streams.state.OrderState.settle_from_entry`);
  the settled intent without the entry → ``decide`` finds this very event in the intent and
  re-sends the intent's outcome, never a contradicting one.
* between 4 and 6 (outcome maybe sent): the redelivery re-sends **the identical record**
  (same fields, same ``completed_at``). Consumers dedupe on ``(order_id, idem_key,
  event_uuid)``.
* after 6: the redelivery emits nothing.

A lost lease (the Order's partition went to another worker, :class:`~streams.lease.Fenced`)
stops the event wherever it is: no WHMCS call, no outcome, no finish — the new owner
redelivers it. While the lease may still come back (a rebalance under way, heartbeats not
accepted lately) the event waits.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from common.avro import AvroSerde
from common.backoff import Backoff
from common.clock import lease_clock
from common.errors import WhmcsError
from streams import metrics
from streams.decide import (
    Context,
    Event,
    Final,
    Provision,
    Redelivery,
    decide,
    guard,
    needs_guard,
    not_found,
    now_ms,
    outcome_record,
)
from streams.guard import GuardReads
from streams.guard_check import GuardCheck
from streams.lease import Fenced, IntentLease, LeaseCheck, OwnershipLease, hold
from streams.provision import AcceptFailed, Fence, Provisioner, ProvisionResult
from streams.recovery import look_up_attempt
from streams.state import DurabilityError, Intent, Memory, OrderState, UnreadableState

log = logging.getLogger(__name__)
ATTEMPTS = 3  # an event whose handling raises this often goes to the dead letters
GUARD_MAX_AGE_S = 5.0  # WORKER_GUARD_MAX_AGE_S's default


@dataclass(frozen=True)
class RawRecord:
    key: bytes | None
    value: bytes | None
    topic: str = ""
    partition: int = -1
    offset: int = -1
    received_at: float = field(default_factory=time.monotonic)
    headers: Any = None  # the record's headers; None = none (as an empty list)
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


class Emitter(Protocol):
    async def send_outcome(self, outcome: dict[str, Any]) -> None:
        """Send (key = order_id) and await the broker's ack."""

    async def send_dead_letter(self, letter: DeadLetter) -> None: ...


def decode(serde: AvroSerde, rec: RawRecord) -> Event | DeadLetter:
    """The request event of ``rec``, or the dead letter saying why there is none. Raises only
    when the schema registry is unreachable (not the record's fault: retried)."""
    try:
        if rec.value is None:
            raise ValueError("record has no value (tombstone)")
        value = serde.decode(rec.value, rec.headers)
        return Event.from_request(value, topic=rec.topic, partition=rec.partition,
                                  offset=rec.offset)
    except Exception as exc:  # noqa: BLE001 - a bad record is data, not a crash
        if getattr(exc, "retryable", False):
            raise
        return DeadLetter(rec, f"cannot decode request: {exc}", type(exc).__name__,
                          "UNDECODABLE")


class EventHandler:
    """``await handler.handle(event, rec)`` → True when finished (outcome or dead letter
    acknowledged, or nothing to send), False when fenced (left to the partition's new
    owner). ``lease`` None: no ownership lease (unit tests and benchmarks only).
    ``guard_max_age_s``: ``WORKER_GUARD_MAX_AGE_S`` — the guard read the decision went on
    is read again right before its ``AddOrder`` once older than this, or once a wait came
    after it (:class:`~streams.guard_check.GuardCheck`)."""

    def __init__(self, *, state: OrderState, reads: GuardReads, provisioner: Provisioner,
                 emitter: Emitter, context: Context, durable: Callable[[], Awaitable[None]],
                 lease: OwnershipLease | None = None, writer_id: str = "",
                 intent_lease_s: float = 10.0, clock_ms: Callable[[], int] = now_ms,
                 guard_max_age_s: float = GUARD_MAX_AGE_S) -> None:
        self.state, self.reads, self.provisioner = state, reads, provisioner
        self.guard_max_age_s = guard_max_age_s
        self.emitter, self.context, self.durable = emitter, context, durable
        self.lease, self.writer_id = lease, writer_id
        self.intent_lease_ms = int(intent_lease_s * 1000)
        self.intent_lease = IntentLease(state, lambda: self.durable(), writer=writer_id,
                                        length_s=intent_lease_s, clock_ms=clock_ms)
        self._clock = clock_ms
        self.errors = 0  # unexpected errors handling an event (/readyz details)
        self.last_error: str | None = None

    async def handle(self, event: Event, rec: RawRecord) -> bool:
        backoff = Backoff(initial_s=1.0, max_s=10.0, jitter=False)
        for attempt in range(1, ATTEMPTS + 1):
            try:
                await self._handle(event, rec)
                return True
            except Fenced as fenced:
                metrics.FENCED.labels(fenced.stage).inc()
                log.warning("fenced: %s; the Order is left to the partition's new owner",
                            fenced.check.reason, extra={
                                "order_id": event.order_id, "partition": rec.partition,
                                "offset": rec.offset, "stage": fenced.stage})
                return False
            except asyncio.CancelledError:
                raise
            except UnreadableState as exc:
                # a value no retry changes (streams.state): the event waits in the dead
                # letters, its Order untouched, until an operator has looked
                metrics.EVENT_ERRORS.inc()
                self.errors += 1
                self.last_error = str(exc)
                log.error("%s: the event is dead-lettered (STATE_UNREADABLE)", exc, extra={
                    "order_id": event.order_id, "idem_key": event.idem_key,
                    "partition": rec.partition, "offset": rec.offset})
                await self.emitter.send_dead_letter(DeadLetter(
                    rec, str(exc), type(exc).__name__, "STATE_UNREADABLE",
                    order_id=event.order_id, event_uuid=event.event_uuid,
                    idem_key=event.idem_key))
                metrics.DEAD_LETTERS.labels("STATE_UNREADABLE").inc()
                return True
            except Exception as exc:  # noqa: BLE001 - retried, then dead-lettered
                if isinstance(exc, DurabilityError):
                    raise  # a table the broker did not acknowledge: see streams.app
                metrics.EVENT_ERRORS.inc()
                self.errors += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("handling the event failed (attempt %d/%d)", attempt, ATTEMPTS,
                              extra={"order_id": event.order_id, "idem_key": event.idem_key,
                                     "partition": rec.partition, "offset": rec.offset})
                error: Exception = exc
                if attempt < ATTEMPTS:
                    await asyncio.sleep(backoff.next_delay())
        await self.emitter.send_dead_letter(DeadLetter(
            rec, f"worker could not process the event: {error!r}", type(error).__name__,
            "WORKER_ERROR", order_id=event.order_id, event_uuid=event.event_uuid,
            idem_key=event.idem_key))
        metrics.DEAD_LETTERS.labels("WORKER_ERROR").inc()
        return True

    async def _handle(self, event: Event, rec: RawRecord) -> None:
        oid, state = event.order_id, self.state
        memory, intent = state.memory(oid), state.intent(oid)
        # the guard read is no older than this (GuardCheck), on the lease clock: a host
        # suspend ages the verdict as it does the lease
        read_at = lease_clock()
        order = await self.reads.get(oid) if needs_guard(event, memory) else None
        decision = decide(event, memory, intent, order, self.context)
        opportunity = (order or {}).get("OpportunityId")
        if isinstance(decision, Redelivery):
            await self._redelivered(event, rec, decision)
            return
        held: list[Intent] = []  # the intent as last written (pending, then renewed)
        if isinstance(decision, Final):
            found, looked = None, False
            if intent is not None and intent.is_pending and \
                    (intent.idem_key, intent.event_uuid) == (event.idem_key, event.event_uuid):
                # this event's own attempt was under way (the Order since deleted, its
                # mapping since broken, the guard refusing it): an AddOrder of that attempt
                # may have landed — looked up first, as the sweep does. WHMCS away or
                # refusing for the lookup: the decision goes out all the same (a dead letter
                # or a wait here would leave the sweep to call it "interrupted"), and the
                # intent says an order may exist, so the next attempt looks first. An order
                # found is the outcome, also when its AcceptOrder failed (Failed, naming it)
                held.append(intent)
                try:
                    found = await look_up_attempt(self.provisioner, oid, intent,
                                                  self._fence(rec, held),
                                                  settle_unanswered=True)
                    looked = True
                except AcceptFailed as exc:
                    log.warning("Order %s: the WHMCS order %s of its pending attempt was found "
                                "but not accepted (%s)", oid, exc.result.whmcs_order_id, exc,
                                extra={"order_id": oid})
                    found, looked = exc.result, True
                except WhmcsError as exc:
                    log.warning("Order %s: WHMCS lookup of its pending attempt failed (%s); "
                                "its outcome goes out, the next attempt looks first", oid,
                                exc, extra={"order_id": oid})
            if found is not None:
                outcome = self._outcome(event, found, opportunity or held[0].opportunity_id,
                                        held[0].client_id)
            else:
                # the pending attempt went to WHMCS: its outcome names the client it was
                # sent to, as every outcome that reached WHMCS does
                # (and the Opportunity it was made for, when the Order is gone)
                outcome = outcome_record(event, decision.status,
                                         opportunity_id=opportunity or (
                                             held[0].opportunity_id if held else None),
                                         whmcs_client_id=held[0].client_id if held else None,
                                         whmcs_order_id=decision.whmcs_order_id,
                                         error_code=decision.error_code,
                                         error_message=decision.error_message, attempts=0,
                                         completed_at=self._clock())
            await self._own(rec, "record")
            if held:  # may_exist: an order found (none found: no AddOrder of it can land
                # now; not looked: unknown)
                state.settle(oid, outcome, self._clock(), current=held[-1],
                             may_exist=None if looked else True)
            memory = state.record(oid, event.idem_key, event.event_uuid, outcome,
                                  self._clock(), memory=memory)
        else:
            result = await self._provision(event, rec, decision, opportunity, held, read_at)
            outcome = self._outcome(event, result, opportunity, decision.request.client_id)
            await self._own(rec, "record")  # the call ran: is the result still ours?
            # an attempt that made a WHMCS order says so, as the sweep's recovery does
            # (Intent.settled): kept past the dedupe TTL, by earlier releases' sweeps too
            state.settle(oid, outcome, self._clock(),
                         may_exist=result.may_exist or result.whmcs_order_id is not None,
                         current=held[-1])
            memory = state.record(oid, event.idem_key, event.event_uuid, outcome,
                                  self._clock(), memory=memory)
        await self.durable()  # the decided outcome is durable before it is sent
        # and the partition is still ours once it is: a flush that outlived the lease (the
        # brokers out of reach, this process paused) may have landed after a new owner
        # restored the tables and decided the event itself — its outcome is the one
        await self._own(rec, "send")
        await self._send(event, rec, outcome, memory)

    def _outcome(self, event: Event, result: ProvisionResult, opportunity: str | None,
                 client_id: int | None) -> dict[str, Any]:
        """The outcome of a provisioning (or a lookup) that went to WHMCS."""
        if result.recovered:
            metrics.RECOVERED.inc()
        return outcome_record(
            event, result.status, opportunity_id=opportunity,
            # the client of the order a lookup found (an earlier attempt's, under the
            # Account's old client), else the one this attempt sent (or would send) to
            whmcs_client_id=result.client_or(client_id),
            whmcs_order_id=result.whmcs_order_id, service_ids=result.service_ids,
            addon_ids=result.addon_ids, invoice_id=result.invoice_id,
            error_code=result.error_code, error_message=result.error_message,
            attempts=result.attempts, recovered=result.recovered,
            completed_at=self._clock(), duplicate_ids=result.duplicate_ids)

    async def _redelivered(self, event: Event, rec: RawRecord, decision: Redelivery) -> None:
        outcome, oid = decision.outcome, event.order_id
        if outcome is None:
            return
        wrote = False
        # its table writes are the partition's owner's, as every one the sweep makes: a
        # worker resumed from a pause, or cut off, still takes redeliveries of a partition
        # the group has given to another member, whose changelog the write would land in
        await self._own(rec, "record")
        if decision.restore:
            log.warning("dedupe entry missing for an event its Order's intent records as "
                        "decided; sending that outcome again", extra={
                            "order_id": oid, "idem_key": event.idem_key,
                            "event_uuid": event.event_uuid})
            self.state.record(oid, event.idem_key, event.event_uuid, outcome, self._clock())
            wrote = True
        if self.state.settle_from_entry(oid, self._clock()):
            wrote = True
        if decision.emitted:
            metrics.REDELIVERED_SILENT.inc()
            if wrote:
                await self.durable()
            return
        await self.durable()
        await self._own(rec, "send")  # after the flush, as in _handle
        await self._send(event, rec, outcome)

    async def _send(self, event: Event, rec: RawRecord, outcome: dict[str, Any],
                    memory: Memory | None = None) -> None:
        await self.emitter.send_outcome(outcome)
        # a send retried through a cut returns after the partition moved: marking it sent
        # would write the Order's dedupe memory into the new owner's changelog (the sweep
        # asks the lease before the same write); fenced, the new owner sends it again
        await self._own(rec, "mark")
        self.state.mark_emitted(event.order_id, event.idem_key, event.event_uuid,
                                memory=memory)
        metrics.DECISIONS.labels(outcome["status"], outcome.get("error_code") or "").inc()
        metrics.LATENCY.observe(time.monotonic() - rec.received_at)

    # -- provisioning under the lease ---------------------------------------------------

    async def _provision(self, event: Event, rec: RawRecord, decision: Provision,
                         opportunity: str | None, held: list[Intent],
                         read_at: float) -> ProvisionResult:
        """``read_at``: when the guard read the decision went on was asked for (seconds on
        :func:`common.clock.lease_clock`, GuardCheck's clock).
        That read is asked again right before the ``AddOrder`` once stale — older than
        ``guard_max_age_s``, or followed by a wait (the lease's here, the provisioner's
        own): :class:`~streams.guard_check.GuardCheck`. The request stays the one mapped from
        the first read (the intent, durable before, names its client)."""
        oid = event.order_id

        async def read() -> ProvisionResult | None:
            order = await self.reads.get(oid)  # coalesced with every other read
            return _refusal(not_found(oid) if order is None else guard(order))
        verdict = GuardCheck(read, read_at=read_at, max_age_s=self.guard_max_age_s,
                             refused=_refusal(decision.refused))
        check = await self._own(rec, "intent", on_wait=verdict.waiting)
        held.append(Intent.pending(
            order_id=event.order_id, idem_key=event.idem_key, event_uuid=event.event_uuid,
            attempt=decision.previous_attempts + 1, client_id=decision.request.client_id,
            at=self._clock(), writer=self.writer_id, lease_until=self._lease_until(check),
            correlation_id=event.correlation_id, requested_at=event.requested_at,
            opportunity_id=opportunity, earlier_client_ids=decision.earlier_client_ids,
            # the event's place: the sweep leaves the intent to the event's redelivery
            # until the group's commit has passed it (streams.recovery)
            partition=rec.partition if rec.partition >= 0 else None,
            offset=rec.offset if rec.offset >= 0 else None))
        self.state.set_intent(held[-1])
        await self.durable()  # the pending intent is durable before any AddOrder
        settle_at = None
        if decision.lookup_first:
            settle_at = self.provisioner.policy.settle_at_ms((decision.sends_until or 0) / 1000)
        return await self.provisioner.provision(
            decision.request, settle_at_ms=settle_at,
            fence=self._fence(rec, held, on_wait=verdict.waiting),
            earlier_client_ids=decision.earlier_client_ids, guard=verdict)

    async def _own(self, rec: RawRecord, stage: str,
                   on_wait: Callable[[], None] | None = None) -> LeaseCheck:
        """The lease, held (see :func:`~streams.lease.hold`); ``on_wait`` is told when it
        has to wait for it."""
        if self.lease is None:
            return LeaseCheck(True, valid_until_wall=(self._clock() + self.intent_lease_ms)
                              / 1000)

        def waiting(check: LeaseCheck) -> None:
            if on_wait is not None:
                on_wait()
            metrics.LEASE_WAITS.inc()
            log.info("waiting for the ownership lease before %s: %s", stage, check.reason,
                     extra={"partition": rec.partition, "offset": rec.offset})
        return await hold(self.lease, rec.partition, rec.generation, stage=stage,
                          on_wait=waiting)

    def _lease_until(self, check: LeaseCheck) -> int:
        """The intent's lease: as long as the group lease, at most ``intent_lease_s``."""
        return self.intent_lease.until(check)

    def _fence(self, rec: RawRecord, held: list[Intent],
               on_wait: Callable[[], None] | None = None) -> Fence:
        """Awaited right before each WHMCS write: the group lease holds, and the durable
        intent says this writer may still send, else it is renewed first
        (:meth:`streams.lease.IntentLease.fence`, the sweep's too). ``on_wait``: told when
        it waits for the lease."""
        async def own(action: str) -> LeaseCheck | None:
            check = await self._own(rec, action, on_wait)
            return check if self.lease is not None else None
        return self.intent_lease.fence(own, held)


def _refusal(verdict: Final | None) -> ProvisionResult | None:
    """The guard's verdict as the result a provisioning ends with instead of an AddOrder."""
    if verdict is None:
        return None
    return ProvisionResult(verdict.status, verdict.whmcs_order_id,
                           error_code=verdict.error_code, error_message=verdict.error_message)
