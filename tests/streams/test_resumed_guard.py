"""The guard against a decision that went stale while WHMCS could not be asked: a pending
attempt redelivered after Salesforce moved on, an AddOrder that waited out a refused WHMCS
access, and a redelivery whose Order can no longer be mapped. Real Kit, handler and
provisioner; fake Salesforce and WHMCS (no broker)."""

from __future__ import annotations

import asyncio
import time

import pytest

import streams.provision
from common.errors import WhmcsAccessError
from common.whmcs import AddOrderResult, WhmcsOrder
from streams.state import Intent
from tests.streams.factories import item, order, product, request_value
from tests.streams.flowkit import Kit, records

OID = "801000000000001AAA"


class Salesforce:
    def __init__(self, record):
        self.record, self.queries = record, 0

    def query(self, soql):
        self.queries += 1
        return [dict(self.record)]


class Whmcs:
    """Records every call; ``found``: the orders carrying the marker; ``refusals``: AddOrders
    refused for the credentials before one goes through, ``during`` called at each."""

    def __init__(self, found=(), refusals=0, during=None):
        self.found, self.refusals, self.during = list(found), refusals, during
        self.calls: list[str] = []

    async def add_order(self, params, send_deadline=None):
        if self.refusals:
            self.refusals -= 1
            if self.during:
                self.during(self.refusals)
            raise WhmcsAccessError("Authentication Failed", action="AddOrder")
        self.calls.append("AddOrder")
        return AddOrderResult(order_id=77, service_ids=[1], addon_ids=[], invoice_id=None)

    async def accept_order(self, oid, autosetup=True, send_deadline=None):
        self.calls.append(f"AcceptOrder {oid}")

    async def get_order(self, oid):
        return None

    async def find_orders_by_marker(self, client, order_id):
        self.calls.append("GetOrders(marker)")
        return [WhmcsOrder(id=o, client_id=client, status=s, notes=f"sfOrderId={order_id}",
                           service_ids=[5], invoice_id=None, raw={}) for o, s in self.found]


def run(sf, wh, *, pending=False, opportunity_id=None):
    """One request event; ``pending``: its own attempt was left pending (the worker stopped
    or was fenced after the intent was durable), its writer's lease long over."""
    async def go():
        kit = Kit(salesforce=sf, whmcs_client=wh)
        if pending:
            past = int(time.time() * 1000) - 60_000
            intent = Intent.pending(order_id=OID, idem_key="k1", event_uuid="u1", attempt=1,
                                    client_id=1001, at=past, writer="old", lease_until=past,
                                    opportunity_id=opportunity_id)
            kit.tables.intents[OID] = intent.to_json()
            kit.tables.durable_intents[OID] = intent.to_json()
        await kit.process(records([request_value(OID, event_uuid="u1", idem_key="k1")]))
        return kit
    kit = asyncio.run(go())
    [outcome] = kit.emitter.sent
    return kit, outcome


@pytest.mark.parametrize("record, expected", [
    (order(order_id=OID, status="Pending Review", whmcs_order_id=55.0),
     ("Skipped", "ALREADY_PROVISIONED", 55)),
    (order(order_id=OID, status="Pending Review"), ("Skipped", "NOT_ACTIVATING", None)),
])
def test_a_resumed_attempt_the_guard_now_refuses_sends_no_addorder_when_nothing_is_found(
        record, expected):
    """Nothing was sent before the attempt stopped, and sales set the Order back (and gave
    it a WHMCS id) since: a lookup that finds nothing proves nothing of ours exists, not
    that one may be created — the guard decides, as for any event."""
    wh = Whmcs()
    kit, outcome = run(Salesforce(record), wh, pending=True)
    assert wh.calls == ["GetOrders(marker)"]  # the lookup, and no AddOrder
    assert (outcome["status"], outcome["error_code"], outcome["whmcs_order_id"]) == expected
    assert kit.tables.intents[OID]["state"] == "failed"  # settled: the sweep has nothing left


def test_a_resumed_attempt_whose_order_was_deleted_names_the_opportunity_its_intent_held():
    """The Order is gone from Salesforce (no Opportunity to read from it) and the lookup
    finds nothing: the outcome still names the Opportunity the attempt was made for, as the
    sweep's PROVISIONING_INTERRUPTED and a found order's outcome do."""
    sf = Salesforce(None)
    sf.query = lambda soql: []
    kit, outcome = run(sf, Whmcs(), pending=True, opportunity_id="006000000000001AAA")
    assert (outcome["status"], outcome["error_code"]) == ("Failed", "ORDER_NOT_FOUND")
    assert outcome["opportunity_id"] == "006000000000001AAA"
    assert outcome["whmcs_client_id"] == 1001


@pytest.mark.parametrize("status, calls", [
    ("Active", ["GetOrders(marker)"]),
    ("Pending", ["GetOrders(marker)", "AcceptOrder 91"]),
])
def test_a_resumed_attempt_whose_lookup_finds_its_order_reports_it_though_salesforce_moved_on(
        status, calls):
    """The attempt's AddOrder landed: the order found is the outcome (accepted if still
    Pending), never a Skipped contradicting it."""
    wh = Whmcs(found=[(91, status)])
    record = order(order_id=OID, status="Pending Review", whmcs_order_id=91.0)
    kit, outcome = run(Salesforce(record), wh, pending=True)
    assert wh.calls == calls
    assert (outcome["status"], outcome["whmcs_order_id"], outcome["recovered"]) == (
        "Provisioned", 91, True)
    assert kit.tables.intents[OID]["state"] == "accepted"


