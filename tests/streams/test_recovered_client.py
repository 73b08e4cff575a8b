"""A recovered outcome names the WHMCS client its order belongs to.

An Order's first attempt sent ``AddOrder`` under the Account's WHMCS client 5 and crashed (or
timed out); the Account's ``WH_Account__c`` was then changed to 7. The retry's lookup reads
client 5's orders too (``earlier_client_ids``) and finds order 900 there: the outcome is
``Provisioned``, ``whmcs_order_id`` 900, ``recovered`` — and ``whmcs_client_id`` 5, the client
order 900 belongs to, not the Account's current 7 (README: "the WHMCS ids known when the
worker decided"). The same for the sweep's recovery of a pending intent, and for the outcome
stored for re-sends (dedupe entry, intent).
"""

from __future__ import annotations

import asyncio
import copy
import time
from typing import Any

import pytest

from common.errors import WhmcsError
from common.whmcs import NOT_PENDING, AddOrderResult, WhmcsOrder
from streams.mapping import WhmcsOrderRequest
from streams.provision import Provisioner, ProvisionPolicy
from streams.recovery import DAY_MS, Sweeper
from streams.state import OrderState
from tests.streams.factories import order, request_value
from tests.streams.flowkit import Durable, Kit, records

OID = "801C00000000001AAA"
OLD_CLIENT, NEW_CLIENT, FOUND_ID = 5, 7, 900


class Whmcs:
    """Order ``FOUND_ID`` carries the Order's marker under ``OLD_CLIENT`` only (``status``);
    ``AcceptOrder`` works, or (``refuse_accept``) is refused and the order is ``Cancelled``."""

    def __init__(self, status: str = "Active", *, refuse_accept: bool = False,
                 userid: bool = True) -> None:
        self.status, self.refuse_accept, self.userid = status, refuse_accept, userid
        self.calls: list[tuple[str, Any]] = []

    async def find_orders_by_marker(self, client_id: int, sf_order_id: str) -> list[WhmcsOrder]:
        self.calls.append(("GetOrders", client_id))
        if client_id != OLD_CLIENT:
            return []
        return [WhmcsOrder(id=FOUND_ID, client_id=OLD_CLIENT if self.userid else 0,
                           status=self.status, notes=f"sfOrderId={sf_order_id}",
                           invoice_id=31, service_ids=[77])]

    async def add_order(self, params: dict[str, Any], *, send_deadline: Any = None
                        ) -> AddOrderResult:
        self.calls.append(("AddOrder", params["clientid"]))
        return AddOrderResult(order_id=1234, service_ids=[1])

    async def accept_order(self, order_id: int, *, autosetup: bool = True,
                           send_deadline: Any = None) -> None:
        self.calls.append(("AcceptOrder", order_id))
        if self.refuse_accept:
            self.status = "Cancelled"
            raise WhmcsError(f"AcceptOrder: {NOT_PENDING}", action="AcceptOrder")
        self.status = "Active"

    async def get_order(self, order_id: int) -> WhmcsOrder:
        return WhmcsOrder(id=order_id, client_id=OLD_CLIENT, status=self.status, notes="",
                          invoice_id=31, service_ids=[77])


class Salesforce:
    """The Order, its Account's WHMCS client now ``NEW_CLIENT``."""

    def query(self, soql: str) -> list[dict[str, Any]]:
        return [order(order_id=OID, client=str(NEW_CLIENT))] if OID in soql else []


def _earlier_intent(state: str, *, idem_key: str, event_uuid: str) -> dict[str, Any]:
    """The first attempt's intent: sent under ``OLD_CLIENT``, its lease long past."""
    at = int(time.time() * 1000) - 700_000
    intent = {"order_id": OID, "idem_key": idem_key, "event_uuid": event_uuid,
              "state": state, "attempt": 1, "client_id": OLD_CLIENT, "at": at,
              "lease_until": at + 10_000, "writer": "crashed", "may_exist": True,
              "whmcs_order_id": None, "outcome": None}
    if state == "failed":  # the first attempt timed out past the retry deadline
        intent["outcome"] = {"order_id": OID, "idem_key": idem_key, "event_uuid": event_uuid,
                             "status": "Failed", "error_code": "WHMCS_UNAVAILABLE",
                             "whmcs_client_id": OLD_CLIENT, "whmcs_order_id": None}
    return intent


