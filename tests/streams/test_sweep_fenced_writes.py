"""streams.recovery: the sweep asks the ownership lease before each of its table writes.

``owns()`` is the consumer's own view (the partition assigned, no rebalance seen) — during a
broker cut, or right after resuming from a pause past the session timeout, it still says
yes while the group may have given the partition to another member. The lease says no then
(no heartbeat accepted within the lease). A write the sweep makes anyway lands in the
partition's changelog after the new owner's: a tombstone of an expired intent over the new
owner's pending intent for a fresh approval, a settled intent, an outcome marked as sent.
So the expiry (``delete_intent``, the dedupe trims), the settling of a pending intent from
its decided dedupe entry and the ``mark_emitted`` after a send are each made only while the
lease holds (README: the lease is "asked before it writes a table")."""

from __future__ import annotations

import asyncio

from streams.lease import Fenced, LeaseCheck, OwnershipLease
from streams.recovery import DAY_MS, Sweeper
from streams.state import Intent, OrderState

NOW = 100 * DAY_MS
OLD = NOW - 40 * DAY_MS  # past the 35-day TTL
RECENT = NOW - 700_000  # past the 600 s recovery delay
OID = "801O00000000001AAA"
PARTITION, GENERATION = 0, 7
SESSION_S, MARGIN_S = 30.0, 10.0


class Mono:
    """The lease's monotonic clock (a pause advances it)."""

    def __init__(self) -> None:
        self.s = 1_000.0

    def __call__(self) -> float:
        return self.s


def _lease(mono: Mono, *, expired: bool) -> OwnershipLease:
    """PARTITION held in GENERATION; ``expired``: the last accepted heartbeat was sent longer
    ago than the lease lasts (the consumer, cut off or just resumed, does not know yet)."""
    lease = OwnershipLease(session_timeout_s=SESSION_S, margin_s=MARGIN_S, clock=mono,
                           wall=lambda: NOW / 1000)
    lease.synced(GENERATION, mono())
    lease.assigned([PARTITION], GENERATION)
    if expired:
        mono.s += SESSION_S + 1
    return lease


def _fence_for(lease: OwnershipLease):
    """The worker's sweep lease (streams.app.Worker._sweep_fence): the lease of the
    generation the job began in, Fenced when it does not hold."""
    def fence_for(_oid):
        began = lease.generation

        async def fence(action: str) -> LeaseCheck:
            if began is None:
                raise Fenced(LeaseCheck(False, "no generation", lost=True), stage=action)
            check = lease.check(PARTITION, began)
            if not check.ok:
                raise Fenced(check, stage=action)
            return check
        return fence
    return fence_for


class Tables(dict):
    """A table that records the sweep's writes."""

    def __init__(self, data, writes):
        super().__init__(data)
        self.writes = writes

    def __setitem__(self, key, value):
        self.writes.append(("set", key))
        super().__setitem__(key, value)

    def __delitem__(self, key):
        self.writes.append(("del", key))
        super().__delitem__(key)


class Emitter:
    """Sends; ``lapse``: the lease runs out while the send is under way."""

    def __init__(self, mono: Mono | None = None) -> None:
        self.sent: list[dict] = []
        self.mono = mono

    async def send_outcome(self, outcome):
        self.sent.append(outcome)
        if self.mono is not None:
            self.mono.s += SESSION_S + 1


def _sweeper(idem, intents, lease, writes, emitter=None) -> tuple[Sweeper, OrderState]:
    state = OrderState(Tables(idem, writes), Tables(intents, writes))

    async def flush():
        return None
    state.flush = flush  # type: ignore[method-assign]
    sweeper = Sweeper(state, None, emitter or Emitter(),  # type: ignore[arg-type]
                      recovery_after_s=600, dedupe_ttl_days=35,
                      owns=lambda _oid: True,  # the consumer still believes it
                      fence_for=_fence_for(lease), clock_ms=lambda: NOW)
    return sweeper, state


def _stale() -> tuple[dict, dict]:
    """A forgettable intent and a dedupe entry, both past the TTL."""
    old = Intent.pending(order_id=OID, idem_key="k", event_uuid="e", attempt=1, client_id=1,
                         at=OLD, writer="w", lease_until=0).settled(
        {"status": "Failed", "error_code": "MISSING_WHMCS_CLIENT"}, OLD)
    assert old.forgettable
    idem = {OID: {"old": {"event_uuid": "x", "at": OLD, "emitted": True, "outcome": {}},
                  "new": {"event_uuid": "y", "at": NOW, "emitted": True, "outcome": {}}}}
    return idem, {OID: old.to_json()}