def test_an_addorder_after_refused_access_asks_the_guard_again(monkeypatch):
    """WHMCS refuses the credentials for a while (the worker waits, no deadline); sales
    takes the Order out of Activating meanwhile. When access returns the decision is stale:
    the guard is read again before the AddOrder, which is not sent. The AddOrders WHMCS
    refused are not the decision's attempts (nothing happened in WHMCS): a Skipped has 0,
    as the README's outcome table says."""
    monkeypatch.setattr(streams.provision, "ACCESS_BACKOFF_MAX_S", 0.3)
    sf = Salesforce(order(order_id=OID))

    def withdraw(left):
        if left == 1:
            sf.record["Activation_Status__c"] = "Pending Review"
    wh = Whmcs(refusals=3, during=withdraw)
    kit, outcome = run(sf, wh)
    assert wh.calls == []
    assert (outcome["status"], outcome["error_code"]) == ("Skipped", "NOT_ACTIVATING")
    assert outcome["attempts"] == 0
    assert sf.queries == 3  # the decision's read, and one before each AddOrder after a wait


def test_an_addorder_after_refused_access_goes_when_the_guard_still_allows_it(monkeypatch):
    monkeypatch.setattr(streams.provision, "ACCESS_BACKOFF_MAX_S", 0.3)
    sf = Salesforce(order(order_id=OID))
    wh = Whmcs(refusals=2)
    kit, outcome = run(sf, wh)
    assert wh.calls == ["AddOrder", "AcceptOrder 77"]
    assert (outcome["status"], outcome["whmcs_order_id"]) == ("Provisioned", 77)
    assert outcome["attempts"] == 1  # the two WHMCS refused for access are not counted


@pytest.mark.parametrize("found, expected", [
    ([(91, "Active")], ("Provisioned", None, 91, True)),
    ([], ("Failed", "MISSING_PRODUCT_MAPPING", None, False)),
])
def test_a_redelivery_that_cannot_be_mapped_looks_its_pending_attempt_up_first(found, expected):
    """The attempt's AddOrder and AcceptOrder landed (order 91 Active), then the worker lost
    the Order before settling; the Product's WHMCS id was cleared before the redelivery.
    It looks up first, as the sweep would: found, the order is the outcome — not Failed
    over an Active WHMCS order; not found, the mapping's Failed."""
    wh = Whmcs(found=found)
    record = order(item(product(pid=None)), order_id=OID)
    kit, outcome = run(Salesforce(record), wh, pending=True)
    assert wh.calls == ["GetOrders(marker)"]
    assert (outcome["status"], outcome["error_code"], outcome["whmcs_order_id"],
            outcome["recovered"]) == expected
    intent = kit.tables.intents[OID]
    assert (intent["state"], intent["may_exist"]) == (
        ("accepted", True) if found else ("failed", False))


class RefusingLookups(Whmcs):
    """WHMCS refuses this installation's credentials for the lookup."""

    async def find_orders_by_marker(self, client, order_id):
        self.calls.append("GetOrders(marker)")
        raise WhmcsAccessError("Authentication Failed", action="GetOrders")


def sweep(kit):
    """The sweep, as if ``WORKER_RECOVERY_AFTER_S`` had passed."""
    from streams.decide import now_ms
    from streams.recovery import Sweeper
    sweeper = Sweeper(kit.state, kit.provisioner, kit.emitter, recovery_after_s=1,
                      dedupe_ttl_days=35, owns=lambda _o: True, lanes=kit.lanes,
                      clock_ms=lambda: now_ms() + 10_000)
    asyncio.run(sweeper.run_once())


def test_a_redelivery_whose_lookup_whmcs_refuses_still_ends_with_its_decision():
    """The lookup of the pending attempt meets refused WHMCS credentials: the mapping's
    outcome goes out (no dead letter: the README says nothing is failed for WHMCS refusing
    this installation), the intent keeps "an order may exist" so the next attempt looks
    first, and the sweep later has nothing to settle — before, a WORKER_ERROR dead letter
    and then the sweep's Failed PROVISIONING_INTERRUPTED."""
    wh = RefusingLookups()
    record = order(item(product(pid=None)), order_id=OID, status="Pending Review")
    kit, outcome = run(Salesforce(record), wh, pending=True)
    assert not kit.emitter.letters
    assert (outcome["status"], outcome["error_code"]) == ("Skipped", "NOT_ACTIVATING")
    intent = kit.tables.intents[OID]
    assert (intent["state"], intent["may_exist"]) == ("failed", True)
    wh.__class__ = Whmcs  # access restored
    sweep(kit)
    assert [o["status"] for o in kit.emitter.sent] == ["Skipped"]


def test_a_skipped_resumed_attempt_whose_intent_write_was_lost_is_settled_from_its_entry():
    """The crash window between the decision's two table writes: the dedupe entry holds the
    Skipped outcome, the intent is still pending. The entry settles it (as for Provisioned
    and Failed), so the sweep does not send a contradicting Failed PROVISIONING_INTERRUPTED
    for an Order sales set back."""
    record = order(order_id=OID, status="Pending Review")
    kit, outcome = run(Salesforce(record), Whmcs(), pending=True)
    assert outcome["status"] == "Skipped"
    past = int(time.time() * 1000) - 60_000
    kit.tables.intents[OID] = Intent.pending(  # the settled intent never landed
        order_id=OID, idem_key="k1", event_uuid="u1", attempt=1, client_id=1001, at=past,
        writer="old", lease_until=past).to_json()
    sweep(kit)
    assert [o["status"] for o in kit.emitter.sent] == ["Skipped"]
    assert kit.tables.intents[OID]["state"] == "failed"
