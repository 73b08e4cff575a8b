"""The worker as a subprocess on the real broker, against both sandboxes.

Every event must end in exactly one outcome (by event uuid) or one dead letter; every
provisionable Order must have exactly one WHMCS order.
"""

from __future__ import annotations

import random
from collections import Counter

import pytest

from tests.streams.support import (
    Reader,
    dead_letters,
    outcomes,
    produce,
    request,
    worker_env,
    worker_process,
)

pytestmark = [pytest.mark.broker, pytest.mark.e2e, pytest.mark.slow]


def _plan(salesforce, count: int, broken_every: int, approve_ratio: float, rng: random.Random):
    seeded = salesforce.seed(accounts=20, orders=count, broken_every=broken_every)["orders"]
    ids = [o["order_id"] for o in seeded]
    approved = [i for i in ids if rng.random() < approve_ratio]
    salesforce.approve(ids=approved)
    events = []
    rng.shuffle(ids)
    for order_id in ids:
        first = request(order_id)
        events.append(first)
        if rng.random() < 0.2:  # the same IdemKey again: a Duplicate
            events.append(request(order_id, idem_key=first["IdemKey__c"]))
    return seeded, set(approved), events


def test_mixed_batch_with_whmcs_faults(kafka_settings, salesforce, whmcs, tmp_path):
    rng = random.Random(6)
    seeded, approved, events = _plan(salesforce, 60, broken_every=6, approve_ratio=0.9,
                                     rng=rng)
    broken = {o["order_id"]: o["broken"] for o in seeded if o["broken"]}
    whmcs.set_faults("AddOrder", error_rate=0.1, error_kind="503", hang_rate=0.1, hang_s=3,
                     latency_ms=20)
    whmcs.set_faults("AcceptOrder", error_rate=0.1, error_kind="html", error_after_commit=True)
    whmcs.set_faults("GetOrders", error_rate=0.05, error_kind="500")
    garbage = [b"\x00not avro at all"]
    produce(kafka_settings.bootstrap_servers, kafka_settings.requests, events + garbage)
    env = worker_env(bootstrap=kafka_settings.bootstrap_servers,
                     prefix=kafka_settings.topic_prefix, state_dir=tmp_path,
                     sf_env=salesforce.env(), wh_env=whmcs.env())
    out_reader = Reader(kafka_settings.bootstrap_servers, kafka_settings.outcomes)
    dl_reader = Reader(kafka_settings.bootstrap_servers, kafka_settings.dead_letters)
    try:
        with worker_process(env, tmp_path / "worker.log") as proc:
            out_reader.poll_until(lambda r: len(r) >= len(events), timeout=150,
                                  alive=lambda: proc.poll() is None)
            dl_reader.poll_until(lambda r: len(r) >= 1, timeout=10)
    finally:
        whmcs.clear_faults()
    got = outcomes(out_reader.records)
    by_uuid = Counter(o["event_uuid"] for o in got)
    assert set(by_uuid) == {e["event_uuid"] for e in events}, (tmp_path / "worker.log")
    assert max(by_uuid.values()) == 1
    letters = dead_letters(dl_reader.records)
    assert len(letters) == 1 and letters[0]["error_code"] == "UNDECODABLE"
    # exactly one non-Duplicate outcome per (order, idem key); duplicates are Duplicate
    primary = [o for o in got if o["status"] != "Duplicate"]
    assert len(primary) == len({e["IdemKey__c"] for e in events})
    assert len(got) - len(primary) == len(events) - len(primary)
    statuses = {o["order_id"]: o for o in primary}
    assert whmcs.duplicates() == {}
    for order_id, o in statuses.items():
        made = whmcs.orders_for(order_id)
        if order_id not in approved:
            assert (o["status"], o["error_code"]) == ("Skipped", "NOT_ACTIVATING")
            assert made == []
        elif order_id in broken:
            assert o["status"] == "Failed", o
            assert len(made) == 0, (o, made)
        else:
            assert o["status"] == "Provisioned", o
            assert len(made) == 1 and o["whmcs_order_id"] == int(made[0]["id"])
            assert made[0]["status"] == "Active"
    counters = whmcs.counters()
    assert counters["orders_created"] == sum(1 for o in primary if o["status"] == "Provisioned")
