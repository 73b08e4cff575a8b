"""The ownership lease (streams.lease) with an injected clock, and its place in the batch:
an expired lease means no WHMCS call and no outcome; a renewed one lets the call through."""

from __future__ import annotations

import asyncio

import pytest

from streams.lease import Fenced, LeaseCheck, OwnershipLease


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def lease(clock: Clock, session: float = 30.0, margin: float = 10.0) -> OwnershipLease:
    return OwnershipLease(session_timeout_s=session, margin_s=margin, clock=clock,
                          wall=lambda: 1_000_000 + clock.now)


def joined(clock: Clock, partitions=(0, 1), generation: int = 5) -> OwnershipLease:
    owned = lease(clock)
    owned.synced(generation, clock.now)
    owned.assigned(partitions, generation)
    return owned


def test_valid_right_after_the_sync_of_its_generation():
    clock = Clock()
    check = joined(clock).check(0, 5)
    assert check.ok and check.valid_until == 120.0 and check.valid_until_wall == 1_000_120.0


def test_expires_without_an_accepted_heartbeat_and_a_renewal_brings_it_back():
    clock = Clock()
    owned = joined(clock)
    clock.now += 19.9
    assert owned.check(0, 5).ok
    clock.now += 0.2  # 20.1 s after the last accepted contact: session 30 - margin 10
    check = owned.check(0, 5)
    assert not check.ok and "lease expired" in check.reason
    owned.heartbeat(5, clock.now, accepted=True)
    assert owned.check(0, 5).ok


def test_a_refused_heartbeat_renews_nothing_and_a_rebalance_ends_the_lease():
    clock = Clock()
    owned = joined(clock)
    clock.now += 15
    owned.heartbeat(5, clock.now, accepted=False)
    clock.now += 6
    assert not owned.check(0, 5).ok  # still measured from the sync
    owned.heartbeat(5, clock.now, accepted=True)
    assert owned.check(0, 5).ok
    owned.heartbeat(5, clock.now, accepted=False, rebalance=True)
    check = owned.check(0, 5)
    assert not check.ok and "rebalance" in check.reason


def test_renewal_counts_from_when_the_heartbeat_was_sent_not_answered():
    clock = Clock()
    owned = joined(clock)
    sent = clock.now + 5
    clock.now += 24  # the answer arrives 19 s after it was sent (a slow coordinator)
    owned.heartbeat(5, sent, accepted=True)
    assert owned.check(0, 5).valid_until == sent + 20


def test_a_heartbeat_of_an_older_generation_renews_nothing():
    clock = Clock()
    owned = joined(clock, generation=6)
    clock.now += 21
    owned.heartbeat(5, clock.now, accepted=True)
    assert not owned.check(0, 6).ok


def test_revocation_stops_writes_until_the_next_assignment():
    clock = Clock()
    owned = joined(clock)
    owned.rebalancing()
    assert not owned.check(0, 5).ok
    owned.synced(6, clock.now)
    owned.assigned([0, 1], 6)
    assert owned.check(0, 5).ok  # kept partition 0 through generations 5 → 6


def test_a_partition_lost_for_one_generation_never_serves_its_old_events_again():
    clock = Clock()
    owned = joined(clock, partitions=(0, 1), generation=5)
    owned.rebalancing()
    owned.synced(6, clock.now)
    owned.assigned([1], 6)  # partition 0 went to another worker in generation 6
    check = owned.check(0, 5)
    assert not check.ok and "not assigned" in check.reason
    owned.rebalancing()
    owned.synced(7, clock.now)
    owned.assigned([0, 1], 7)  # and came back
    check = owned.check(0, 5)
    assert not check.ok and "changed hands" in check.reason
    assert owned.check(0, 7).ok  # its redelivered events are ours again
    assert owned.check(1, 5).ok  # partition 1 stayed


def test_a_member_kicked_while_paused_rejoins_in_a_later_generation_without_continuity():
    clock = Clock()
    owned = joined(clock, partitions=(0,), generation=5)
    clock.now += 40  # SIGSTOP: the group moved on to generation 6 without us
    owned.heartbeat(5, clock.now, accepted=False, rebalance=True)  # UNKNOWN_MEMBER_ID
    owned.synced(7, clock.now)
    owned.assigned([0], 7)
    assert not owned.check(0, 5).ok
    assert owned.check(0, 7).ok


