"""The guard read again before an ``AddOrder`` (streams.guard_check.GuardCheck) never stops the
worker: a read slower than ``WORKER_GUARD_MAX_AGE_S`` is not followed by another for ever
(the write held its WHMCS slot and Salesforce was queried in a loop), and a Salesforce outage
holds back ``AddOrder`` calls only, not the ``AcceptOrder`` of an order already made (a
regression review of the first version, whose demos these are).
"""

from __future__ import annotations

import asyncio
import time

from common.clock import lease_clock
from tests.streams.factories import request_value
from tests.streams.flowkit import Kit, records
from tests.streams.test_guard_freshness import SF, WH, A


def process_a(sf, wh, *, linger_s, max_age_s, within_s):
    """A's request processed by a kit whose guard verdict is stale after ``max_age_s``:
    "finished", or "stuck" when not done within ``within_s``."""
    async def go():
        kit = Kit(salesforce=sf, whmcs_client=wh, linger_s=linger_s)
        kit.handler.guard_max_age_s = max_age_s
        try:
            await asyncio.wait_for(kit.process(records([request_value(A)])), within_s)
            return "finished"
        except TimeoutError:
            return "stuck"
    return asyncio.run(go())


def test_a_max_age_below_one_reads_duration_still_sends_the_addorder():
    """WORKER_GUARD_MAX_AGE_S=0.01, below the read's own linger (0.05 s): the AddOrder went
    out never, the WHMCS slot held, Salesforce queried in a loop."""
    sf = SF(A)
    wh = WH()
    got = process_a(sf, wh, linger_s=0.05, max_age_s=0.01, within_s=3.0)
    assert got == "finished" and wh.calls[0] == ("AddOrder", A)


def test_a_salesforce_read_slower_than_the_max_age_still_sends():
    """Each guard query takes 0.4 s against a max age of 0.3 s (a Salesforce slow spell, or
    retries inside one read, past the default 5 s): the AddOrder never went out."""
    sf = SF(A)
    wh = WH()
    real = sf.query

    def slow(soql):
        time.sleep(0.4)
        return real(soql)
    sf.query = slow
    got = process_a(sf, wh, linger_s=0.01, max_age_s=0.3, within_s=4.0)
    assert got == "finished"


def test_a_salesforce_outage_holds_back_no_acceptorder():
    """One WHMCS slot. A's AddOrder holds it 0.5 s; Salesforce goes away meanwhile. B's
    AddOrder, next in line with a stale verdict, took the slot and waited there for
    Salesforce: A's order, already created in WHMCS, was not accepted for the outage."""
    from common.errors import SalesforceError

    B = "801000000000002AAA"
    sf = SF(A, B)
    down = {"on": False}
    real = sf.query

    def query(soql):
        if down["on"]:
            raise SalesforceError("503", retryable=True)
        return real(soql)
    sf.query = query
    wh = WH(slow=A, during=lambda: None)
    orig_add = wh.add_order

    async def add_order(params, send_deadline=None):
        if params["notes"].startswith(f"sfOrderId={A}"):
            down["on"] = True
        return await orig_add(params, send_deadline)
    wh.add_order = add_order

    async def go():
        kit = Kit(salesforce=sf, whmcs_client=wh, parallelism=1)
        kit.guard.backoff_initial_s = kit.guard.backoff_max_s = 0.1
        kit.handler.guard_max_age_s = 0.2
        task = asyncio.ensure_future(kit.process(records([
            request_value(A, event_uuid="ua"), request_value(B, event_uuid="ub")])))
        await asyncio.sleep(3.0)  # the outage: 2.5 s after A's AddOrder returned
        calls = list(wh.calls)
        down["on"] = False
        await asyncio.wait_for(task, 5)
        return calls
    during = asyncio.run(go())
    assert ("AcceptOrder", 101) in during


