"""streams.recovery: pending intents without an event get a lookup and an outcome."""

from __future__ import annotations

import asyncio
from collections.abc import KeysView

from common.settings import WhmcsSettings
from common.whmcs import WhmcsClient
from streams.mapping import WhmcsItem, WhmcsOrderRequest
from streams.provision import Provisioner, ProvisionPolicy
from streams.recovery import DAY_MS, Sweeper
from streams.state import OrderState


class Emitter:
    def __init__(self):
        self.sent = []

    async def send_outcome(self, outcome):
        self.sent.append(outcome)


def new_state():
    return OrderState({}, {})


def sweeper_over(state, clock, emitter=None, provisioner=None, lanes=None):
    """A Sweeper over ``state`` (no WHMCS behind it unless ``provisioner``)."""
    return Sweeper(state, provisioner, emitter or Emitter(),  # type: ignore[arg-type]
                   recovery_after_s=600, dedupe_ttl_days=35, owns=lambda _oid: True,
                   clock_ms=clock, lanes=lanes)


def intent(order_id, client_id, at):
    return {"order_id": order_id, "idem_key": f"{order_id}-k", "event_uuid": "ev",
            "correlation_id": "c", "requested_at": 1, "state": "pending", "attempt": 1,
            "client_id": client_id, "opportunity_id": "006", "whmcs_order_id": None,
            "outcome": None, "at": at}


def test_sweep_recovers_expires_and_leaves_young_intents(whmcs):
    now = 10 * DAY_MS
    found, absent, young = "801S00000000001AAA", "801S00000000002AAA", "801S00000000003AAA"
    state = new_state()
    state.intents = {found: intent(found, 1012, now - 700_000),
                     absent: intent(absent, 1012, now - 700_000),
                     young: intent(young, 1012, now - 1_000),
                     "801S00000000004AAA": {"state": "accepted", "at": now - 40 * DAY_MS}}
    state.idem = {"801S00000000005AAA": {"old": {"event_uuid": "x", "at": now - 40 * DAY_MS,
                                                  "emitted": True, "outcome": {}}}}
    emitter = Emitter()

    async def go():
        async with WhmcsClient(WhmcsSettings.load(whmcs.env())) as client:
            await client.add_order(WhmcsOrderRequest(
                order_id=found, client_id=1012,
                items=(WhmcsItem(pid=4, billingcycle="annually", qty=1),),
                notes=f"sfOrderId={found}").params())
            sweeper = sweeper_over(state, lambda: now, emitter, Provisioner(
                client, ProvisionPolicy(whmcs_timeout_s=0.1, lookup_grace_s=0.05)))
            first = await sweeper.run_once()
            second = await sweeper.run_once()
            return first, second
    first, second = asyncio.run(go())
    assert (first.recovered, first.interrupted, first.expired_intents, first.expired_idem) == (
        1, 1, 1, 1)
    by_order = {o["order_id"]: o for o in emitter.sent}
    assert by_order[found]["status"] == "Provisioned" and by_order[found]["recovered"]
    assert by_order[absent]["error_code"] == "PROVISIONING_INTERRUPTED"
    assert young not in by_order and state.intents[young]["state"] == "pending"
    assert whmcs.orders_for(found)[0]["status"] == "Active"  # accepted by the sweep
    assert whmcs.orders_for(absent) == []  # the sweep never creates
    assert state.idem[found][f"{found}-k"]["emitted"] is True
    assert (second.recovered, second.interrupted, second.resent) == (0, 0, 0)
    assert len(emitter.sent) == 2


def test_an_old_failed_intent_that_may_have_created_an_order_is_never_expired():
    """A Failed attempt whose AddOrder may have landed (WHMCS down past the deadline): no
    WHMCS id was written back to Salesforce, so the intent is all that remembers it. Expired
    after the dedupe TTL, the Order re-approved later would call AddOrder without a lookup."""
    now = 100 * DAY_MS
    maybe, surely_not = "801S00000000011AAA", "801S00000000012AAA"
    failed = {"state": "failed", "at": now - 40 * DAY_MS, "outcome": {"status": "Failed"}}
    state = new_state()
    state.intents = {maybe: {**failed, "may_exist": True},
                     surely_not: {**failed, "may_exist": False}}
    report = asyncio.run(sweeper_over(state, lambda: now).run_once())
    assert report.expired_intents == 1
    assert maybe in state.intents and surely_not not in state.intents


