"""One event end to end (streams.handler) in its lane, with dict tables and a scripted guard,
provisioning into the WHMCS sandbox.

Checks the order of effects: the pending intent is durable before AddOrder; a decided outcome
is durable before it is sent; a redelivery re-sends the identical stored outcome or nothing;
Orders waiting for a guard read at the same time share one query.
"""

from __future__ import annotations

import asyncio
import copy

import pytest

from common.settings import WhmcsSettings
from common.whmcs import WhmcsClient
from tests.streams.factories import item, order, product, request_value
from tests.streams.flowkit import Kit, records


class ScriptedSalesforce:
    def __init__(self, orders):
        self.orders = {o["Id"]: o for o in orders}
        self.queries = []

    def query(self, soql):
        self.queries.append(soql)
        return [copy.deepcopy(o) for oid, o in self.orders.items() if f"'{oid}'" in soql]


_BASE = iter(range(0, 10_000, 100))
_current = [0]


def oid(n: int) -> str:
    return f"801B{_current[0] + n:011d}AAA"


@pytest.fixture
def harness(whmcs):
    _current[0] = next(_BASE)  # fresh Order ids per test: the sandbox lives for the module
    orders = [order(order_id=oid(i), client=str(1010 + i)) for i in range(6)]
    orders[2] = order(item(product(pid=None)), order_id=oid(2))
    orders[3] = order(order_id=oid(3), status="Pending Review")
    sf = ScriptedSalesforce(orders)

    async def build():
        client = WhmcsClient(WhmcsSettings.load(whmcs.env()))
        real_add = client.add_order
        # a resumed attempt waits out its intent's lease (+ the WHMCS timeout) before its
        # lookup: 1 s, not the worker's 10, keeps these tests short
        kit = Kit(salesforce=sf, whmcs_client=client, intent_lease_s=1.0)

        async def checked_add(params, **kwargs):
            order_id = params["notes"].split()[0].split("=")[1]
            assert kit.tables.durable_intents[order_id]["state"] == "pending"
            return await real_add(params, **kwargs)
        client.add_order = checked_add
        return kit, client
    return build, sf


def test_one_query_for_orders_arriving_together_and_every_event_one_outcome(harness, whmcs):
    build, sf = harness
    values = [request_value(oid(i), event_uuid=f"u{i}", idem_key=f"k{i}") for i in range(6)]
    values.append(request_value(oid(0), event_uuid="u0-dup", idem_key="k0"))
    values.append(request_value(oid(1), event_uuid="u1-retry", idem_key="k1-retry"))

    async def go():
        kit, client = await build()
        await kit.process(records(values + [b"\x01garbage"]))
        await client.aclose()
        return kit
    kit = asyncio.run(go())
    # the six Orders' first events share one read; the later events of Orders 0 and 1 come
    # after their first ones in their lanes: one more read for the new IdemKey k1-retry
    assert len(sf.queries) == 2
    assert len(kit.emitter.sent) == 8 and len(kit.emitter.letters) == 1
    assert kit.emitter.letters[0].error_code == "UNDECODABLE"
    by_uuid = {o["event_uuid"]: o for o in kit.emitter.sent}
    assert by_uuid["u0"]["status"] == "Provisioned"
    assert by_uuid["u0-dup"]["status"] == "Duplicate"
    assert (by_uuid["u1-retry"]["status"], by_uuid["u1-retry"]["error_code"]) == (
        "Skipped", "ALREADY_PROVISIONED")
    assert by_uuid["u2"]["error_code"] == "MISSING_PRODUCT_MAPPING"
    assert by_uuid["u3"]["error_code"] == "NOT_ACTIVATING"
    assert len(whmcs.orders_for(oid(0))) == 1 and len(whmcs.orders_for(oid(1))) == 1
    assert whmcs.orders_for(oid(2)) == []


def test_failed_send_then_retry_and_redelivery_send_the_identical_outcome(harness, whmcs):
    build, sf = harness
    values = [request_value(oid(4), event_uuid="c4", idem_key="ck4")]

    async def go():
        kit, client = await build()
        kit.emitter.fail_next = True  # the first send fails after the outcome was durable
        await kit.process(records(values))
        decided = copy.deepcopy(kit.tables.durable_idem)
        first = list(kit.emitter.sent)
        await kit.process(records(values))  # a redelivery after the ack: nothing new
        await client.aclose()
        return kit, decided, first
    kit, decided, first = asyncio.run(go())
    assert [o["event_uuid"] for o in first] == ["c4"]
    for o in first:
        assert o == decided[o["order_id"]][o["idem_key"]]["outcome"]  # same completed_at too
    assert len(kit.emitter.sent) == 1
    assert len(whmcs.orders_for(oid(4))) == 1


