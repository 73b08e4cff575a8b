"""The guard's verdict is read again right before an AddOrder once it is stale: older than
WORKER_GUARD_MAX_AGE_S, or a wait came after it (a settle wait, a retry's backoff, refused
WHMCS access, a wait for the lease). An Order customer service set back, or gave a WHMCS
id, while its event waited (for a WHMCS slot behind slow calls, for a settle moment) gets
no AddOrder. And a Failed result naming a WHMCS order lists what WHMCS created for it.
Real Kit, handler and provisioner; fake Salesforce and WHMCS (no broker)."""

from __future__ import annotations

import asyncio
import time

import pytest

from common.clock import lease_clock
from common.errors import WhmcsError
from common.whmcs import NOT_PENDING, AddOrderResult, WhmcsOrder
from streams.guard_check import GuardCheck, GuardRefused
from streams.mapping import WhmcsItem, WhmcsOrderRequest
from streams.provision import Provisioner, ProvisionResult
from streams.state import Intent
from tests.streams.factories import order, policy, request_value
from tests.streams.flowkit import Kit, records

A = "801000000000001AAA"
B = "801000000000002AAA"


class SF:
    """Salesforce's Orders by id; every guard query is kept."""

    def __init__(self, *ids):
        self.records = {i: order(order_id=i) for i in ids}
        self.queries: list[str] = []

    def query(self, soql):
        self.queries.append(soql)
        return [dict(r) for i, r in self.records.items() if f"'{i}'" in soql]


class WH:
    """Records every call; ``slow``: the Order whose AddOrder takes 0.5 s, ``during`` run at
    its end; ``found``: (order id, status) found by a lookup of any Order."""

    def __init__(self, *, slow=None, during=None, found=()):
        self.slow, self.during, self.found = slow, during, list(found)
        self.calls: list[tuple] = []
        self.n = 0

    async def add_order(self, params, send_deadline=None):
        oid = params["notes"].split()[0].removeprefix("sfOrderId=")
        self.calls.append(("AddOrder", oid))
        if oid == self.slow:
            await asyncio.sleep(0.5)  # holds the only WHMCS slot...
            self.during()  # ...while customer service changes another Order
        self.n += 1
        return AddOrderResult(order_id=100 + self.n, service_ids=[1], addon_ids=[],
                              invoice_id=None)

    async def accept_order(self, oid, autosetup=True, send_deadline=None):
        self.calls.append(("AcceptOrder", oid))

    async def get_order(self, oid):
        return None

    async def find_orders_by_marker(self, client, order_id):
        self.calls.append(("GetOrders", order_id))
        return [WhmcsOrder(id=o, client_id=client, status=s, notes=f"sfOrderId={order_id}",
                           service_ids=[5], invoice_id=None, raw={}) for o, s in self.found]


def outcomes(kit):
    return {o["order_id"]: o for o in kit.emitter.sent}


@pytest.mark.parametrize("max_age_s", [0.2, 0.0])
def test_an_order_set_back_while_its_addorder_waited_for_a_whmcs_slot_gets_none(max_age_s):
    """The review's demo: one WHMCS slot, A's AddOrder holds it 0.5 s; B's guard was read
    before, and customer service sets B to Pending Review meanwhile. Once B holds the slot
    its read is older than the max age: read again (one query), and B ends as the guard
    would have decided at the start — Skipped, no AddOrder. A max age of 0 (read again
    before every AddOrder) read only before the wait for the slot, and sent B's."""
    sf = SF(A, B)

    def set_back():
        sf.records[B] = order(order_id=B, status="Pending Review")
    wh = WH(slow=A, during=set_back)

    async def go():
        kit = Kit(salesforce=sf, whmcs_client=wh, parallelism=1)
        kit.handler.guard_max_age_s = max_age_s
        await kit.process(records([request_value(A, event_uuid="ua"),
                                   request_value(B, event_uuid="ub")]))
        return kit
    kit = asyncio.run(go())
    assert ("AddOrder", B) not in wh.calls
    assert wh.calls == [("AddOrder", A), ("AcceptOrder", 101)]
    got = outcomes(kit)
    assert (got[A]["status"], got[A]["whmcs_order_id"]) == ("Provisioned", 101)
    assert (got[B]["status"], got[B]["error_code"], got[B]["attempts"]) == (
        "Skipped", "NOT_ACTIVATING", 0)
    if max_age_s:
        assert len(sf.queries) == 2  # both Orders' first read, and B's again
        assert f"'{B}'" in sf.queries[1] and f"'{A}'" not in sf.queries[1]