class BusyLanes:
    """Stands for the Orders' lanes: ``busy`` Orders have events in flight."""

    def __init__(self, busy):
        self.busy_orders = set(busy)

    def busy(self, order_id):
        return order_id in self.busy_orders

    async def exclusive(self, order_id, job):
        await job()


def test_a_large_table_is_scanned_without_stopping_events_and_busy_orders_are_left_alone():
    """10,000 settled Orders and two expired entries: the scan yields to the event loop (other
    tasks keep running); an Order with events in flight is not touched this time."""
    now = 100 * DAY_MS
    state = new_state()
    state.intents = {f"801L{i:011d}AAA": {"state": "accepted", "at": now - 1000}
                     for i in range(10_000)}
    state.idem = {f"801L{i:011d}AAA": {"k": {"event_uuid": "e", "at": now - 1000,
                                             "emitted": True, "outcome": {}}}
                  for i in range(10_000)}
    expired, busy = "801X00000000042AAA", "801X00000000043AAA"
    for oid in (expired, busy):
        state.idem[oid] = {"k": {"event_uuid": "e", "at": now - 40 * DAY_MS, "emitted": True,
                                 "outcome": {}}}
    sweeper = sweeper_over(state, lambda: now, lanes=BusyLanes({busy}))

    async def go():
        ticks = 0
        scanning = asyncio.Event()

        async def other_work():  # stands for the events in the lanes
            nonlocal ticks
            while not scanning.is_set():
                ticks += 1
                await asyncio.sleep(0)

        ticker = asyncio.create_task(other_work())
        report = await sweeper.run_once()
        scanning.set()
        await ticker
        return ticks, report

    ticks, report = asyncio.run(go())
    assert ticks > 20  # the scan (20,000 entries) let other tasks run between slices
    assert report.expired_idem == 1 and expired not in state.idem
    assert busy in state.idem  # its lane was busy: the next sweep expires it
    assert len(state.idem) == 10_001


def test_indexed_sweeps_read_only_what_the_tables_reported():
    """With change reports (as the Faust tables give), sweeps between full scans look only at
    pending intents and unsent outcomes — and still find one that appeared after the scan."""
    now = [100 * DAY_MS]
    state = new_state()
    state.watched = True
    state.intents = {f"801W{i:011d}AAA": {"state": "accepted", "at": now[0]}
                     for i in range(2_000)}
    reads = []

    class CountingDict(dict):
        def get(self, key, default=None):
            reads.append(key)
            return super().get(key, default)
    state.intents = CountingDict(state.intents)
    sweeper = sweeper_over(state, lambda: now[0])
    first = asyncio.run(sweeper.run_once())
    assert sweeper.full_scans == 1 and len(reads) == 2_000 and first.pending == 0
    late = "801W99999999999AAA"
    state.intents[late] = intent(late, 1012, now[0])
    sweeper.watch_intent(late, state.intents[late])  # what DurableTable.watch does
    reads.clear()
    now[0] += 60_000
    second = asyncio.run(sweeper.run_once())
    assert sweeper.full_scans == 1 and reads == [late] and second.pending == 1
    state.intents[late] = {**state.intents[late], "state": "accepted"}
    sweeper.watch_intent(late, state.intents[late])
    reads.clear()
    asyncio.run(sweeper.run_once())
    assert reads == [] and sweeper.full_scans == 1  # nothing pending: nothing read
    sweeper.rescan()  # a new assignment
    asyncio.run(sweeper.run_once())
    assert sweeper.full_scans == 2 and len(reads) == 2_001


