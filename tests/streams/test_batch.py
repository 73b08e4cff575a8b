"""streams.batch with dict state and a scripted guard, provisioning into the WHMCS sandbox.

Checks the order of effects: the pending intent is flushed before AddOrder; decided outcomes
are flushed before they are sent; a redelivery re-sends the identical stored outcome or
nothing.
"""

from __future__ import annotations

import asyncio
import copy

import pytest

from common.avro import AvroSerde
from common.settings import WhmcsSettings
from common.whmcs import WhmcsClient
from streams.batch import BatchProcessor, DictState, RawRecord
from streams.decide import Context
from streams.guard import Guard
from streams.provision import Provisioner, ProvisionPolicy
from tests.streams.factories import item, order, product, request_value

SERDE = AvroSerde("provision_request")


class ScriptedSalesforce:
    def __init__(self, orders):
        self.orders = {o["Id"]: o for o in orders}
        self.queries = []

    def query(self, soql):
        self.queries.append(soql)
        return [copy.deepcopy(o) for oid, o in self.orders.items() if f"'{oid}'" in soql]


class RecordingState(DictState):
    def __init__(self):
        super().__init__()
        self.durable_intents = {}
        self.durable_idem = {}

    async def flush(self):
        await super().flush()
        self.durable_intents = copy.deepcopy(self.intents)
        self.durable_idem = copy.deepcopy(self.idem)


class ListEmitter:
    def __init__(self, state):
        self.sent, self.letters, self.state, self.fail_next = [], [], state, False

    async def send_outcomes(self, outcomes):
        for o in outcomes:  # decided outcomes are durable before anyone sees them
            entry = self.state.durable_idem[o["order_id"]][o["idem_key"]]
            assert o in [entry.get("outcome")] + [d["outcome"] for d in entry["dups"].values()]
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("crash before the outcomes were sent")
        self.sent.extend(outcomes)

    async def send_dead_letters(self, letters):
        self.letters.extend(letters)


_BASE = iter(range(0, 10_000, 100))
_current = [0]


def oid(n: int) -> str:
    return f"801B{_current[0] + n:011d}AAA"


def records(values):
    return [RawRecord(v["OrderId__c"].encode(), SERDE.encode(v), "req", 0, i)
            for i, v in enumerate(values)]


@pytest.fixture
def harness(whmcs):
    _current[0] = next(_BASE)  # fresh Order ids per test: the sandbox lives for the module
    orders = [order(order_id=oid(i), client=str(1010 + i)) for i in range(6)]
    orders[2] = order(item(product(pid=None)), order_id=oid(2))
    orders[3] = order(order_id=oid(3), status="Pending Review")
    sf = ScriptedSalesforce(orders)
    state = RecordingState()
    emitter = ListEmitter(state)

    async def build():
        client = WhmcsClient(WhmcsSettings.load(whmcs.env()))
        real_add = client.add_order

        async def checked_add(params):
            order_id = params["notes"].split()[0].split("=")[1]
            assert state.durable_intents[order_id]["state"] == "pending"
            return await real_add(params)
        client.add_order = checked_add
        provisioner = Provisioner(client, ProvisionPolicy(retry_deadline_s=5,
                                                          whmcs_timeout_s=1,
                                                          lookup_grace_s=0.05))
        return BatchProcessor(state=state, guard=Guard(sf), provisioner=provisioner,
                              emitter=emitter, context=Context(), parallelism=4), client
    return build, sf, state, emitter


