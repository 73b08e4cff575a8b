"""streams.recovery: the sweep's outcomes count ``attempts`` as the handler's do — the
``AddOrder`` calls made for that decision — not the Order's attempt counter (its intent's
``attempt``, which grows with every new IdemKey after a Failed attempt and every
resumption). The sweep never calls ``AddOrder``: its outcomes say 0, as the handler's
outcome for an order its lookup found does."""

from __future__ import annotations

import asyncio
import time

import pytest

from common.errors import WhmcsError
from common.whmcs import WhmcsOrder
from streams.provision import Provisioner, ProvisionPolicy
from streams.recovery import Sweeper
from streams.state import OrderState

OID = "801S00000000001AAA"


class Emitter:
    def __init__(self):
        self.sent = []

    async def send_outcome(self, outcome):
        self.sent.append(outcome)


class FakeWhmcs:
    """The orders carrying the Order's marker, by id → status; ``refuse_accept``: WHMCS
    refuses every ``AcceptOrder`` (a provisioning module failing)."""

    def __init__(self, orders, *, refuse_accept=False):
        self.orders = dict(orders)
        self.refuse_accept = refuse_accept
        self.added = 0

    async def find_orders_by_marker(self, client, oid):
        return [WhmcsOrder(i, client, s, f"sfOrderId={oid}", None, [100 + i])
                for i, s in self.orders.items()]

    async def accept_order(self, order_id, autosetup=True, send_deadline=None):
        if self.refuse_accept:
            raise WhmcsError("Module Create failed", action="AcceptOrder")
        self.orders[order_id] = "Active"

    async def cancel_order(self, order_id, send_deadline=None):
        self.orders[order_id] = "Cancelled"

    async def get_order(self, order_id):
        return None

    async def add_order(self, *_a, **_k):  # the sweep never creates
        self.added += 1
        raise AssertionError("the sweep called AddOrder")


def sweep(whmcs, attempt):
    """One sweep over the Order's pending intent, its ``attempt``-th (an earlier one
    Failed, the Order approved again); its outcome."""
    now = int(time.time() * 1000)
    state = OrderState({}, {OID: {
        "order_id": OID, "idem_key": f"{OID}-k{attempt}", "event_uuid": f"ev{attempt}",
        "correlation_id": "c", "requested_at": 1, "state": "pending", "attempt": attempt,
        "client_id": 1012, "opportunity_id": "006", "whmcs_order_id": None, "outcome": None,
        "at": now - 700_000}})
    emitter = Emitter()
    provisioner = Provisioner(whmcs, ProvisionPolicy(whmcs_timeout_s=0, lookup_grace_s=0))
    sweeper = Sweeper(state, provisioner, emitter,  # type: ignore[arg-type]
                      recovery_after_s=600, dedupe_ttl_days=35, owns=lambda _oid: True,
                      clock_ms=lambda: int(time.time() * 1000))
    asyncio.run(sweeper.run_once())
    assert len(emitter.sent) == 1 and whmcs.added == 0
    return emitter.sent[0]


@pytest.mark.parametrize("attempt", [1, 3])
@pytest.mark.parametrize("orders, refuse, expected", [
    ({77: "Active"}, False, ("Provisioned", None, True)),
    ({77: "Pending"}, False, ("Provisioned", None, True)),  # accepted by the sweep
    ({77: "Pending"}, True, ("Failed", "WHMCS_ERROR", True)),  # its accept refused
    ({77: "Pending", 78: "Pending"}, False, ("Provisioned", "DUPLICATE_WHMCS_ORDERS", True)),
])
def test_an_order_the_sweep_finds_is_written_with_attempts_0(orders, refuse, expected,
                                                             attempt):
    outcome = sweep(FakeWhmcs(orders, refuse_accept=refuse), attempt)
    assert (outcome["status"], outcome["error_code"], outcome["recovered"]) == expected
    assert outcome["whmcs_order_id"] == 77
    assert outcome["attempts"] == 0, "the sweep made no AddOrder for this decision"


@pytest.mark.parametrize("attempt", [1, 3])
def test_an_interrupted_provisioning_is_written_with_attempts_0(attempt):
    outcome = sweep(FakeWhmcs({}), attempt)
    assert (outcome["status"], outcome["error_code"], outcome["recovered"]) == (
        "Failed", "PROVISIONING_INTERRUPTED", False)
    assert outcome["attempts"] == 0, "not the Order's attempt counter"


@pytest.mark.parametrize("orders, status, code, recovered", [
    ({}, "Failed", "PROVISIONING_INTERRUPTED", 0),
    ({77: "Active"}, "Provisioned", "", 1),
])
def test_the_sweeps_outcomes_are_counted_as_the_handlers_are(orders, status, code, recovered):
    """sfprov_worker_decisions_total and …_recovered_total left out the outcomes a crash
    leaves to the sweep, the ones an operator looks for after one (monitoring review)."""
    from streams import metrics

    decisions = metrics.DECISIONS.labels(status, code)
    before = (decisions._value.get(), metrics.RECOVERED._value.get())
    sweep(FakeWhmcs(orders), 1)
    assert decisions._value.get() - before[0] == 1
    assert metrics.RECOVERED._value.get() - before[1] == recovered