def test_a_pending_intent_whose_outcome_the_dedupe_entry_holds_is_settled_not_recovered():
    """A crash cut step 5 between the idem write and the intents write: the dedupe entry has
    the decided outcome (unsent), the intent is still pending. The sweep settles the intent
    from it and re-sends that identical outcome once — no WHMCS lookup, no second,
    'recovered' outcome."""
    now = 10 * DAY_MS
    oid = "801S00000000009AAA"
    decided = {"order_id": oid, "idem_key": f"{oid}-k", "event_uuid": "ev",
               "status": "Provisioned", "whmcs_order_id": 77, "completed_at": 5}
    state = new_state()
    state.intents = {oid: intent(oid, 1012, now - 700_000)}
    state.idem = {oid: {f"{oid}-k": {"event_uuid": "ev", "status": "Provisioned",
                                      "outcome": decided, "emitted": False,
                                      "at": now - 700_000, "dups": {}}}}
    emitter = Emitter()

    class NoLookups:
        async def lookup(self, *_a, **_kw):
            raise AssertionError("the intent's outcome is known: no WHMCS lookup")

    sweeper = sweeper_over(state, lambda: now, emitter, NoLookups())

    async def go():
        await sweeper.run_once()
        await sweeper.run_once()
    asyncio.run(go())
    assert emitter.sent == [decided]
    assert state.intents[oid]["state"] == "accepted"
    assert state.intents[oid]["whmcs_order_id"] == 77
    assert state.idem[oid][f"{oid}-k"]["emitted"] is True


def test_the_sweep_sends_no_outcome_for_an_order_whose_partition_is_lost_before_the_send():
    """The sweep's owner check (the assignment it knows) passes, but the lease says the
    partition went to another worker (its assignment is stale: cut off from the brokers).
    The unsent outcome stays unsent — the partition's new owner sends it — and is sent once
    the lease says the partition is ours."""
    from streams.lease import Fenced, LeaseCheck

    now = 10 * DAY_MS
    oid = "801S00000000010AAA"
    decided = {"order_id": oid, "idem_key": f"{oid}-k", "event_uuid": "ev",
               "status": "Provisioned", "whmcs_order_id": 78, "completed_at": 5}
    state = new_state()
    state.idem = {oid: {f"{oid}-k": {"event_uuid": "ev", "status": "Provisioned",
                                      "outcome": decided, "emitted": False,
                                      "at": now - 700_000, "dups": {}}}}
    emitter = Emitter()
    lost = [True]

    def fence_for(_oid):
        async def fence(action, *, queued=False):
            if lost[0]:
                raise Fenced(LeaseCheck(False, "partition 0 is not assigned", lost=True),
                             stage=action)
            return None
        return fence
    sweeper = Sweeper(state, None, emitter, recovery_after_s=600,  # type: ignore[arg-type]
                      dedupe_ttl_days=35, owns=lambda _oid: True, clock_ms=lambda: now,
                      fence_for=fence_for)

    async def go():
        first = await sweeper.run_once()
        sent_while_lost = list(emitter.sent)
        lost[0] = False
        second = await sweeper.run_once()
        return first, sent_while_lost, second
    first, sent_while_lost, second = asyncio.run(go())
    assert sent_while_lost == [] and first.resent == 0
    assert emitter.sent == [decided] and second.resent == 1


class LazyTable(dict):
    """Stands for a faust table on RocksDB: its keys come one by one from an iterator, and
    ``len()`` would iterate the whole store (faust's ``Store._size``)."""

    def __init__(self, entries, events):
        super().__init__(entries)
        self.events = events
        self.len_calls = 0

    def __len__(self):
        self.len_calls += 1
        return super().__len__()

    def __iter__(self):
        for key in list(dict.keys(self)):
            self.events.append("key")
            yield key

    def keys(self):
        return KeysView(self)  # as faust's tables: len(view) is len(table)


def test_a_full_scan_reads_the_keys_a_slice_at_a_time_and_never_asks_len():
    """The 2 s stall of make bench's steady phase: the full scan after an assignment listed
    the keys with list(table.keys()) — len() first (a whole pass over RocksDB), then every
    key, in one go. Now other tasks run between slices of the key listing itself."""
    now = 100 * DAY_MS
    events: list[str] = []
    state = new_state()
    state.intents = LazyTable({f"801K{i:011d}AAA": {"state": "accepted", "at": now}
                               for i in range(3_000)}, events)
    state.idem = LazyTable({f"801K{i:011d}AAA": {"k": {"event_uuid": "e", "at": now,
                                                       "emitted": True, "outcome": {}}}
                            for i in range(3_000)}, events)
    sweeper = sweeper_over(state, lambda: now)

    async def go():
        done = asyncio.Event()

        async def other_work():  # stands for the batches
            while not done.is_set():
                events.append("tick")
                await asyncio.sleep(0)

        ticker = asyncio.create_task(other_work())
        await asyncio.sleep(0)
        report = await sweeper.run_once()
        done.set()
        await ticker
        return report

    report = asyncio.run(go())
    assert report.pending == 0 and sweeper.full_scans == 1
    assert state.intents.len_calls == 0 and state.idem.len_calls == 0
    first, last = events.index("key"), len(events) - 1 - events[::-1].index("key")
    listing = events[first:last + 1]
    assert listing.count("key") == 6_000
    assert listing.count("tick") >= 6_000 // 500 - 1  # a yield every slice of the listing
    # the longest run of keys read without a yield is one slice
    runs = "".join("k" if e == "key" else "t" for e in listing).split("t")
    assert max(len(r) for r in runs) <= 500


