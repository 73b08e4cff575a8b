"""A rebalance that finds the worker's lanes full is not held up by the worker.

The agent takes events from faust in chunks and hands them to the lanes one by one, waiting
for room while ``WORKER_MAX_IN_FLIGHT`` events are in flight. When a rebalance revokes the
partitions, the lanes release what they hold — and the agent, given room, hands in the rest
of its chunk: events of the revoked generation. Run, they would wait for a lease the
rebalance cannot give back before it ends, while faust's rebalance waits for them
(``wait_empty``): the member stays in the rebalance until the coordinator expels it, and
nobody processes its partitions meanwhile (a chaos run: 75 s). They must be released at
once (``streams.lanes``).
"""

from __future__ import annotations

import json
import time
from contextlib import ExitStack

import pytest

from tests.streams.support import (
    ASSIGNED_SOME,
    produce,
    request,
    wait_for_log,
    wait_for_log_match,
    worker_env,
    worker_process,
)

pytestmark = [pytest.mark.broker, pytest.mark.e2e, pytest.mark.slow]


def test_a_second_worker_joins_while_the_first_ones_lanes_are_full(
        kafka_settings, salesforce, whmcs, tmp_path):
    seeded = salesforce.seed(accounts=10, orders=80, broken_every=0)["orders"]
    ids = [o["order_id"] for o in seeded]
    salesforce.approve(ids=ids)
    whmcs.set_faults("AddOrder", latency_ms=1000)
    base = dict(bootstrap=kafka_settings.bootstrap_servers, prefix=kafka_settings.topic_prefix,
                sf_env=salesforce.env(), wh_env=whmcs.env(), WORKER_MAX_IN_FLIGHT="4",
                WORKER_WHMCS_PARALLELISM="1", WORKER_STALL_TIMEOUT_S="0")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a_log, b_log = tmp_path / "a.log", tmp_path / "b.log"
    try:
        with ExitStack() as stack:
            stack.enter_context(worker_process(
                worker_env(state_dir=tmp_path / "a", **base), a_log))
            assert wait_for_log(a_log, "requests partitions assigned: [0, 1, 2]", 60)
            produce(kafka_settings.bootstrap_servers, kafka_settings.requests,
                    [request(order_id) for order_id in ids])
            assert wait_for_log(a_log, "WHMCS order created", 60)  # the lanes are full now
            joined_at = time.monotonic()
            stack.enter_context(worker_process(
                worker_env(state_dir=tmp_path / "b", **base), b_log))
            assigned = wait_for_log_match(b_log, ASSIGNED_SOME, 90)
            took = time.monotonic() - joined_at
            text = a_log.read_text(errors="replace")
            deadline = time.monotonic() + 30  # b claims its partitions once it restored them
            claims = _claims(kafka_settings)
            while len({c["writer"] for c in claims}) < 2 and time.monotonic() < deadline:
                time.sleep(0.5)
                claims = _claims(kafka_settings)
    finally:
        whmcs.clear_faults()
    released = [line for line in text.splitlines() if "in flight released" in line]
    print(f"worker b assigned after {took:.1f}s; worker a: {released[:1]}")
    assert released, "the rebalance found no event in flight: the test proved nothing"
    assert "wait_empty: Waiting for tasks" not in text, \
        "worker a held the rebalance up with events of the revoked generation"
    assert "member_id was not recognized" not in text, "worker a was expelled from the group"
    assert assigned
    # each worker claimed the changelog partitions it restored, in its generation, before
    # writing there (decision 0016): both workers' claims, generations rising
    writers = {c["writer"] for c in claims}
    assert len(writers) == 2, claims
    assert {c["generation"] for c in claims} >= {1, 2}, claims


def _claims(kafka_settings) -> list[dict]:
    from confluent_kafka import Consumer, TopicPartition

    from common.settings import WorkerSettings
    from streams.faust_seam import CLAIM_KEY

    topic = f"{kafka_settings.topic(WorkerSettings.load({}).app_id)}-idem-changelog"
    consumer = Consumer({"bootstrap.servers": kafka_settings.bootstrap_servers,
                         "group.id": "claims-check", "enable.auto.commit": False,
                         "enable.partition.eof": True})
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in parts])
        claims, ended = [], set()
        while len(ended) < len(parts):
            msg = consumer.poll(5)
            assert msg is not None, "the changelog could not be read to its end"
            if msg.error():
                ended.add(msg.partition())
            elif msg.key() == CLAIM_KEY.encode():
                claims.append(json.loads(msg.value()))
        return claims
    finally:
        consumer.close()