def test_a_lease_wait_at_the_slot_then_a_salesforce_outage_holds_back_no_acceptorder():
    """The fence in the slot waited for the lease (a broker blip), and Salesforce was away
    when it came back: the verdict, read again with the slot held and no bound, kept the
    only slot for the outage — an order already made waited that long to be accepted. The
    slot is given back and the read done among the next in line."""
    from common.whmcs import AddOrderResult
    from streams.guard_check import GuardCheck
    from streams.provision import Provisioner
    from tests.streams.factories import policy

    calls: list[str] = []
    down = {"on": False}

    class Whmcs:
        async def add_order(self, params, send_deadline=None):  # type: ignore[no-untyped-def]
            calls.append("AddOrder")
            return AddOrderResult(order_id=101, service_ids=[1], addon_ids=[], invoice_id=None)

        async def accept_order(self, oid, autosetup=True,  # type: ignore[no-untyped-def]
                               send_deadline=None):
            calls.append(f"AcceptOrder {oid}")

    async def go() -> float:
        prov = Provisioner(Whmcs(), policy(), parallelism=1)  # type: ignore[arg-type]

        async def read() -> None:  # the guard's read: as long as the outage lasts
            if down["on"]:
                await asyncio.sleep(4.0)
        guard = GuardCheck(read, read_at=lease_clock(), max_age_s=5.0)
        in_slot = 0

        async def fence(action, *, queued=False):  # type: ignore[no-untyped-def]
            nonlocal in_slot
            if not queued:
                in_slot += 1
                if in_slot == 1:  # the lease unconfirmed a moment...
                    guard.waiting()
                    await asyncio.sleep(0.1)
                    down["on"] = True  # ...and Salesforce away when it returns
            return None

        async def plain(action, *, queued=False):  # type: ignore[no-untyped-def]
            return None
        add = asyncio.ensure_future(prov._call(
            "AddOrder", fence, lambda d: prov.whmcs.add_order({}, d), guard=guard))
        await asyncio.sleep(0.05)  # the AddOrder holds the only slot
        started = time.monotonic()
        await prov.accept(999, fence=plain)
        waited = time.monotonic() - started
        await add
        return waited
    waited = asyncio.run(go())
    assert waited < 2.0, f"the AcceptOrder waited {waited:.1f} s for the slot"
    assert calls[0] == "AcceptOrder 999" and calls[-1] == "AddOrder"


def test_the_intent_is_renewed_after_a_slow_guard_read_not_in_the_slot():
    """The renewal (the queued fence's durable flush) ran before a slow guard read, so the
    lease it bought had run down by the slot: the fence there renewed again, a flush with the
    slot held. The read comes first now."""
    from streams.guard_check import GuardCheck
    from streams.lease import IntentLease, LeaseCheck
    from streams.provision import Provisioner
    from streams.state import Intent
    from tests.streams.factories import policy

    def clock_ms() -> int:
        return int(time.time() * 1000)

    class State:
        def set_intent(self, intent):  # type: ignore[no-untyped-def]
            pass

    async def go() -> tuple[str, list[str]]:
        prov = Provisioner(object(), policy(), parallelism=1)  # type: ignore[arg-type]
        flushes: list[str] = []

        async def durable() -> None:
            flushes.append("slot held" if prov._slots.locked() else "no slot")
            await asyncio.sleep(0.01)
        lease = IntentLease(State(), durable, writer="w", length_s=2.0, clock_ms=clock_ms)

        async def own(action):  # type: ignore[no-untyped-def]
            return LeaseCheck(True, valid_until=time.monotonic() + 60,
                              valid_until_wall=time.time() + 60)
        held = [Intent.pending(order_id=A, idem_key="k", event_uuid="u", attempt=1,
                               client_id=1, at=clock_ms(), writer="w",
                               lease_until=clock_ms() + 500)]

        async def read() -> None:  # Salesforce slow: 1.5 s of a 2-s intent lease
            await asyncio.sleep(1.5)
        guard = GuardCheck(read, read_at=lease_clock() - 10, max_age_s=5.0)

        async def call(_deadline):  # type: ignore[no-untyped-def]
            return "sent"
        return await prov._call("AddOrder", lease.fence(own, held), call, guard=guard), flushes
    sent, flushes = asyncio.run(go())
    assert sent == "sent" and flushes and "slot held" not in flushes, flushes