def test_lost_dedupe_entry_resends_the_intents_outcome_once(harness, whmcs):
    """A restore that lost the idem entries but kept the intents: the redelivered event gets
    its decided outcome again (identical), the entry is recorded again, and the next
    redelivery sends nothing."""
    build, sf = harness
    values = [request_value(oid(0), event_uuid="l0", idem_key="lk0")]

    async def go():
        kit, client = await build()
        await kit.process(records(values))
        first = list(kit.emitter.sent)
        kit.tables.idem.clear()  # what the worker saw after a table restore lost records
        sf.orders[oid(0)]["WHMCS_Order_Id__c"] = float(first[0]["whmcs_order_id"])
        await kit.process(records(values))
        await kit.process(records(values))
        await client.aclose()
        return kit, first
    kit, first = asyncio.run(go())
    assert first[0]["status"] == "Provisioned"
    assert kit.emitter.sent == first + first  # the same record, once more, and then nothing
    assert kit.tables.idem[oid(0)]["lk0"]["emitted"] is True
    assert len(whmcs.orders_for(oid(0))) == 1


def test_redelivery_settles_an_intent_left_pending_by_a_cut_short_record(harness, whmcs):
    """The dedupe entry holds the decided outcome but the intent write never landed: the
    redelivered event re-sends the stored outcome and settles the intent."""
    build, sf = harness
    values = [request_value(oid(1), event_uuid="p1", idem_key="pk1")]

    async def go():
        kit, client = await build()
        await kit.process(records(values))
        first = list(kit.emitter.sent)
        tables = kit.tables
        accepted = tables.intents[oid(1)]
        tables.intents[oid(1)] = {**accepted, "state": "pending", "outcome": None,
                                  "whmcs_order_id": None}
        entry = tables.idem[oid(1)]["pk1"]
        tables.idem[oid(1)]["pk1"] = {**entry, "emitted": False}
        await kit.process(records(values))
        await client.aclose()
        return kit, first
    kit, first = asyncio.run(go())
    assert kit.emitter.sent == first + first
    assert kit.tables.intents[oid(1)]["state"] == "accepted"
    assert kit.tables.intents[oid(1)]["whmcs_order_id"] == first[0]["whmcs_order_id"]
    assert len(whmcs.orders_for(oid(1))) == 1


def test_a_resumed_attempt_whose_order_was_deleted_looks_its_whmcs_order_up_first(
        harness, whmcs):
    """The worker stopped right after an AddOrder (intent pending, the order created in
    WHMCS); before the event comes back, the Order is deleted in Salesforce. The redelivery
    has nothing to map, but its own attempt made an order: it looks it up first, as the
    sweep does, and reports it (Provisioned, recovered) — not Failed ORDER_NOT_FOUND over an
    Active WHMCS order. The Order undeleted and approved again: Skipped, never a second."""
    build, sf = harness
    first_event = [request_value(oid(4), event_uuid="r4", idem_key="rk4")]
    retry = [request_value(oid(4), event_uuid="r4b", idem_key="rk4b")]

    async def go():
        kit, client = await build()
        await kit.process(records(first_event))
        made = kit.emitter.sent[0]["whmcs_order_id"]
        tables = kit.tables  # back to the moment after AddOrder: intent pending, no decision
        tables.intents[oid(4)] = {**tables.intents[oid(4)], "state": "pending",
                                  "outcome": None, "whmcs_order_id": None}
        del tables.idem[oid(4)]
        kit.emitter.sent.clear()
        deleted = sf.orders.pop(oid(4))
        await kit.process(records(first_event))
        await kit.process(records(first_event))  # and once more (an outcome send retried)
        gone = list(kit.emitter.sent)
        sf.orders[oid(4)] = deleted  # undeleted, approved again: a new IdemKey
        await kit.process(records(retry))
        await client.aclose()
        return kit, made, gone
    kit, made, gone = asyncio.run(go())
    assert [(o["status"], o["whmcs_order_id"], o["recovered"]) for o in gone] == [
        ("Provisioned", made, True)]  # the second: nothing
    again = kit.emitter.sent[-1]
    assert (again["status"], again["error_code"], again["whmcs_order_id"]) == (
        "Skipped", "ALREADY_PROVISIONED", made)
    assert len(whmcs.orders_for(oid(4))) == 1