def test_one_query_per_batch_and_every_event_one_outcome(harness, whmcs):
    build, sf, state, emitter = harness
    values = [request_value(oid(i), event_uuid=f"u{i}", idem_key=f"k{i}") for i in range(6)]
    values.append(request_value(oid(0), event_uuid="u0-dup", idem_key="k0"))
    values.append(request_value(oid(1), event_uuid="u1-retry", idem_key="k1-retry"))

    async def go():
        proc, client = await build()
        report = await proc.process(records(values) + [RawRecord(b"x", b"\x01garbage")])
        await client.aclose()
        return report
    report = asyncio.run(go())
    assert len(sf.queries) == 1
    assert report.outcomes == 8 and report.dead_letters == 1
    by_uuid = {o["event_uuid"]: o for o in emitter.sent}
    assert by_uuid["u0"]["status"] == "Provisioned"
    assert by_uuid["u0-dup"]["status"] == "Duplicate"
    assert (by_uuid["u1-retry"]["status"], by_uuid["u1-retry"]["error_code"]) == (
        "Skipped", "ALREADY_PROVISIONED")
    assert by_uuid["u2"]["error_code"] == "MISSING_PRODUCT_MAPPING"
    assert by_uuid["u3"]["error_code"] == "NOT_ACTIVATING"
    assert len(whmcs.orders_for(oid(0))) == 1 and len(whmcs.orders_for(oid(1))) == 1
    assert whmcs.orders_for(oid(2)) == []


def test_crash_before_send_then_redelivery_resends_identical_outcomes(harness, whmcs):
    build, sf, state, emitter = harness
    values = [request_value(oid(4), event_uuid="c4", idem_key="ck4"),
              request_value(oid(5), event_uuid="c5", idem_key="ck5")]

    async def go():
        proc, client = await build()
        emitter.fail_next = True
        with pytest.raises(RuntimeError):
            await proc.process(records(values))
        decided = copy.deepcopy(state.durable_idem)
        await proc.process(records(values))  # the redelivery
        first = list(emitter.sent)
        await proc.process(records(values))  # after the ack: nothing new
        await client.aclose()
        return decided, first
    decided, first = asyncio.run(go())
    assert [o["event_uuid"] for o in first] == ["c4", "c5"]
    for o in first:
        assert o == decided[o["order_id"]][o["idem_key"]]["outcome"]  # same completed_at too
    assert len(emitter.sent) == 2
    assert len(whmcs.orders_for(oid(4))) == 1 and len(whmcs.orders_for(oid(5))) == 1


def test_lost_dedupe_entry_resends_the_intents_outcome_once(harness, whmcs):
    """A restore that lost the idem entries but kept the intents: the redelivered event gets
    its decided outcome again (identical), the entry is recorded again, and the next
    redelivery sends nothing."""
    build, sf, state, emitter = harness
    values = [request_value(oid(0), event_uuid="l0", idem_key="lk0")]

    async def go():
        proc, client = await build()
        await proc.process(records(values))
        first = list(emitter.sent)
        state.idem.clear()  # what the worker saw after a table restore lost records
        sf.orders[oid(0)]["WHMCS_Order_Id__c"] = float(first[0]["whmcs_order_id"])
        await proc.process(records(values))
        await proc.process(records(values))
        await client.aclose()
        return first
    first = asyncio.run(go())
    assert first[0]["status"] == "Provisioned"
    assert emitter.sent == first + first  # the same record, once more, and then nothing
    assert state.idem[oid(0)]["lk0"]["emitted"] is True
    assert len(whmcs.orders_for(oid(0))) == 1


def test_redelivery_settles_an_intent_left_pending_by_a_cut_short_step_5(harness, whmcs):
    """The dedupe entry holds the decided outcome but the intent write never landed: the
    redelivered event re-sends the stored outcome and settles the intent."""
    build, sf, state, emitter = harness
    values = [request_value(oid(1), event_uuid="p1", idem_key="pk1")]

    async def go():
        proc, client = await build()
        await proc.process(records(values))
        first = list(emitter.sent)
        accepted = state.intents[oid(1)]
        state.intents[oid(1)] = {**accepted, "state": "pending", "outcome": None,
                                 "whmcs_order_id": None}
        entry = state.idem[oid(1)]["pk1"]
        state.idem[oid(1)]["pk1"] = {**entry, "emitted": False}
        await proc.process(records(values))
        await client.aclose()
        return first
    first = asyncio.run(go())
    assert emitter.sent == first + first
    assert state.intents[oid(1)]["state"] == "accepted"
    assert state.intents[oid(1)]["whmcs_order_id"] == first[0]["whmcs_order_id"]
    assert len(whmcs.orders_for(oid(1))) == 1