def test_the_same_generation_given_back_after_a_member_reset_is_never_ours():
    """Static membership (WORKER_INSTANCE_ID): a frozen worker's replacement under the same
    instance id took its partitions in generation 5 at once — no rebalance, no session
    expiry. The zombie, resumed, is told UNKNOWN_MEMBER_ID (aiokafka resets its member id),
    rejoins under its instance id and is given generation 5 back: its events taken in 5
    passed the lease while the replacement had provisioned them meanwhile."""
    clock = Clock()
    owned = joined(clock, partitions=(0,), generation=5)
    owned.member_reset()
    assert not owned.check(0, 5).ok  # nothing is written until assigned again
    owned.synced(5, clock.now)
    owned.assigned([0], 5)
    check = owned.check(0, 5)
    assert not check.ok and check.lost
    assert owned.regranted == 5 and not owned.held_since(0, 5)


def test_a_member_reset_then_a_later_generation_is_an_ordinary_new_run():
    """Dynamic membership: a reset always ends in a new generation, which is served."""
    clock = Clock()
    owned = joined(clock, partitions=(0,), generation=5)
    owned.member_reset()
    owned.synced(7, clock.now)
    owned.assigned([0], 7)
    assert owned.check(0, 7).ok and owned.check(0, 5).lost and owned.regranted is None


def test_the_adapter_tells_the_worker_when_a_generation_is_given_back():
    from streams.faust_seam import LeaseAdapter

    clock = Clock()
    owned = joined(clock, partitions=(0,), generation=5)
    told: list[str] = []
    adapter = LeaseAdapter(owned, "req", regranted=told.append)
    adapter.member_reset()
    owned.synced(5, clock.now)
    adapter.assigned({"req": {0}}, 5)
    assert len(told) == 1 and "WORKER_INSTANCE_ID" in told[0] and "generation 5" in told[0]
    assert owned.check(0, 5).lost


def test_held_since_asks_for_an_unbroken_hold_whatever_the_heartbeats():
    """What a table restore asks (decision 0016): held since generation 5, in the current
    generation; an expired lease does not matter, a break or a rebalance under way does."""
    clock = Clock()
    owned = joined(clock, partitions=(0, 1), generation=5)
    clock.now += 60  # no heartbeat accepted: the lease has expired, the hold has not
    assert not owned.check(0, 5).ok and owned.held_since(0, 5)
    owned.rebalancing()
    assert not owned.held_since(0, 5)  # a rebalance under way: not known
    owned.synced(6, clock.now)
    owned.assigned([1], 6)
    assert owned.held_since(1, 5) and not owned.held_since(0, 5)
    owned.rebalancing()
    owned.synced(7, clock.now)
    owned.assigned([0, 1], 7)  # partition 0 back: held since 7, not since 5
    assert owned.held_since(0, 7) and not owned.held_since(0, 6)
    assert owned.held_since(1, 5) and not owned.held_since(2, 7)


def test_leaving_the_group_fences_for_good_and_a_new_assignment_starts_a_new_run():
    """``lost()`` (the worker stopping): what waits for the lease is fenced, not left
    waiting; a later assignment serves only events taken in it."""
    from streams.lease import hold

    clock = Clock()
    owned = joined(clock)
    owned.lost()
    check = owned.check(0, 5)
    assert not check.ok and check.lost and "left the group" in check.reason
    assert owned.current(0).lost
    with pytest.raises(Fenced):
        asyncio.run(hold(owned, 0, 5, stage="AddOrder"))
    owned.synced(6, clock.now)
    owned.assigned([0], 6)
    assert owned.check(0, 6).ok and owned.check(0, 5).lost


def test_margin_must_be_shorter_than_the_session():
    with pytest.raises(ValueError):
        OwnershipLease(session_timeout_s=10, margin_s=10)