def test_a_rescan_asked_for_during_a_full_scan_is_not_lost():
    now = 100 * DAY_MS
    state = new_state()
    state.watched = True
    state.intents = {f"801R{i:011d}AAA": {"state": "accepted", "at": now} for i in range(2_000)}
    sweeper = sweeper_over(state, lambda: now)

    async def go():
        sweep = asyncio.create_task(sweeper.run_once())
        await asyncio.sleep(0)  # the scan has started and yielded
        await asyncio.sleep(0)
        sweeper.rescan()  # a new assignment arrives mid-scan
        await sweep
        await sweeper.run_once()

    asyncio.run(go())
    assert sweeper.full_scans == 2  # the second sweep scanned the new assignment in full


class LookupOnly:
    """A provisioner whose WHMCS has no order for anything; counts the lookups."""

    def __init__(self):
        from streams.provision import ProvisionPolicy
        self.policy = ProvisionPolicy()
        self.lookups = []

    async def lookup(self, request, *, fence, settle_at_ms=None, earlier_client_ids=()):
        self.lookups.append(request.order_id)
        return None


class LanesThen:
    """Runs each job after ``before()`` (what happened while the job waited for its lane)."""

    def __init__(self, before):
        self.before = before

    def busy(self, _order_id):
        return False

    async def exclusive(self, _order_id, job):
        self.before()
        await job()


def _pending_state(now):
    state = new_state()
    oid = "801S00000000021AAA"
    state.intents = {oid: intent(oid, 1012, now - 700_000)}
    return state, oid


def test_the_sweep_leaves_an_order_whose_tables_began_restoring_after_its_scan():
    """Scanned while owned; by the time its lane ran the job, a rebalance began (its tables
    restoring: the intent may read pending while its changelog settles it): nothing done."""
    now = 10 * DAY_MS
    state, oid = _pending_state(now)
    owning = [True]
    provisioner, emitter = LookupOnly(), Emitter()
    sweeper = Sweeper(state, provisioner, emitter, recovery_after_s=600,  # type: ignore[arg-type]
                      dedupe_ttl_days=35, owns=lambda _oid: owning[0], clock_ms=lambda: now,
                      lanes=LanesThen(lambda: owning.__setitem__(0, False)))
    report = asyncio.run(sweeper.run_once())
    assert provisioner.lookups == [] and emitter.sent == []
    assert state.intents[oid]["state"] == "pending" and report.interrupted == 0


def test_the_sweep_resends_nothing_for_an_order_whose_tables_began_restoring_after_its_scan():
    """Scanned while owned, an unsent outcome; by the time its lane ran the job a rebalance
    gave the partition back and its tables were restoring (the lease of the new generation
    holding): the outcome read from them may be one the restore is about to replace (a late
    writer's, left out or rewritten) — nothing is sent. Owned again, it is."""
    now = 10 * DAY_MS
    oid = "801S00000000022AAA"
    decided = {"order_id": oid, "idem_key": f"{oid}-k", "event_uuid": "ev",
               "status": "Failed", "completed_at": now - 700_000}
    state = new_state()
    state.idem = {oid: {f"{oid}-k": {"event_uuid": "ev", "status": "Failed",
                                      "outcome": decided, "emitted": False,
                                      "at": now - 700_000, "dups": {}}}}
    owning = [True]
    emitter = Emitter()
    sweeper = Sweeper(state, None, emitter, recovery_after_s=600,  # type: ignore[arg-type]
                      dedupe_ttl_days=35, owns=lambda _oid: owning[0], clock_ms=lambda: now,
                      lanes=LanesThen(lambda: owning.__setitem__(0, False)))
    report = asyncio.run(sweeper.run_once())
    assert emitter.sent == [] and report.resent == 0
    assert state.idem[oid][f"{oid}-k"]["emitted"] is False
    sweeper.lanes = LanesThen(lambda: None)
    owning[0] = True
    report = asyncio.run(sweeper.run_once())
    assert emitter.sent == [decided] and report.resent == 1


