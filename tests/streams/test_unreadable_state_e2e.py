"""A changelog record written by hand (not the worker's JSON) for one Order, restored into
the worker's RocksDB store: that Order's event is dead-lettered ``STATE_UNREADABLE``
naming the table, nothing is sent to WHMCS for it, and another Order beside it is
provisioned as usual — the worker, its restore and its sweep go on (before, the sweep
stopped for every Order and the event took three attempts and a ``WORKER_ERROR``)."""

from __future__ import annotations

import time

import pytest
from confluent_kafka import Producer

from streams.faust_seam import key_partition
from tests.streams.support import (
    ASSIGNED_SOME,
    Reader,
    dead_letters,
    outcomes,
    produce,
    request,
    wait_for_log,
    wait_for_log_match,
    worker_env,
    worker_process,
)

pytestmark = [pytest.mark.broker, pytest.mark.e2e]


def test_an_unreadable_table_value_dead_letters_its_orders_event_and_the_rest_goes_on(
        kafka_settings, salesforce, whmcs, tmp_path):
    seeded = salesforce.seed(accounts=5, orders=2, broken_every=0)["orders"]
    bad, good = (o["order_id"] for o in seeded)
    salesforce.approve(ids=[bad, good])
    env = worker_env(bootstrap=kafka_settings.bootstrap_servers,
                     prefix=kafka_settings.topic_prefix, state_dir=tmp_path,
                     sf_env=salesforce.env(), wh_env=whmcs.env(), WORKER_STORE="rocksdb://",
                     WORKER_INSTANCE_ID="w1", WORKER_SWEEP_INTERVAL_S="1")
    log = tmp_path / "worker.log"
    with worker_process(env, log) as proc:  # its tables and changelogs made, then stopped
        assert wait_for_log_match(log, ASSIGNED_SOME, 90), log.read_text()[-3000:]
        proc.terminate()
        assert proc.wait(60) == 0
    changelog = kafka_settings.topic("sfprov-worker") + "-intents-changelog"
    producer = Producer({"bootstrap.servers": kafka_settings.bootstrap_servers})
    producer.produce(changelog, key=bad.encode(), value=b'{"order_id": "' + bad[:6].encode(),
                     partition=key_partition(bad, kafka_settings.partitions))
    assert producer.flush(30) == 0

    dlq = Reader(kafka_settings.bootstrap_servers, kafka_settings.dead_letters)
    out = Reader(kafka_settings.bootstrap_servers, kafka_settings.outcomes)
    with worker_process(env, log) as proc:
        produce(kafka_settings.bootstrap_servers, kafka_settings.requests,
                [request(bad), request(good)])
        out.poll_until(lambda r: any(o["order_id"] == good for o in outcomes(r)), 120,
                       alive=lambda: proc.poll() is None)
        dlq.poll_until(lambda r: len(r) >= 1, 60, alive=lambda: proc.poll() is None)
        assert wait_for_log(log, "passed over", 30), log.read_text()[-3000:]
        time.sleep(2)  # a sweep more: it still runs, and says nothing again
        assert proc.poll() is None, log.read_text()[-3000:]
    [letter] = dead_letters(dlq.records)
    assert letter["error_code"] == "STATE_UNREADABLE", letter
    assert f"intents table holds a value for Order {bad}" in letter["reason"]
    [provisioned] = [o for o in outcomes(out.records) if o["order_id"] == good]
    assert provisioned["status"] == "Provisioned"
    assert not [o for o in outcomes(out.records) if o["order_id"] == bad]
    assert whmcs.orders_for(bad) == [] and len(whmcs.orders_for(good)) == 1
    text = log.read_text()
    assert "is not a JSON value" in text  # the restore named the record
    assert text.count(f"Order {bad} that cannot be read") >= 1
    assert text.count("passed over") == 1, "said once, not at every sweep"
    assert "handling the event failed" not in text  # no retries
