"""The tables' key → partition function agrees with the connector's librdkafka partitioner."""

from __future__ import annotations

import uuid

import pytest
from confluent_kafka import Producer

from streams.tables import key_partition
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
