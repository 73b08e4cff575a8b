"""`sfprov reconcile` writes its requests as the connector does: the Confluent format when a
registry is configured (what analysts' tools read), plain Avro with the header otherwise."""

from __future__ import annotations

import dataclasses

import pytest
from confluent_kafka import Consumer, TopicPartition

from common.avro import SCHEMA_HEADER, AvroSerde, SchemaRegistry, confluent_schema_id
from common.settings import KafkaSettings
from ops.cmd_orders import inject_requests
from sandbox.registry.harness import running_registry

pytestmark = pytest.mark.broker
ORDER = "801000000000001AAA"


def read_all(kafka: KafkaSettings) -> list:
    consumer = Consumer({"bootstrap.servers": kafka.bootstrap_servers, "group.id": "t",
                         "enable.partition.eof": True, "isolation.level": "read_committed"})
    consumer.assign([TopicPartition(kafka.requests, p, 0) for p in range(kafka.partitions)])
    out, ended = [], set()
    while len(ended) < kafka.partitions:
        msg = consumer.poll(10)
        assert msg is not None, "the requests did not arrive"
        if msg.error():
            ended.add(msg.partition())
        else:
            out.append(msg)
    consumer.close()
    return out


def test_reconcile_writes_the_confluent_format_with_a_registry(kafka_settings):
    with running_registry() as reg:
        kafka = dataclasses.replace(kafka_settings, schema_registry_url=reg.url)
        assert inject_requests(kafka, [ORDER]) == 1
        [msg] = read_all(kafka)
        headers = dict(msg.headers() or [])
        assert SCHEMA_HEADER not in headers and headers["sfprov.source"] == b"reconcile"
        assert confluent_schema_id(msg.value()) is not None
        assert reg.subjects() == [f"{kafka.requests}-value"]
        decoded = AvroSerde("provision_request", registry=SchemaRegistry(reg.url)).decode(
            msg.value(), msg.headers())
        assert decoded["OrderId__c"] == ORDER


def test_reconcile_writes_plain_avro_without_a_registry(kafka_settings):
    assert inject_requests(kafka_settings, [ORDER]) == 1
    [msg] = read_all(kafka_settings)
    assert SCHEMA_HEADER in dict(msg.headers())
    assert AvroSerde("provision_request").decode(msg.value(), msg.headers())["OrderId__c"] \
        == ORDER