def _decided_but_pending() -> tuple[dict, dict]:
    """A pending intent whose decision reached the dedupe entry (a crash between the two
    writes), its outcome sent."""
    intent = Intent.pending(order_id=OID, idem_key="k", event_uuid="e", attempt=1,
                            client_id=1, at=RECENT, writer="w", lease_until=0)
    outcome = {"order_id": OID, "idem_key": "k", "event_uuid": "e", "status": "Provisioned",
               "whmcs_order_id": 55}
    idem = {OID: {"k": {"event_uuid": "e", "at": RECENT, "emitted": True,
                        "outcome": outcome}}}
    return idem, {OID: intent.to_json()}


def _unsent() -> dict:
    """A decided outcome whose send was never acknowledged."""
    outcome = {"order_id": OID, "idem_key": "k", "event_uuid": "e", "status": "Provisioned",
               "whmcs_order_id": 55}
    return {OID: {"k": {"event_uuid": "e", "at": RECENT, "emitted": False,
                        "outcome": outcome}}}


def test_an_expired_lease_deletes_no_stale_intent_and_trims_no_dedupe_entry():
    """(a) The full scan's expiry: the consumer still believes it owns the partition, the
    lease has lapsed. No tombstone, no trim — the partition's next owner expires them."""
    writes: list = []
    idem, intents = _stale()
    sweeper, state = _sweeper(idem, intents, _lease(Mono(), expired=True), writes)
    report = asyncio.run(sweeper.run_once())
    assert writes == []
    assert OID in state.intents and "old" in state.idem[OID]
    assert (report.expired_intents, report.expired_idem) == (0, 0)


def test_a_held_lease_expires_them():
    """The control: the same tables with the lease held are expired."""
    writes: list = []
    idem, intents = _stale()
    sweeper, state = _sweeper(idem, intents, _lease(Mono(), expired=False), writes)
    report = asyncio.run(sweeper.run_once())
    assert OID not in state.intents and "old" not in state.idem[OID]
    assert (report.expired_intents, report.expired_idem) == (1, 1)


def test_an_expired_lease_settles_no_pending_intent_from_its_dedupe_entry():
    """(b) A pending intent whose outcome is in the dedupe entry is not settled from it while
    the lease has lapsed: the write would land over the new owner's intent."""
    writes: list = []
    idem, intents = _decided_but_pending()
    sweeper, state = _sweeper(idem, intents, _lease(Mono(), expired=True), writes)
    asyncio.run(sweeper.run_once())
    assert writes == []
    intent = state.intent(OID)
    assert intent is not None and intent.is_pending


def test_a_held_lease_settles_it():
    writes: list = []
    idem, intents = _decided_but_pending()
    sweeper, state = _sweeper(idem, intents, _lease(Mono(), expired=False), writes)
    asyncio.run(sweeper.run_once())
    intent = state.intent(OID)
    assert intent is not None and not intent.is_pending
    assert writes == [("set", OID)]


def test_a_lease_lapsing_during_a_resend_leaves_the_outcome_unmarked():
    """(c) The lease held when the resend went out and lapsed before its acknowledgement
    was recorded: the outcome is not marked as sent (whoever owns the partition next sends
    it again, identical — the Flow ignores a repeat)."""
    writes: list = []
    mono = Mono()
    emitter = Emitter(mono)  # the lease lapses during the send
    sweeper, state = _sweeper(_unsent(), {}, _lease(mono, expired=False), writes, emitter)
    asyncio.run(sweeper.run_once())
    assert len(emitter.sent) == 1
    assert writes == []
    assert not state.memory(OID)["k"].emitted


def test_a_resend_under_the_lease_is_marked():
    writes: list = []
    emitter = Emitter()
    sweeper, state = _sweeper(_unsent(), {}, _lease(Mono(), expired=False), writes, emitter)
    asyncio.run(sweeper.run_once())
    assert len(emitter.sent) == 1
    assert state.memory(OID)["k"].emitted


class _Absent:
    """A provisioner whose lookup finds no WHMCS order for the Order."""

    class policy:  # noqa: N801 - the attribute the sweep reads
        @staticmethod
        def settle_at_ms(_sends_until_s):
            return 0

    async def lookup(self, request, **_kw):
        return None


def test_a_lease_lapsing_during_a_recovered_outcomes_send_leaves_it_unmarked():
    """(c) The recovery's send: the outcome recorded and sent under the lease, which lapses
    before the acknowledgement is recorded — not marked as sent."""
    writes: list = []
    mono = Mono()
    emitter = Emitter(mono)
    intent = Intent.pending(order_id=OID, idem_key="k", event_uuid="e", attempt=1,
                            client_id=1, at=RECENT, writer="w", lease_until=0)
    sweeper, state = _sweeper({}, {OID: intent.to_json()}, _lease(mono, expired=False),
                              writes, emitter)
    sweeper.provisioner = _Absent()  # type: ignore[assignment]
    report = asyncio.run(sweeper.run_once())
    assert [o["error_code"] for o in emitter.sent] == ["PROVISIONING_INTERRUPTED"]
    assert report.interrupted == 1
    assert not state.memory(OID)["k"].emitted
    assert writes == [("set", OID), ("set", OID)]  # the entry recorded (durable first), the intent settled