# -- in the batch: no call with an expired lease, a call with a renewed one -----------------

class FakeWhmcs:
    """The calls the Provisioner makes, recorded; ``on_call(action)`` runs before each."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []
        self.on_call = lambda _action: None
        self.next_id = 100

    async def add_order(self, params, *, send_deadline=None):
        from common.whmcs import AddOrderResult

        self.on_call("AddOrder")
        self.calls.append(("AddOrder", params))
        self.next_id += 1
        return AddOrderResult(order_id=self.next_id, service_ids=[self.next_id * 10])

    async def accept_order(self, order_id, *, autosetup=True, send_deadline=None):
        self.on_call("AcceptOrder")
        self.calls.append(("AcceptOrder", order_id))

    async def find_orders_by_marker(self, client_id, sf_order_id):
        return []


class Orders:
    def query(self, soql):
        from tests.streams.factories import order

        return [order(order_id=oid) for oid in ("801A00000000001AAA",) if oid in soql]


@pytest.fixture
def batch_parts():
    from tests.streams.factories import request_value
    from tests.streams.flowkit import Kit, records

    def build(*, lease):
        whmcs = FakeWhmcs()
        kit = Kit(salesforce=Orders(), whmcs_client=whmcs, lease=lease)
        return kit, whmcs

    def record(order_id, *, partition, generation, offset=7):
        return records([request_value(order_id)], partition=partition, start=offset,
                       generation=generation)[0]
    build.record = record  # type: ignore[attr-defined]
    return build


def _run(kit, record, *, until=None):
    """Process ``record``; with ``until``, stop waiting once ``until()`` is true (an event
    that waits for its lease never leaves the worker by itself)."""
    async def go():
        task = asyncio.ensure_future(kit.process([record]))
        while not task.done():
            if until is not None and until():
                task.cancel()
                return
            await asyncio.sleep(0.01)
        await task
    asyncio.run(go())


def test_an_expired_lease_makes_the_event_wait_with_no_call_until_it_is_renewed(batch_parts):
    clock = Clock()
    owned = joined(clock)
    kit, whmcs = batch_parts(lease=owned)
    clock.now += 25  # no heartbeat accepted for 25 s (a broker away, or this process paused)
    record = batch_parts.record("801A00000000001AAA", partition=0, generation=5)

    async def go():
        task = asyncio.ensure_future(kit.process([record]))
        await asyncio.sleep(0.3)
        waited = (list(whmcs.calls), list(kit.emitter.sent),
                  "801A00000000001AAA" in kit.tables.intents)
        owned.heartbeat(5, clock.now, accepted=True)  # the coordinator answers again
        await task
        return waited
    waited = asyncio.run(go())
    assert waited == ([], [], False)  # no call, no outcome, not even the intent meanwhile
    assert [c[0] for c in whmcs.calls] == ["AddOrder", "AcceptOrder"]
    assert [o["status"] for o in kit.emitter.sent] == ["Provisioned"]
    intent = kit.tables.intents["801A00000000001AAA"]
    assert intent["writer"] == "kit"
    assert intent["lease_until"] <= int(owned.check(0, 5).valid_until_wall * 1000)


def test_a_partition_lost_while_waiting_fences_the_event_no_call_no_outcome(batch_parts):
    clock = Clock()
    owned = joined(clock)
    kit, whmcs = batch_parts(lease=owned)
    clock.now += 25
    record = batch_parts.record("801A00000000001AAA", partition=0, generation=5)

    async def go():
        task = asyncio.ensure_future(kit.process([record]))
        await asyncio.sleep(0.2)
        owned.heartbeat(5, clock.now, accepted=False, rebalance=True)  # kicked out
        owned.synced(7, clock.now)
        owned.assigned([1], 7)  # partition 0 went to another worker
        await task
    asyncio.run(go())
    assert whmcs.calls == [] and kit.emitter.sent == []
    assert kit.finished == []  # fenced: never finished, so never committed past
    assert "801A00000000001AAA" not in kit.tables.intents


def test_a_durable_flush_that_outlives_the_lease_sends_no_outcome(batch_parts):
    """The outcome is decided and the lease checked; then the flush that makes it durable
    hangs (the brokers out of reach) while the partition goes to another worker, which
    restores the tables without it and decides the event itself. Once the flush lands, the
    outcome must not be sent: two different outcomes for one event otherwise."""
    clock = Clock()
    owned = joined(clock)
    kit, whmcs = batch_parts(lease=owned)
    flush = kit.handler.durable
    flushes = []

    async def durable() -> None:
        flushes.append(len(whmcs.calls))
        if len(whmcs.calls) == 2 and flushes.count(2) == 1:  # the outcome's flush
            owned.rebalancing()
            owned.synced(6, clock.now)
            owned.assigned([1], 6)
        await flush()
    kit.handler.durable = durable
    record = batch_parts.record("801A00000000001AAA", partition=0, generation=5)
    _run(kit, record)
    assert [c[0] for c in whmcs.calls] == ["AddOrder", "AcceptOrder"]
    assert flushes.count(2) == 1
    assert kit.emitter.sent == [] and kit.finished == []  # fenced: the new owner's outcome


def test_an_outcome_send_that_outlives_the_lease_writes_no_table_after_it(batch_parts):
    """The outcome's send is retried through a broker cut while the partition goes to
    another worker; once it returns, marking it sent wrote the Order's dedupe memory into
    the new owner's changelog (the sweep asks the lease before that same write)."""
    clock = Clock()
    owned = joined(clock)
    kit, whmcs = batch_parts(lease=owned)
    send = kit.emitter.send_outcome
    writes: list[bool] = []
    set_memory = kit.state.set_memory

    def watched(oid, memory, *args):
        writes.append(owned.check(0, 5).ok)
        return set_memory(oid, memory, *args)
    kit.state.set_memory = watched  # type: ignore[method-assign]

    async def held_through_a_cut(outcome) -> None:
        owned.rebalancing()
        owned.synced(7, clock.now)
        owned.assigned([1], 7)  # partition 0 went to another worker meanwhile
        await send(outcome)
    kit.emitter.send_outcome = held_through_a_cut  # type: ignore[method-assign]
    _run(kit, batch_parts.record("801A00000000001AAA", partition=0, generation=5))
    assert [status["status"] for status in kit.emitter.sent] == ["Provisioned"]
    assert writes and all(writes), writes  # no table write once the lease was lost
    assert kit.finished == []  # fenced: the new owner sends it again and marks it