def pending_intent(kit, oid, *, lease_until):
    """``oid``'s own attempt left pending by a worker that stopped: its AddOrder may have
    gone out, and could land until ``lease_until`` + the WHMCS timeout + the grace."""
    intent = Intent.pending(order_id=oid, idem_key=f"k-{oid}", event_uuid=f"u-{oid}",
                            attempt=1, client_id=1001, at=lease_until - 1000, writer="old",
                            lease_until=lease_until)
    kit.tables.intents[oid] = intent.to_json()
    kit.tables.durable_intents[oid] = intent.to_json()


def resumed(sf, wh, oids, *, during_settle=None, linger_s=0.01, max_age_s=None):
    """Each of ``oids`` redelivered with its attempt pending, whose writer could send until
    now: the lookup waits about a second (WHMCS timeout + grace) first;
    ``during_settle`` is run as that wait starts."""
    async def go():
        kit = Kit(salesforce=sf, whmcs_client=wh, parallelism=8, linger_s=linger_s)
        if max_age_s is not None:
            kit.handler.guard_max_age_s = max_age_s
        now = int(time.time() * 1000)
        for oid in oids:
            pending_intent(kit, oid, lease_until=now)
        waits = []

        async def sleep(seconds):
            waits.append(seconds)
            if during_settle is not None and len(waits) == 1:
                during_settle()
            await asyncio.sleep(seconds)
        kit.provisioner._sleep = sleep
        await kit.process(records([request_value(o, event_uuid=f"u-{o}", idem_key=f"k-{o}")
                                   for o in oids]))
        assert waits and all(w > 0.5 for w in waits)  # the settle waits really waited
        return kit
    return asyncio.run(go())


@pytest.mark.parametrize("changed, expected", [
    (dict(status="Pending Review"), ("Skipped", "NOT_ACTIVATING", None)),
    (dict(status="Provisioned", whmcs_order_id=55.0), ("Skipped", "ALREADY_PROVISIONED", 55)),
])
def test_a_resumed_attempt_set_back_during_its_settle_wait_looks_up_and_sends_no_addorder(
        changed, expected):
    """The guard allowed the resumed attempt when its event started; during the wait for
    the earlier AddOrder to settle customer service set the Order back (or it got a WHMCS
    id). The lookup still runs first (that AddOrder may have landed); nothing found, the
    guard read again after the wait decides: Skipped, no AddOrder."""
    sf = SF(A)
    wh = WH()
    kit = resumed(sf, wh, [A], during_settle=lambda: sf.records.__setitem__(
        A, order(order_id=A, **changed)))
    assert wh.calls == [("GetOrders", A)]
    out = outcomes(kit)[A]
    assert (out["status"], out["error_code"], out["whmcs_order_id"]) == expected
    assert out["attempts"] == 0
    assert len(sf.queries) == 2
    assert kit.tables.intents[A]["state"] == "failed"


def test_a_resumed_attempt_whose_lookup_finds_its_order_reports_it_though_set_back_meanwhile():
    """The earlier AddOrder landed: the order found decides (accepted), not the guard."""
    sf = SF(A)
    wh = WH(found=[(91, "Pending")])
    kit = resumed(sf, wh, [A], during_settle=lambda: sf.records.__setitem__(
        A, order(order_id=A, status="Pending Review")))
    assert wh.calls == [("GetOrders", A), ("AcceptOrder", 91)]
    out = outcomes(kit)[A]
    assert (out["status"], out["whmcs_order_id"], out["recovered"]) == ("Provisioned", 91, True)


def test_the_rechecks_of_orders_that_waited_together_share_one_query():
    """Five resumed attempts wake from their settle waits together: their guards are read
    again in one coalesced query (GuardReads), not five."""
    oids = [f"80100000000000{i}AAA" for i in range(3, 8)]
    sf = SF(*oids)
    wh = WH()
    kit = resumed(sf, wh, oids, linger_s=0.05)
    got = outcomes(kit)
    assert [got[o]["status"] for o in oids] == ["Provisioned"] * 5
    assert [c[0] for c in wh.calls].count("AddOrder") == 5
    assert len(sf.queries) == 2  # the decisions' read, and the rechecks' after the wait
    assert all(f"'{o}'" in sf.queries[1] for o in oids)


def test_a_fresh_read_with_no_wait_is_not_read_again():
    """Read a moment ago, no wait since: the AddOrder goes on that read (one query)."""
    sf = SF(A)
    wh = WH()

    async def go():
        kit = Kit(salesforce=sf, whmcs_client=wh)
        await kit.process(records([request_value(A)]))
        return kit
    kit = asyncio.run(go())
    assert wh.calls == [("AddOrder", A), ("AcceptOrder", 101)]
    assert outcomes(kit)[A]["status"] == "Provisioned"
    assert len(sf.queries) == 1