@pytest.mark.parametrize("first_attempt, status", [
    ("crashed", "Active"),  # the same event redelivered: the pending intent is resumed
    ("timed out", "Pending"),  # a new event after a Failed may_exist attempt: accepted
])
def test_the_handler_names_the_client_the_order_was_found_under(first_attempt, status):
    whmcs = Whmcs(status)
    kit = Kit(salesforce=Salesforce(), whmcs_client=whmcs)
    value = request_value(OID, idem_key="k2", event_uuid="u2")
    if first_attempt == "crashed":
        seeded = _earlier_intent("pending", idem_key="k2", event_uuid="u2")
    else:
        seeded = _earlier_intent("failed", idem_key="k1", event_uuid="u1")
    kit.tables.intents[OID] = seeded
    kit.tables.durable_intents = copy.deepcopy(kit.tables.intents)

    async def go() -> None:
        await kit.process(records([value]))
        await kit.process(records([value]))  # a redelivery re-sends the stored outcome
    asyncio.run(go())

    assert ("GetOrders", NEW_CLIENT) in whmcs.calls and ("GetOrders", OLD_CLIENT) in whmcs.calls
    assert not [c for c in whmcs.calls if c[0] == "AddOrder"]
    assert len(kit.emitter.sent) == 1
    outcome = kit.emitter.sent[0]
    assert (outcome["status"], outcome["whmcs_order_id"], outcome["recovered"]) == (
        "Provisioned", FOUND_ID, True)
    assert outcome["whmcs_client_id"] == OLD_CLIENT  # order 900 is client 5's, not 7's
    # what a re-send of this outcome would carry: the dedupe entry and the intent
    assert kit.tables.durable_idem[OID]["k2"]["outcome"]["whmcs_client_id"] == OLD_CLIENT
    intent = kit.tables.durable_intents[OID]
    assert intent["outcome"]["whmcs_client_id"] == OLD_CLIENT
    assert (intent["state"], intent["whmcs_order_id"]) == ("accepted", FOUND_ID)


def test_a_fresh_add_order_names_the_requests_client():
    whmcs = Whmcs()
    kit = Kit(salesforce=Salesforce(), whmcs_client=whmcs)
    asyncio.run(kit.process(records([request_value(OID, idem_key="k", event_uuid="u")])))
    outcome = kit.emitter.sent[0]
    assert whmcs.calls == [("AddOrder", NEW_CLIENT), ("AcceptOrder", 1234)]  # no lookup owed
    assert (outcome["status"], outcome["whmcs_order_id"], outcome["recovered"],
            outcome["whmcs_client_id"]) == ("Provisioned", 1234, False, NEW_CLIENT)


@pytest.mark.parametrize("userid", [True, False])
def test_the_provisioners_lookup_reports_the_client_it_found_the_order_under(userid):
    """The reviewer's demonstration: a row without ``userid`` names the client it was read
    for."""
    provisioner = Provisioner(Whmcs(userid=userid), ProvisionPolicy())  # type: ignore[arg-type]
    request = WhmcsOrderRequest(order_id=OID, client_id=NEW_CLIENT, items=(), notes="")
    result = asyncio.run(provisioner.provision(request, settle_at_ms=0,
                                               earlier_client_ids=(OLD_CLIENT,)))
    assert (result.status, result.whmcs_order_id, result.recovered, result.client_id) == (
        "Provisioned", FOUND_ID, True, OLD_CLIENT)
    assert result.client_or(NEW_CLIENT) == OLD_CLIENT


@pytest.mark.parametrize("status, refuse_accept, expected", [
    ("Active", False, ("Provisioned", None)),
    ("Pending", False, ("Provisioned", None)),
    ("Pending", True, ("Failed", "WHMCS_ORDER_NOT_ACTIVE")),  # accepted by nobody: cancelled
])
def test_the_sweep_names_the_client_the_order_was_found_under(status, refuse_accept, expected):
    """A resumed attempt (client 7, client 5's lookup still owed) left a pending intent that
    no event came back for: the sweep's lookup finds order 900 under client 5."""
    now = 10 * DAY_MS
    tables = Durable()
    state = OrderState(tables.idem, tables.intents, tables.flush)
    tables.intents[OID] = {
        "order_id": OID, "idem_key": "k2", "event_uuid": "u2", "state": "pending",
        "attempt": 2, "client_id": NEW_CLIENT, "earlier_client_ids": [OLD_CLIENT],
        "at": now - 700_000, "lease_until": now - 690_000, "writer": "gone"}
    whmcs = Whmcs(status, refuse_accept=refuse_accept)

    class Emitter:
        def __init__(self) -> None:
            self.sent: list[dict[str, Any]] = []

        async def send_outcome(self, outcome: dict[str, Any]) -> None:
            self.sent.append(outcome)
    emitter = Emitter()
    sweeper = Sweeper(state, Provisioner(whmcs, ProvisionPolicy(  # type: ignore[arg-type]
        whmcs_timeout_s=0.1, lookup_grace_s=0.05), wall=lambda: now / 1000),
        emitter, recovery_after_s=600, dedupe_ttl_days=35,  # type: ignore[arg-type]
        owns=lambda _oid: True, clock_ms=lambda: now)
    asyncio.run(sweeper.run_once())

    assert len(emitter.sent) == 1
    outcome = emitter.sent[0]
    assert (outcome["status"], outcome["error_code"]) == expected
    assert (outcome["whmcs_order_id"], outcome["recovered"]) == (FOUND_ID, True)
    assert outcome["whmcs_client_id"] == OLD_CLIENT
    assert tables.idem[OID]["k2"]["outcome"]["whmcs_client_id"] == OLD_CLIENT
    assert tables.intents[OID]["outcome"]["whmcs_client_id"] == OLD_CLIENT
