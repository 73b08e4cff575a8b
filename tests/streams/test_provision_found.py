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