def test_a_resumed_attempt_ending_without_whmcs_names_the_client_it_was_sent_to(
        harness, whmcs):
    """An attempt left pending whose AddOrder made no order, its Order deleted before the
    event comes back: the redelivery looks the attempt up (nothing found) and ends Failed
    ORDER_NOT_FOUND — an outcome that reached WHMCS, so it names the WHMCS client, as the
    same attempt refused by the guard does (README: set on every outcome that reached
    WHMCS)."""
    build, sf = harness
    event = [request_value(oid(5), event_uuid="r5", idem_key="rk5")]

    async def go():
        kit, client = await build()
        whmcs.set_faults("AddOrder", whmcs_error_rate=1.0, whmcs_error="boom", times=1)
        await kit.process(records(event))
        whmcs.clear_faults()
        tables = kit.tables  # the attempt left pending, no order in WHMCS
        tables.intents[oid(5)] = {**tables.intents[oid(5)], "state": "pending",
                                  "outcome": None, "whmcs_order_id": None}
        del tables.idem[oid(5)]
        kit.emitter.sent.clear()
        sf.orders.pop(oid(5))
        await kit.process(records(event))
        await client.aclose()
        return kit.emitter.sent
    sent = asyncio.run(go())
    assert [(o["status"], o["error_code"]) for o in sent] == [("Failed", "ORDER_NOT_FOUND")]
    assert sent[0]["whmcs_client_id"] == 1015


def test_a_provisioned_order_replayed_after_the_dedupe_ttl_gets_no_second_whmcs_order(
        harness, whmcs):
    """The write-back of a Provisioned outcome dead-lettered (the Order stays Activating);
    after WORKER_DEDUPE_TTL_DAYS the sweep forgot the IdemKey — and deleted the accepted
    intent with it, so the event replayed from Kafka (or a new request) made a second WHMCS
    order. The intent that names the WHMCS order is kept: the replay re-sends the decided
    outcome, a new request is Skipped ALREADY_PROVISIONED."""
    from streams.decide import now_ms
    from streams.recovery import DAY_MS, Sweeper

    build, sf = harness
    first = [request_value(oid(5), event_uuid="t5", idem_key="tk5")]
    retry = [request_value(oid(5), event_uuid="t5b", idem_key="tk5b")]

    async def go():
        kit, client = await build()
        await kit.process(records(first))
        sweeper = Sweeper(kit.state, kit.provisioner, kit.emitter, recovery_after_s=600,
                          dedupe_ttl_days=35, owns=lambda _o: True, lanes=kit.lanes,
                          clock_ms=lambda: now_ms() + 36 * DAY_MS)
        report = await sweeper.run_once()
        await kit.process(records(first, start=1))  # replayed (sfprov replay)
        await kit.process(records(retry, start=2))  # approved again
        await client.aclose()
        return kit, report
    kit, report = asyncio.run(go())
    assert len(whmcs.orders_for(oid(5))) == 1
    assert report.expired_idem == 1 and report.expired_intents == 0
    made = kit.emitter.sent[0]
    assert made["status"] == "Provisioned"
    assert kit.emitter.sent[1] == made  # the replay: the decided outcome, identical
    skipped = kit.emitter.sent[2]
    assert (skipped["status"], skipped["error_code"], skipped["whmcs_order_id"]) == (
        "Skipped", "ALREADY_PROVISIONED", made["whmcs_order_id"])


def _own_kit(whmcs, sf, timeout_s: float = 0.5):
    """A kit whose WHMCS client gives up after ``timeout_s`` (the handler's policy waits
    out WHMCS_TIMEOUT_S = 1 s + the grace before it reads an unanswered write)."""
    client = WhmcsClient(WhmcsSettings.load(whmcs.env()), timeout_s=timeout_s)
    return Kit(salesforce=sf, whmcs_client=client, intent_lease_s=1.0), client


def _back_to_pending(kit, order_id: str) -> None:
    """The moment after the attempt's WHMCS calls: intent pending, no decision recorded."""
    tables = kit.tables
    tables.intents[order_id] = {**tables.intents[order_id], "state": "pending",
                                "outcome": None, "whmcs_order_id": None}
    del tables.idem[order_id]
    kit.emitter.sent.clear()