def test_the_sweep_writes_no_table_once_the_order_is_no_longer_its_own():
    """The lookup took time; the partition went to another worker meanwhile: the sweep must
    not settle the intent nor record an outcome in tables another worker now writes."""
    from streams.lease import Fenced, LeaseCheck

    now = 10 * DAY_MS
    state, oid = _pending_state(now)

    def fence_for(_oid):
        async def fence(action, *, queued=False):
            if action == "record":
                raise Fenced(LeaseCheck(False, "partition changed hands (test)"), stage=action)
            return None
        return fence
    provisioner, emitter = LookupOnly(), Emitter()
    sweeper = Sweeper(state, provisioner, emitter, recovery_after_s=600,  # type: ignore[arg-type]
                      dedupe_ttl_days=35, owns=lambda _oid: True, clock_ms=lambda: now,
                      fence_for=fence_for)
    asyncio.run(sweeper.run_once())
    assert provisioner.lookups == [oid]
    assert state.intents[oid]["state"] == "pending" and oid not in state.idem
    assert emitter.sent == []


def test_an_indexed_sweep_resends_a_duplicate_events_unsent_outcome():
    """Between full scans the index named only entries whose first event's outcome was
    unsent: a duplicate event's unsent outcome waited for the next full scan."""
    now = [100 * DAY_MS]
    state = new_state()
    state.watched = True
    sweeper = sweeper_over(state, lambda: now[0])
    asyncio.run(sweeper.run_once())
    assert sweeper.full_scans == 1
    oid = "801W00000000001AAA"
    first = {"order_id": oid, "status": "Provisioned", "event_uuid": "ev-1"}
    again = {**first, "event_uuid": "ev-2"}
    state.idem[oid] = {f"{oid}-k": {"event_uuid": "ev-1", "status": "Provisioned",
                                    "outcome": first, "emitted": True, "at": now[0],
                                    "dups": {"ev-2": {"outcome": again, "emitted": False}}}}
    sweeper.watch_idem(oid, state.idem[oid])  # what DurableTable.watch does
    now[0] += 601_000  # past recovery_after_s
    emitter = sweeper.emitter
    asyncio.run(sweeper.run_once())
    assert sweeper.full_scans == 1, "an indexed sweep, not a full scan"
    assert emitter.sent == [again]
    asyncio.run(sweeper.run_once())
    assert emitter.sent == [again], "sent once: marked as sent"


def test_an_outcome_the_schema_refuses_is_said_once_and_does_not_fail_the_sweep():
    """The sweep re-sent it at every sweep and failed with the refusal each time (a
    traceback a minute), the Order's other unsent outcomes with it."""
    from common.avro import SerdeError

    class Refusing(Emitter):
        def __init__(self):
            super().__init__()
            self.tries = 0

        async def send_outcome(self, outcome):
            if outcome["event_uuid"] == "ev-bad":
                self.tries += 1
                raise SerdeError("whmcs_client_id: 99999999999999999999 is not a long")
            await super().send_outcome(outcome)
    now = [100 * DAY_MS]
    state = new_state()
    oid = "801W00000000001AAA"
    bad = {"order_id": oid, "status": "Failed", "event_uuid": "ev-bad"}
    good = {"order_id": oid, "status": "Duplicate", "event_uuid": "ev-good"}
    state.idem[oid] = {f"{oid}-k": {"event_uuid": "ev-bad", "status": "Failed",
                                    "outcome": bad, "emitted": False, "at": now[0],
                                    "dups": {"ev-good": {"outcome": good, "emitted": False}}}}
    emitter = Refusing()
    sweeper = sweeper_over(state, lambda: now[0], emitter=emitter)
    now[0] += 601_000
    report = asyncio.run(sweeper.run_once())
    assert emitter.sent == [good] and report.resent == 1 and emitter.tries == 1
    now[0] += 60_000
    asyncio.run(sweeper.run_once())
    assert emitter.tries == 1 and emitter.sent == [good]


