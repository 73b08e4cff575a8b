"""What a provisioning reports about the WHMCS orders its lookup found, when a write on
them fails: the duplicates a compensation met, and a duplicate's CancelOrder left unanswered
or refused (the WHMCS sandbox, real HTTP)."""

from __future__ import annotations

import asyncio

import pytest

from common.settings import WhmcsSettings
from common.whmcs import WhmcsClient
from streams.provision import Provisioner
from tests.streams.factories import policy
from tests.streams.test_whmcs_client import CLIENT, req


@pytest.fixture(autouse=True)
def _clean(whmcs):
    whmcs.clear_faults()
    yield
    whmcs.clear_faults()


def two_pending(whmcs, oid: str) -> tuple[int, int]:
    """Two Pending WHMCS orders with ``oid``'s marker (a fence was crossed)."""
    ids = []
    for _ in range(2):
        made = whmcs.call("AddOrder", clientid=CLIENT, paymentmethod="mailin", pid=[4],
                          billingcycle=["annually"], notes=f"sfOrderId={oid} idemKey=k")
        ids.append(int(made["orderid"]))
    return ids[0], ids[1]


@pytest.mark.parametrize("oid,accept_fault,code,kw", [
    # AcceptOrder of the kept order refused (result=error)
    ("801T0000000101AAA", {"whmcs_error_rate": 1.0,
                           "whmcs_error": "An unexpected error occurred", "times": 1},
     "WHMCS_ERROR", {}),
    # AcceptOrder of the kept order unavailable past the deadline
    ("801T0000000102AAA", {"error_rate": 1.0, "error_kind": "503"}, "WHMCS_UNAVAILABLE",
     {"retry_deadline_s": 0.3}),
])
def test_a_failed_accept_after_a_compensation_still_names_the_duplicates(
        whmcs, oid, accept_fault, code, kw):
    """The lookup found two Pending orders: the compensation kept the first and could not
    cancel the second; then the kept one's AcceptOrder fails. The Failed result still names
    the duplicate (duplicate_ids) and says it is still live — not a result without them."""
    kept, other = two_pending(whmcs, oid)
    whmcs.set_faults("AcceptOrder", **accept_fault)
    whmcs.set_faults("CancelOrder", whmcs_error_rate=1.0,
                     whmcs_error="An unexpected error occurred", times=1)

    async def go():
        async with WhmcsClient(WhmcsSettings.load(whmcs.env()), timeout_s=1.0) as client:
            return await Provisioner(client, policy(**kw)).provision(req(oid), settle_at_ms=0)
    res = asyncio.run(go())
    assert (res.status, res.error_code, res.whmcs_order_id) == ("Failed", code, kept)
    assert res.duplicate_ids == [other] and res.cancelled_ids == []
    assert res.may_exist and res.client_id == CLIENT
    assert f"still live [{other}] (review them in WHMCS)" in (res.error_message or "")
    assert {o["id"]: o["status"] for o in whmcs.orders_for(oid)} == {
        kept: "Pending", other: "Pending"}


def test_an_unanswered_cancel_of_a_duplicate_is_read_before_calling_it_live(whmcs):
    """The duplicate's CancelOrder commits, its answer is lost (the client times out):
    once that call can no longer be running, the order is read — Cancelled, so counted
    cancelled, not reported "still live"."""
    oid = "801T0000000103AAA"
    kept, other = two_pending(whmcs, oid)
    whmcs.set_faults("CancelOrder", hang_rate=1.0, hang_s=3, times=1)

    async def go():
        async with WhmcsClient(WhmcsSettings.load(whmcs.env()), timeout_s=0.5) as client:
            return await Provisioner(client, policy()).provision(req(oid), settle_at_ms=0)
    res = asyncio.run(go())
    assert (res.status, res.whmcs_order_id, res.error_code) == (
        "Provisioned", kept, "DUPLICATE_WHMCS_ORDERS")
    assert res.duplicate_ids == [other] and res.cancelled_ids == [other]
    assert "still live" not in (res.error_message or "")
    assert {o["id"]: o["status"] for o in whmcs.orders_for(oid)} == {
        kept: "Active", other: "Cancelled"}


def test_a_duplicate_cancelled_meanwhile_counts_as_cancelled(whmcs):
    """Someone else cancelled the duplicate first: WHMCS answers "Order ID not found or
    Status not Pending" — the order is read, found Cancelled, and counted cancelled."""
    oid = "801T0000000104AAA"
    kept, other = two_pending(whmcs, oid)

    async def go():
        async with WhmcsClient(WhmcsSettings.load(whmcs.env())) as client:
            real = client.cancel_order

            async def cancelled_first(order_id, **kw):
                assert whmcs.call("CancelOrder", orderid=order_id)["result"] == "success"
                await real(order_id, **kw)
            client.cancel_order = cancelled_first
            return await Provisioner(client, policy()).provision(req(oid), settle_at_ms=0)
    res = asyncio.run(go())
    assert (res.status, res.whmcs_order_id) == ("Provisioned", kept)
    assert res.duplicate_ids == [other] and res.cancelled_ids == [other]
    assert "still live" not in (res.error_message or "")


def test_an_addorder_error_after_whmcs_saved_the_order_finds_the_order(whmcs):
    """WHMCS answers an exception anywhere in AddOrder as result=error — also one raised
    after it saved the order (an invoice or hook step failing, a deadlock). Taken as "no
    order", the Failed result let the Order's next request create a second order. The
    provisioning looks first: the order it finds is accepted, as after an unanswered
    AddOrder, and the result names it."""
    oid = "801T0000000110AAA"
    whmcs.set_faults("AddOrder", whmcs_error_rate=1.0, whmcs_error_after_commit=True,
                     whmcs_error="SQLSTATE[40001]: Serialization failure: 1213 Deadlock",
                     times=1)

    async def go():
        async with WhmcsClient(WhmcsSettings.load(whmcs.env()), timeout_s=1.0) as client:
            return await Provisioner(client, policy()).provision(req(oid))
    res = asyncio.run(go())
    orders = whmcs.orders_for(oid)
    assert [o["status"] for o in orders] == ["Active"]
    assert (res.status, res.whmcs_order_id, res.recovered, res.attempts) == (
        "Provisioned", orders[0]["id"], True, 1)


def test_an_addorder_error_with_no_order_made_is_the_result_after_one_lookup(whmcs):
    """An AddOrder WHMCS refused before it saved anything: the lookup finds nothing, and
    the error is the result — the Order is not sent again."""
    oid = "801T0000000111AAA"
    whmcs.set_faults("AddOrder", whmcs_error_rate=1.0, whmcs_error="Client ID Not Found",
                     times=1)
    before = whmcs.calls()

    async def go():
        async with WhmcsClient(WhmcsSettings.load(whmcs.env()), timeout_s=1.0) as client:
            return await Provisioner(client, policy()).provision(req(oid))
    res = asyncio.run(go())
    assert (res.status, res.error_code, res.may_exist) == ("Failed", "WHMCS_ERROR", False)
    assert res.error_message == "AddOrder: Client ID Not Found" and res.attempts == 1
    assert whmcs.orders_for(oid) == []
    calls = whmcs.calls()
    assert calls.get("AddOrder", 0) - before.get("AddOrder", 0) == 1
    assert calls.get("GetOrders", 0) > before.get("GetOrders", 0)