def test_lease_lost_between_addorder_and_acceptorder_stops_the_order(batch_parts):
    clock = Clock()
    owned = joined(clock)
    kit, whmcs = batch_parts(lease=owned)

    def lose_it(action: str) -> None:
        if action == "AddOrder":  # meanwhile the partition went to another worker
            owned.rebalancing()
            owned.synced(6, clock.now)
            owned.assigned([1], 6)
    whmcs.on_call = lose_it
    record = batch_parts.record("801A00000000001AAA", partition=0, generation=5)
    _run(kit, record)
    assert [c[0] for c in whmcs.calls] == ["AddOrder"]
    assert kit.emitter.sent == [] and kit.finished == []
    assert kit.tables.intents["801A00000000001AAA"]["state"] == "pending"  # for the new owner


def test_an_order_queued_behind_the_whmcs_slots_is_checked_when_its_slot_comes():
    """The issue's finding: Orders waiting for a WHMCS slot when the worker was paused got a
    second AddOrder. The lease is asked once the slot is ours, right before the call."""
    from tests.streams.factories import order, request_value
    from tests.streams.flowkit import Kit, records

    class AnyOrder:
        def query(self, soql):
            ids = [p.strip(" '") for p in soql.split("IN (")[1].rstrip(")").split(",")]
            return [order(order_id=i) for i in ids]

    clock = Clock()
    owned = joined(clock)
    whmcs = FakeWhmcs()
    kit = Kit(salesforce=AnyOrder(), whmcs_client=whmcs, lease=owned, parallelism=1)

    def lose_it(action: str) -> None:  # while the first Order holds the only slot
        owned.rebalancing()
        owned.synced(6, clock.now)
        owned.assigned([1], 6)
    whmcs.on_call = lose_it
    values = [request_value("801A00000000001AAA"), request_value("801A00000000002AAA")]
    asyncio.run(kit.process(records(values, partition=0, generation=5)))
    assert [c[0] for c in whmcs.calls] == ["AddOrder"]  # the queued one never called
    assert kit.emitter.sent == [] and kit.finished == []


