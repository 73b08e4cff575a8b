"""A partition's leader moved while the consumer's metadata still names the old one: its
position is asked again of the new leader (streams/faust_seam/fetcher.py, decision 0015).

What a 3-node chaos run met: node 1 led faust's ``__assignor-__leader`` partition, was
killed and came back as a follower; a worker whose metadata still named node 1 asked it for
the partition's offsets, got ``NOT_LEADER_FOR_PARTITION`` every 100 ms for 2.5 minutes, and
fetched nothing on that node meanwhile, until its stall watchdog restarted it.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from confluent_kafka import Producer

from ops.kafka_cluster import LocalCluster
from streams import faust_seam
from tests.conftest import create_topic, wait_for

pytestmark = [pytest.mark.broker, pytest.mark.slow]
RECORDS = 10


def _move_leadership(cluster: LocalCluster, topic: str, old: int) -> int:
    """Kill the leader, wait for another, start the old one again: a follower now."""
    cluster.node(old).kill()
    new = wait_for("a new leader", lambda: (lead := cluster.leader(topic, 0)) not in
                (None, old) and lead)
    cluster.restart_node(old)
    assert cluster.leader(topic, 0) == new  # no preferred-leader election for 5 minutes
    return new


def _create_and_fill(bootstrap: str, topic: str) -> None:
    """One partition on all three nodes, ``RECORDS`` records (the clients end here: none
    outlives the cluster to log its refused connections)."""
    create_topic(bootstrap, topic, 1, {"min.insync.replicas": "2"}, replication=3, timeout=60)
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    for i in range(RECORDS):
        producer.produce(topic, value=f"v{i}".encode(), partition=0)
    assert producer.flush(60) == 0


def test_a_position_is_found_after_the_leader_moved_behind_the_consumers_back(tmp_path):
    faust_seam.refresh_metadata_on_stale_offsets()  # what build_app installs in the worker
    cluster = LocalCluster(tmp_path / "cluster", nodes=3)
    try:
        cluster.start(timeout=120)
        topic = "moved"
        _create_and_fill(cluster.bootstrap, topic)
        old = wait_for("a leader", lambda: cluster.leader(topic, 0))

        async def run() -> tuple[int | None, bool, int | None, float]:
            consumer = AIOKafkaConsumer(bootstrap_servers=cluster.bootstrap,
                                        enable_auto_commit=False, request_timeout_ms=20000)
            await consumer.start()
            try:
                tp = TopicPartition(topic, 0)
                consumer.assign([tp])
                assert await consumer.seek_to_end(tp)  # asked of the leader: it answers
                assert await consumer.position(tp) == RECORDS
                consumer.pause(tp)  # no fetch from now on: nothing tells it of the move
                await asyncio.to_thread(_move_leadership, cluster, topic, old)
                known = consumer._client.cluster.leader_for_partition(tp)
                started = time.monotonic()
                found = await consumer.seek_to_beginning(tp)  # a new position: ListOffsets
                took = time.monotonic() - started
                position = await consumer.position(tp) if found else None
                return known, found, position, took
            finally:
                await consumer.stop()

        known, found, position, took = asyncio.run(run())
        # the consumer's metadata still named the old leader (the situation under test)
        assert known == old, f"the consumer's metadata had caught up already ({known})"
        assert found, "no position within the request timeout: asked the old leader only"
        assert position == 0
        assert took < 10, f"the position took {took:.1f} s"
    finally:
        cluster.stop()