@pytest.mark.parametrize("change,fault,expect", [
    # the Order's mapping broken since; the lookup's AcceptOrder commits, its answer is
    # lost: the status read after the settle time sees the order Active
    ("mapping", {"hang_rate": 1.0, "hang_s": 3}, ("Provisioned", None)),
    ("deleted", {"hang_rate": 1.0, "hang_s": 3}, ("Provisioned", None)),
    # the lookup's AcceptOrder refused: Failed, but naming the order found
    ("mapping", {"whmcs_error_rate": 1.0, "whmcs_error": "An unexpected error occurred"},
     ("Failed", "WHMCS_ERROR")),
])
def test_a_redelivery_ending_without_whmcs_reports_the_order_its_lookup_found(
        harness, whmcs, change, fault, expect):
    """The first attempt made a WHMCS order and left it Pending (its AcceptOrder refused),
    the worker stopped before recording that; meanwhile the Order's mapping broke (or it
    was deleted). The redelivery looks its attempt's order up and accepts it: when that
    AcceptOrder goes unanswered or is refused, the outcome still names the WHMCS order
    (Provisioned once the order reads Active) — never MISSING_PRODUCT_MAPPING /
    ORDER_NOT_FOUND without it."""
    _, sf = harness
    n = {"mapping": 6, "deleted": 7}[change] + (2 if "whmcs_error" in fault else 0)
    order_id = oid(n)
    sf.orders[order_id] = order(order_id=order_id, client="1010")
    event = [request_value(order_id, event_uuid=f"f{n}", idem_key=f"fk{n}")]

    async def go():
        kit, client = _own_kit(whmcs, sf)
        try:
            whmcs.set_faults("AcceptOrder", whmcs_error_rate=1.0,
                             whmcs_error="An unexpected error occurred", times=1)
            await kit.process(records(event))
            first = kit.emitter.sent[-1]
            whmcs.clear_faults()
            _back_to_pending(kit, order_id)
            if change == "mapping":
                sf.orders[order_id] = order(item(product(pid=None)), order_id=order_id,
                                            client="1010")
            else:
                sf.orders.pop(order_id)
            whmcs.set_faults("AcceptOrder", times=1, **fault)
            await kit.process(records(event))
            await asyncio.sleep(0.1)
            return kit, first
        finally:
            whmcs.clear_faults()
            await client.aclose()
    kit, first = asyncio.run(go())
    made = first["whmcs_order_id"]
    assert (first["status"], first["error_code"]) == ("Failed", "WHMCS_ERROR") and made
    out = kit.emitter.sent[-1]
    assert (out["status"], out["error_code"]) == expect
    assert out["whmcs_order_id"] == made and out["whmcs_client_id"] == 1010
    assert out["recovered"] is True
    intent = kit.tables.intents[order_id]
    assert intent["whmcs_order_id"] == made and intent["may_exist"] is True
    orders = whmcs.orders_for(order_id)
    assert [o["id"] for o in orders] == [made]
    assert orders[0]["status"] == ("Active" if expect[0] == "Provisioned" else "Pending")


def test_an_accept_refused_after_it_ran_then_retried_ends_provisioned_with_one_order(
        harness, whmcs):
    """WHMCS runs the AcceptOrder (autosetup: the services set up) and then answers
    result=error with the module's error (the order left Pending): the attempt is Failed
    WHMCS_ERROR naming the order; the Order approved again looks it up and accepts it —
    Provisioned, the same single WHMCS order, no second AddOrder."""
    _, sf = harness
    order_id = oid(10)
    sf.orders[order_id] = order(order_id=order_id, client="1010")
    first = [request_value(order_id, event_uuid="m10", idem_key="mk10")]
    retry = [request_value(order_id, event_uuid="m10b", idem_key="mk10b")]

    async def go():
        kit, client = _own_kit(whmcs, sf)
        try:
            whmcs.reset_counters()
            whmcs.set_faults("AcceptOrder", whmcs_error_rate=1.0,
                             whmcs_error="Module Create Failed: quota exceeded",
                             whmcs_error_after_commit=True, times=1)
            await kit.process(records(first))
            whmcs.clear_faults()
            await kit.process(records(retry, start=1))
            return kit, whmcs.calls()
        finally:
            whmcs.clear_faults()
            await client.aclose()
    kit, calls = asyncio.run(go())
    refused, again = kit.emitter.sent
    made = refused["whmcs_order_id"]
    assert (refused["status"], refused["error_code"]) == ("Failed", "WHMCS_ERROR") and made
    assert "Module Create Failed" in refused["error_message"]
    assert (again["status"], again["whmcs_order_id"], again["recovered"]) == (
        "Provisioned", made, True)
    orders = whmcs.orders_for(order_id)
    assert [(o["id"], o["status"]) for o in orders] == [(made, "Active")]
    assert calls.get("AddOrder") == 1 and calls.get("AcceptOrder") == 2, calls