def test_a_renewal_runs_outside_the_whmcs_slot_and_the_slot_still_asks_the_lease():
    """A write's fence may renew its intent (a durable flush). It runs while the Order waits
    among the next in line, so the flush never holds a slot: with one slot, the second
    Order's renewal happens while the first Order's call is in flight. Once the slot is
    its own, the fence is asked again (the lease may have gone while it waited)."""
    from streams.provision import Provisioner, ProvisionPolicy

    log: list[str] = []

    async def main() -> None:
        p = Provisioner(None, ProvisionPolicy(retry_deadline_s=5, whmcs_timeout_s=1,
                                              lookup_grace_s=0.05), parallelism=1)
        a_calling = asyncio.Event()

        async def a_call(_deadline: float | None) -> None:
            log.append("A call")
            a_calling.set()
            await asyncio.sleep(0.05)
            log.append("A done")

        async def a_fence(_action: str, *, queued: bool = False) -> None:
            return None

        async def b_fence(action: str, *, queued: bool = False) -> float:
            log.append(f"B fence {action}{' in line' if queued else ''}")
            if queued:
                await asyncio.sleep(0.01)  # the renewal's flush
            return 123.0

        async def b_call(deadline: float | None) -> None:
            log.append(f"B call {deadline}")

        first = asyncio.ensure_future(p._call("AddOrder", a_fence, a_call))
        await a_calling.wait()
        await p._call("AcceptOrder", b_fence, b_call)
        await first

    asyncio.run(main())
    assert log == ["A call", "B fence AcceptOrder in line", "A done", "B fence AcceptOrder",
                   "B call 123.0"]


def test_a_requests_partition_assigned_without_its_changelogs_is_not_owned():
    """faust's assignor leaves out a changelog topic its metadata does not show yet: that
    partition's table is neither restored nor kept, so the partition must not count as owned
    (a 3-node chaos run sent second AddOrders from exactly this), and the worker is told."""
    from streams.faust_seam import LeaseAdapter

    clock = Clock()
    owned = lease(clock)
    owned.synced(7, clock.now)
    told: list[str] = []
    adapter = LeaseAdapter(owned, "req", changelogs=["idem-cl", "intents-cl"],
                           unbacked=told.append)
    adapter.assigned({"req": {0, 1, 2}, "idem-cl": {0, 1, 2, 4}, "intents-cl": {1, 2}}, 7)
    assert not owned.check(0, 7).ok and owned.check(1, 7).ok and owned.check(2, 7).ok
    assert told == ["generation 7 assigned requests partitions [0, 1, 2] without "
                    "intents-cl [0]"]

    told.clear()
    owned.synced(8, clock.now)
    adapter.assigned({"req": {0, 1}, "idem-cl": {0, 1}, "intents-cl": {0, 1, 5}}, 8)
    assert owned.check(0, 8).ok and owned.check(1, 8).ok and told == []


def test_fenced_carries_the_reason():
    err = Fenced(LeaseCheck(False, "lease expired 3.0 s ago"), stage="AddOrder")
    assert "before AddOrder" in str(err) and "lease expired" in str(err)


def test_a_sweep_job_begun_without_a_generation_is_fenced_even_once_one_is_back():
    """A sweep job that began between a rebalance's start and the next assignment has no
    generation to hold to: checking the current one instead, it passed after the partition
    was lost and regained during the job (another owner may have acted on the Order)."""
    from types import SimpleNamespace

    from streams.app import Worker
    from streams.faust_seam import key_partition

    clock = Clock()
    owned = joined(clock, partitions=range(6), generation=5)
    owned.rebalancing()  # the job begins now
    worker = SimpleNamespace(lease=owned, kafka=SimpleNamespace(partitions=6))
    fence = Worker._sweep_fence(worker, "801000000000001AAA")  # type: ignore[arg-type]
    owned.synced(6, clock.now)
    owned.assigned(range(6), 6)  # the partition is back, in a generation after the job began
    assert owned.current(key_partition("801000000000001AAA", 6)).ok
    with pytest.raises(Fenced, match="no generation known"):
        asyncio.run(fence("AcceptOrder"))
    began = Worker._sweep_fence(worker, "801000000000001AAA")  # type: ignore[arg-type]
    assert asyncio.run(began("AcceptOrder")) is not None  # begun in a generation: it holds


