"""The tables' key → partition function agrees with the connector's librdkafka partitioner."""

from __future__ import annotations

import uuid

import pytest
from confluent_kafka import Producer

from streams.faust_seam import key_partition
from tests.conftest import create_topic

pytestmark = pytest.mark.broker


def test_key_partition_matches_librdkafka_murmur2_random(kafka_bootstrap, unique_name):
    topic = unique_name("partitions")
    create_topic(kafka_bootstrap, topic, partitions=6)
    landed: dict[str, int] = {}
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "partitioner": "murmur2_random"})
    keys = [f"801{uuid.uuid4().hex[:12].upper()}AAA" for _ in range(200)]

    def on_delivery(err, msg):
        assert err is None
        landed[msg.key().decode()] = msg.partition()
    for key in keys:
        producer.produce(topic, key=key.encode(), value=b"v", on_delivery=on_delivery)
    assert producer.flush(30) == 0
    assert len(set(landed.values())) == 6
    assert all(key_partition(k, 6) == p for k, p in landed.items())


def test_flush_returns_only_after_the_broker_holds_the_changelog_records(kafka_settings,
                                                                         tmp_path):
    """DurableTable.flush awaits the changelog sends; afterwards a reader sees them all."""
    import asyncio

    import faust
    from confluent_kafka import Consumer, TopicPartition

    from streams.faust_seam import DurableTable

    app_id = kafka_settings.topic("durable-test")
    app = faust.App(app_id, broker=f"kafka://{kafka_settings.bootstrap_servers}",
                    store="memory://", web_enabled=False, autodiscover=False,
                    datadir=str(tmp_path), topic_partitions=3, producer_acks=-1)
    table = app.tables.add(DurableTable(
        app, name="intents", default=None, partitions=3, beacon=app.tables.beacon,
        schema=faust.Schema(key_type=str, key_serializer="raw", value_serializer="json")))
    keys = [f"801D{i:011d}AAA" for i in range(30)]

    async def go():
        await app.start()
        try:
            await table.changelog_topic.maybe_declare()
            for key in keys:
                table[key] = {"state": "pending"}
            assert table._unflushed  # queued, not yet known durable
            await table.flush()
            assert not table._unflushed
        finally:
            await app.stop()
    asyncio.run(go())
    consumer = Consumer({"bootstrap.servers": kafka_settings.bootstrap_servers,
                         "group.id": "durable-check", "enable.auto.commit": False})
    found = {}
    for partition in range(3):
        tp = TopicPartition(f"{app_id}-intents-changelog", partition)
        _low, high = consumer.get_watermark_offsets(tp, timeout=10)
        consumer.assign([TopicPartition(tp.topic, partition, 0)])
        while sum(1 for p in found.values() if p == partition) < high:
            msg = consumer.poll(5)
            assert msg is not None and not msg.error()
            found[msg.key().decode()] = msg.partition()
    consumer.close()
    assert set(found) == set(keys)
    assert all(key_partition(k, 3) == p for k, p in found.items())


def test_rocksdb_store_keeps_reads_and_deletes_each_key_in_its_own_partition(tmp_path):
    """KeyPartitionedRocksStore: a key lives in the RocksDB of key_partition(key) — written,
    read (DurableTable.read), tested and deleted there, and in no other partition's."""
    import faust

    from streams.faust_seam import DurableTable

    app = faust.App("rocks-test", broker="kafka://localhost:1", store="rocksdb://",
                    web_enabled=False, autodiscover=False, datadir=str(tmp_path),
                    topic_partitions=4)
    table = app.tables.add(DurableTable(
        app, name="idem", default=None, partitions=4, beacon=app.tables.beacon,
        schema=faust.Schema(key_type=str, key_serializer="raw", value_serializer="json")))
    store = table.data
    keys = [f"801R{i:011d}AAA" for i in range(40)]
    for i, key in enumerate(keys):
        store[key] = {"n": i}
    assert len({key_partition(k, 4) for k in keys}) == 4
    for i, key in enumerate(keys):
        own = key_partition(key, 4)
        for partition in range(4):
            held = store._db_for_partition(partition).get(key.encode())
            assert (held is not None) == (partition == own), (key, partition)
        assert table.read(key) == {"n": i}
        assert key in store
    assert table.read("801R99999999999AAA") is None
    assert "801R99999999999AAA" not in store
    del store[keys[0]]
    assert table.read(keys[0]) is None and keys[0] not in store
    assert table.read(keys[1]) == {"n": 1}