def test_an_event_provisioned_intent_outlives_the_dedupe_ttl():
    """The event's own provisioning settled the intent accepted with may_exist False (as
    every release so far stored it), so the sweep deleted it after the TTL with the dedupe
    entry. The Order's write-back dead-lettered (still Activating), the event replayed from
    Kafka — or a new request — then decided Provision without a lookup: a second WHMCS
    order. An intent that names a WHMCS order is kept, as a recovered one always was."""
    from streams.decide import Event, Final, Provision, Redelivery, decide, outcome_record
    from streams.state import Intent
    from tests.streams.factories import order

    oid, t0 = "801S00000000031AAA", 1_000 * DAY_MS
    state = new_state()
    event = Event(order_id=oid, idem_key="k1", event_uuid="e1")
    pending = Intent.pending(order_id=oid, idem_key="k1", event_uuid="e1", attempt=1,
                             client_id=7, at=t0, writer="w", lease_until=t0 + 10_000)
    provisioned = outcome_record(event, "Provisioned", whmcs_order_id=55, whmcs_client_id=7,
                                 completed_at=t0)
    state.settle(oid, provisioned, t0, may_exist=False, current=pending)
    state.record(oid, "k1", "e1", provisioned, t0)
    state.mark_emitted(oid, "k1", "e1")

    now = t0 + 36 * DAY_MS  # the TTL (35 days) and a day
    report = asyncio.run(sweeper_over(state, lambda: now).run_once())
    assert report.expired_idem == 1 and oid not in state.idem  # the memory expires
    assert report.expired_intents == 0
    kept = state.intent(oid)
    assert kept is not None and (kept.state, kept.whmcs_order_id) == ("accepted", 55)

    activating = order(order_id=oid, client="7")  # the write-back never landed
    replayed = decide(event, state.memory(oid), kept, activating)
    assert not isinstance(replayed, Provision)
    assert isinstance(replayed, Redelivery) and replayed.outcome == provisioned
    again = decide(Event(order_id=oid, idem_key="k2", event_uuid="e2"), state.memory(oid),
                   kept, activating)
    assert isinstance(again, Final)
    assert (again.status, again.error_code, again.whmcs_order_id) == (
        "Skipped", "ALREADY_PROVISIONED", 55)


class _Checkpoint:
    """What Lanes asks of its checkpoint, nothing more."""

    sought_back: set[int] = set()

    def admitted(self, _partition, _offset):
        return 0

    def span(self, _partition):
        return 0

    def finished(self, *_a):
        pass

    def reset(self):
        pass


def test_an_order_whose_event_waits_in_its_lane_does_not_hold_up_the_sweep():
    """Order A's pending intent is due, but A's redelivered event waits in A's lane (a guard
    read during a Salesforce outage, WHMCS refusing the credentials). The sweep queued its
    recovery behind that event and waited for it: this sweep and — faust's timer runs them
    one after another — every later one stopped (no resends, no recovery, no expiry)."""
    from streams.decide import Event, outcome_record
    from streams.lanes import Admitted, Lanes
    from streams.state import Intent

    now = 100 * DAY_MS
    a, b = "801S00000000041AAA", "801S00000000042AAA"
    state = new_state()
    state.set_intent(Intent.pending(order_id=a, idem_key="ka", event_uuid="ea", attempt=1,
                                    client_id=1, at=now - 700_000, writer="w",
                                    lease_until=now - 690_000))
    unsent = outcome_record(Event(b, "kb", "eb"), "Failed", error_code="X",
                            completed_at=now - 700_000)
    state.record(b, "kb", "eb", unsent, now - 700_000)
    provisioner, emitter = LookupOnly(), Emitter()

    async def go():
        lanes = Lanes(_Checkpoint(), release=lambda _m: None)  # type: ignore[arg-type]
        hang = asyncio.Event()

        async def waiting_event():
            await hang.wait()
            return True
        await lanes.admit(a, Admitted(0, 1, None, waiting_event))
        sweeper = Sweeper(state, provisioner, emitter,  # type: ignore[arg-type]
                          recovery_after_s=600, dedupe_ttl_days=35, owns=lambda _o: True,
                          lanes=lanes, clock_ms=lambda: now)
        try:
            return await asyncio.wait_for(sweeper.run_once(), timeout=5)
        finally:
            hang.set()
            await asyncio.sleep(0)
    report = asyncio.run(go())
    assert emitter.sent == [unsent] and report.resent == 1  # B's outcome went out
    assert provisioner.lookups == []  # A is left to its event
    assert state.intent(a).is_pending  # type: ignore[union-attr]