def test_a_max_age_of_zero_reads_the_guard_again_before_every_addorder():
    sf = SF(A)
    wh = WH()

    async def go():
        kit = Kit(salesforce=sf, whmcs_client=wh)
        kit.handler.guard_max_age_s = 0
        await kit.process(records([request_value(A)]))
        return kit
    kit = asyncio.run(go())
    assert outcomes(kit)[A]["status"] == "Provisioned"
    assert len(sf.queries) == 3  # the decision's, before the wait for a slot, in the slot


# -- a Failed result naming a WHMCS order lists what WHMCS created --------------------------

def request(oid=A):
    return WhmcsOrderRequest(order_id=oid, client_id=1001,
                             items=(WhmcsItem(pid=4, billingcycle="annually", qty=1),),
                             notes=f"sfOrderId={oid} idemKey=k")


def whmcs_order(oid, status):
    return WhmcsOrder(id=oid, client_id=1001, status=status, notes=f"sfOrderId={A}",
                      invoice_id=12, service_ids=[5],
                      raw={"lineitems": {"lineitem": [
                          {"type": "product", "relid": 5}, {"type": "addon", "relid": 6}]}})


class Refusing:
    """AddOrder makes order 101 (service 1, add-on 2, invoice 9); AcceptOrder is refused
    with ``accept_error``; the order then reads as ``status``; ``found``: the lookup's."""

    def __init__(self, accept_error, status="Cancelled", found=()):
        self.accept_error, self.status, self.found = accept_error, status, list(found)

    async def add_order(self, params, send_deadline=None):
        return AddOrderResult(order_id=101, service_ids=[1], addon_ids=[2], invoice_id=9)

    async def accept_order(self, oid, autosetup=True, send_deadline=None):
        raise WhmcsError(self.accept_error, action="AcceptOrder")

    async def get_order(self, oid):
        return whmcs_order(oid, self.status)

    async def find_orders_by_marker(self, client, order_id):
        return list(self.found)


@pytest.mark.parametrize("accept_error, code", [
    (NOT_PENDING, "WHMCS_ORDER_NOT_ACTIVE"),
    ("An unexpected error occurred", "WHMCS_ERROR"),
])
def test_a_failed_result_of_an_order_it_created_lists_its_services_addons_and_invoice(
        accept_error, code):
    res = asyncio.run(Provisioner(Refusing(accept_error), policy()).provision(request()))
    assert (res.status, res.error_code, res.whmcs_order_id) == ("Failed", code, 101)
    assert (res.service_ids, res.addon_ids, res.invoice_id) == ([1], [2], 9)


def test_a_failed_result_of_an_order_a_lookup_found_not_active_lists_its_ids():
    wh = Refusing(NOT_PENDING, found=[whmcs_order(88, "Fraud")])
    res = asyncio.run(Provisioner(wh, policy()).provision(request(), settle_at_ms=0))
    assert (res.status, res.error_code, res.whmcs_order_id) == (
        "Failed", "WHMCS_ORDER_NOT_ACTIVE", 88)
    assert (res.service_ids, res.addon_ids, res.invoice_id) == ([5], [6], 12)


def test_a_failed_accept_of_a_found_order_lists_its_ids():
    wh = Refusing(NOT_PENDING, found=[whmcs_order(88, "Pending")])
    res = asyncio.run(Provisioner(wh, policy()).provision(request(), settle_at_ms=0))
    assert (res.status, res.error_code, res.whmcs_order_id, res.recovered) == (
        "Failed", "WHMCS_ORDER_NOT_ACTIVE", 88, True)
    assert (res.service_ids, res.addon_ids, res.invoice_id) == ([5], [6], 12)


def test_the_failed_outcome_carries_the_ids_to_the_sink():
    sf = SF(A)

    async def go():
        kit = Kit(salesforce=sf, whmcs_client=Refusing(NOT_PENDING))
        await kit.process(records([request_value(A)]))
        return kit
    out = outcomes(asyncio.run(go()))[A]
    assert (out["status"], out["error_code"], out["whmcs_order_id"]) == (
        "Failed", "WHMCS_ORDER_NOT_ACTIVE", 101)
    assert (out["whmcs_service_ids"], out["whmcs_addon_ids"], out["whmcs_invoice_id"]) == (
        [1], [2], 9)


# -- the fence stays right before the write ---------------------------------------------------

class Counting(Refusing):
    """AddOrder as Refusing's; AcceptOrder works; both recorded."""

    def __init__(self):
        super().__init__(NOT_PENDING)
        self.calls: list[str] = []

    async def add_order(self, params, send_deadline=None):
        self.calls.append("AddOrder")
        return await super().add_order(params, send_deadline)

    async def accept_order(self, oid, autosetup=True, send_deadline=None):
        self.calls.append("AcceptOrder")


