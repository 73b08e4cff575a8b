"""One Order's AddOrder hangs 30 s: it delays only that Order.

The whole pipeline (connector, worker, sink, both sandboxes) on a one-partition topic: the
hung Order's event comes first, 100 other Orders' events after it on the same partition.
While the call hangs, the 100 are Provisioned and written back to Salesforce, and the worker
group's committed offset never passes the hung event; once the call returns, the hung Order
is Provisioned too and the committed offset moves past all 101.

What is asserted is that order of things, not a speed: the 100 are written back while the
hung Order is still Activating (had they waited for it, it would be Provisioned first). The
hang is long (HANG_S) so that the 100 have ample time, and WHMCS_TIMEOUT_S is longer still,
so the worker waits the call out instead of giving up on it.
"""

from __future__ import annotations

import time

import pytest
from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import AdminClient

from bench.harness import Pipeline

pytestmark = [pytest.mark.broker, pytest.mark.e2e, pytest.mark.slow]
HANG_S = 30  # the call's hang: a generous bound for the 100 others, not a speed target
WHMCS_TIMEOUT_S = HANG_S + 30  # the worker waits the hang out: the call returns, then settles


def committed(p: Pipeline) -> int:
    group = p.kafka.topic("sfprov-worker")
    admin = AdminClient({"bootstrap.servers": p.bootstrap})
    request = ConsumerGroupTopicPartitions(group, [TopicPartition(p.kafka.requests, 0)])
    result = admin.list_consumer_group_offsets([request])[group].result(timeout=10)
    return max(result.topic_partitions[0].offset, 0)


def test_a_hung_addorder_delays_only_its_own_order(kafka_bootstrap, tmp_path):
    with Pipeline(tmp_path, bootstrap=kafka_bootstrap, accounts=20, orders=101, broken_every=0,
                  partitions=1, env={"WHMCS_TIMEOUT_S": str(WHMCS_TIMEOUT_S)}) as p:
        # the fault first, then the approval: set after it, the Order's AddOrder could come
        # before the fault (the oldest seeded Order: what approve(1) would take)
        hung = p.seeded["orders"][0]["order_id"]
        p.whmcs.set_faults("AddOrder", match=f"sfOrderId={hung}", hang_rate=1.0,
                           hang_s=HANG_S, times=1)
        assert p.sf.approve(ids=[hung]) == [hung]
        deadline = time.monotonic() + 60
        while not [r for r in p.records(p.kafka.requests, "provision_request") if r.key == hung]:
            assert time.monotonic() < deadline, "the hung Order's event never reached Kafka"
            time.sleep(0.2)
        hung_offset = next(r.offset for r in p.records(p.kafka.requests, "provision_request")
                           if r.key == hung)
        hung_at = time.monotonic()
        others = p.sf.approve(100)
        highest = 0
        while True:
            highest = max(highest, committed(p))
            rows = p.sf_orders(others + [hung])
            done = [o for o in others
                    if rows.get(o, {}).get("Activation_Status__c") == "Provisioned"]
            if len(done) == len(others):
                break
            assert rows.get(hung, {}).get("Activation_Status__c") == "Activating", (
                f"the hung Order finished first: only {len(done)} of 100 Orders written back "
                "while its call hung (they waited for it)")
            assert time.monotonic() - hung_at < HANG_S, (  # a hang guard: the call is over
                f"only {len(done)} of 100 Orders written back while the call hung")
            time.sleep(0.3)
        waited = time.monotonic() - hung_at
        assert rows[hung]["Activation_Status__c"] == "Activating", "the hung one finished early"
        assert highest <= hung_offset, "the commit passed the hung event"
        last = max(r.offset for r in p.records(p.kafka.requests, "provision_request"))
        rows = p.wait_settled(others + [hung], timeout=HANG_S + 90, poll=0.5)
        assert rows[hung]["Activation_Status__c"] == "Provisioned"
        deadline = time.monotonic() + 60
        while committed(p) <= last and time.monotonic() < deadline:
            time.sleep(0.5)
        assert committed(p) > last, "the commit never moved past the 101 events"
        assert len(p.whmcs.orders_for(hung)) == 1 and p.invariants(others)["duplicates"] == 0
        print(f"100 Orders written back {waited:.1f} s after the hung call started "
              f"(it hung {HANG_S} s); committed offset held at ≤ {hung_offset} meanwhile")