def test_a_stopping_worker_ends_its_lease_so_a_leftover_event_sends_nothing(caplog):
    """SIGTERM: the drain times out with an Order still waiting for the only WHMCS slot
    (another Order's AddOrder holds it). The worker then leaves the group — faust's stop
    calls no revoke listener, and the LeaveGroup goes without the heartbeat hook — so the
    lease must end when the worker leaves, not a session timeout after the last heartbeat:
    the leftover event, let through once the slot frees, is fenced — no AddOrder, no
    AcceptOrder — while another worker restores the partition."""
    import logging
    from functools import partial
    from types import SimpleNamespace

    from streams.app import Worker
    from tests.streams.factories import order, request_value
    from tests.streams.flowkit import Kit, records

    first, second = "801A00000000001AAA", "801A00000000002AAA"

    class AnyOrder:
        def query(self, soql):
            ids = [p.strip(" '") for p in soql.split("IN (")[1].rstrip(")").split(",")]
            return [order(order_id=i) for i in ids]

    class Hanging(FakeWhmcs):
        """The first AddOrder is sent, and its answer takes until ``release``."""

        release: asyncio.Event

        async def add_order(self, params, *, send_deadline=None):
            hang = not self.calls
            result = await super().add_order(params, send_deadline=send_deadline)
            if hang:
                await self.release.wait()
            return result

    clock = Clock()
    owned = joined(clock)  # heartbeats accepted: the lease itself would hold for 20 s
    whmcs = Hanging()
    kit = Kit(salesforce=AnyOrder(), whmcs_client=whmcs, lease=owned, parallelism=1)
    results: dict[str, object] = {}
    handle = kit.handler.handle

    async def recording(event, rec):
        results[event.order_id] = await handle(event, rec)
        return results[event.order_id]
    kit.handler.handle = recording  # type: ignore[method-assign]
    worker = SimpleNamespace(lanes=kit.lanes, checkpoint=kit.checkpoint, lease=owned,
                             settings=SimpleNamespace(drain_timeout_s=0.1),
                             _drain_deadline=None)
    worker._commit = partial(Worker._commit, worker)  # type: ignore[attr-defined]

    async def go():
        whmcs.release = asyncio.Event()
        values = [request_value(first), request_value(second)]
        task = asyncio.ensure_future(kit.process(records(values, partition=0, generation=5)))
        for _ in range(500):  # the second Order in line for the slot, its intent durable
            if whmcs.calls and second in kit.tables.durable_intents:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        assert second not in results
        await Worker._leaving(worker, True)  # type: ignore[arg-type]  # SIGTERM
        whmcs.release.set()  # the first AddOrder answers: the slot frees
        for _ in range(500):
            if len(results) == 2:
                break
            await asyncio.sleep(0.01)
        await asyncio.wait_for(task, 5)

    with caplog.at_level(logging.WARNING, logger="streams.handler"):
        asyncio.run(go())
    calls = [(action, what["notes"].split()[0] if isinstance(what, dict) else what)
             for action, what in whmcs.calls]
    assert calls == [("AddOrder", f"sfOrderId={first}")]  # sent before it left; none after
    assert results == {first: False, second: False}  # both fenced: left to the new owner
    fenced = {(r.order_id, r.stage) for r in caplog.records  # type: ignore[attr-defined]
              if r.getMessage().startswith("fenced:")}
    assert (second, "AddOrder") in fenced and (first, "AcceptOrder") in fenced
    assert kit.emitter.sent == [] and kit.finished == []