@pytest.mark.parametrize("set_back", [True, False])
def test_a_fence_that_waited_for_the_lease_is_followed_by_a_read_and_another_fence(set_back):
    """The fence, once the slot is held, waited for the ownership lease (a rebalance):
    the verdict read before is stale — the slot is given back, the verdict read again among
    the next in line and the write queued again (fenced there and in the slot), so the lease
    check stays right before the AddOrder (or none goes: Skipped)."""
    reads: list[str] = []
    fences: list[tuple[str, bool]] = []
    wh = Counting()

    async def go():
        async def read():
            reads.append("read")
            return ProvisionResult("Skipped", error_code="NOT_ACTIVATING") if set_back \
                else None
        guard = GuardCheck(read, read_at=lease_clock(), max_age_s=5.0)

        async def fence(action, *, queued=False):
            fences.append((action, queued))
            if fences == [("AddOrder", True), ("AddOrder", False)]:
                guard.waiting()  # the lease: a rebalance under way, then back
            return None
        return await Provisioner(wh, policy()).provision(request(), fence=fence, guard=guard)
    res = asyncio.run(go())
    assert reads == ["read"]
    if set_back:
        assert (res.status, res.error_code, res.attempts) == ("Skipped", "NOT_ACTIVATING", 0)
        assert wh.calls == [] and fences == [("AddOrder", True), ("AddOrder", False)]
    else:
        assert res.status == "Provisioned" and wh.calls == ["AddOrder", "AcceptOrder"]
        assert fences[:4] == [("AddOrder", True), ("AddOrder", False),
                              ("AddOrder", True), ("AddOrder", False)]


def test_worker_guard_max_age_s_reaches_the_handler(tmp_path):
    """The setting, as the worker builds its handler (it was read and then not passed on: the
    handler kept its 5-s default whatever WORKER_GUARD_MAX_AGE_S said)."""
    from common.settings import CommonSettings, KafkaSettings, WhmcsSettings, WorkerSettings
    from streams.app import Worker

    whmcs = {"WHMCS_API_URL": "http://127.0.0.1:9/includes/api.php",
             "WHMCS_API_IDENTIFIER": "id", "WHMCS_API_SECRET": "secret"}
    built = Worker(kafka=KafkaSettings.load({}, bootstrap_servers="127.0.0.1:9",
                                            topic_prefix="guard-age."),
                   worker=WorkerSettings.load({"WORKER_GUARD_MAX_AGE_S": "0.5"}),
                   whmcs=WhmcsSettings.load(whmcs), sf_client=None,  # type: ignore[arg-type]
                   common=CommonSettings.load({}, state_dir=tmp_path))
    assert built.handler.guard_max_age_s == 0.5


def test_a_second_wait_for_a_slot_after_a_lease_wait_is_read_again_in_the_slot():
    """The in-slot read ran once per AddOrder, fast or slow: after a lease wait gave the
    slot back, the write queued for a slot again and went out on a verdict older than the
    max age, though the Order had been set back during that second wait."""
    state = {"activating": True}
    reads: list[bool] = []
    fences: list[tuple[str, bool]] = []
    wh = Counting()

    async def go():
        prov = Provisioner(wh, policy(), parallelism=1)

        async def blocker(set_back: bool) -> None:  # another Order's call holds the slot
            async with prov._slots:
                await asyncio.sleep(0.5)
                if set_back:
                    state["activating"] = False  # customer service sets it back meanwhile
        tasks = [asyncio.ensure_future(blocker(False))]
        await asyncio.sleep(0)

        async def read():
            reads.append(state["activating"])
            if len(reads) == 2:  # the read before the slot, after the lease wait
                tasks.append(asyncio.ensure_future(blocker(True)))
                await asyncio.sleep(0.01)
            return None if state["activating"] else ProvisionResult(
                "Skipped", error_code="NOT_ACTIVATING")
        guard = GuardCheck(read, read_at=lease_clock(), max_age_s=0.2)

        async def fence(action, *, queued=False):
            fences.append((action, queued))
            if len(fences) == 2:
                guard.waiting()  # the fence in the slot waited for the lease (once)
            return None
        try:
            return await prov.provision(request(), fence=fence, guard=guard)
        except GuardRefused as refused:
            return refused.result
        finally:
            await asyncio.gather(*tasks)
    result = asyncio.run(go())
    assert wh.calls == [], "AddOrder sent on a verdict older than the max age"
    assert (result.status, result.error_code) == ("Skipped", "NOT_ACTIVATING")
