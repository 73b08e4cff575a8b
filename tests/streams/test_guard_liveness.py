"""The guard read again before an ``AddOrder`` (streams.provision.GuardCheck) never stops the
worker: a read slower than ``WORKER_GUARD_MAX_AGE_S`` is not followed by another for ever
(the write held its WHMCS slot and Salesforce was queried in a loop), and a Salesforce outage
holds back ``AddOrder`` calls only, not the ``AcceptOrder`` of an order already made (a
regression review of the first version, whose demos these are).
"""

from __future__ import annotations

import asyncio
import time

from tests.streams.factories import request_value
from tests.streams.flowkit import Kit, records
from tests.streams.test_guard_freshness import SF, WH, A


def test_a_max_age_below_one_reads_duration_still_sends_the_addorder():
    """WORKER_GUARD_MAX_AGE_S=0.01, below the read's own linger (0.05 s): the AddOrder went
    out never, the WHMCS slot held, Salesforce queried in a loop."""
    sf = SF(A)
    wh = WH()

    async def go():
        kit = Kit(salesforce=sf, whmcs_client=wh, linger_s=0.05)
        kit.handler.guard_max_age_s = 0.01
        try:
            await asyncio.wait_for(kit.process(records([request_value(A)])), 3.0)
            return "finished"
        except TimeoutError:
            return "stuck"
    got = asyncio.run(go())
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

    async def go():
        kit = Kit(salesforce=sf, whmcs_client=wh, linger_s=0.01)
        kit.handler.guard_max_age_s = 0.3
        try:
            await asyncio.wait_for(kit.process(records([request_value(A)])), 4.0)
            return "finished"
        except TimeoutError:
            return "stuck"
    got = asyncio.run(go())
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
