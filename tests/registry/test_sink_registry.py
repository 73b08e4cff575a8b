"""The sink on the real broker reading an outcomes topic that holds both wire formats."""

from __future__ import annotations

import dataclasses
import struct
import threading

import pytest
from confluent_kafka import Producer

from common.avro import AvroSerde, SchemaRegistry
from common.settings import KafkaSettings, SinkSettings
from sandbox.registry.harness import running_registry
from sinks.app import Sink
from tests.sinks.fakes import FakeCollections
from tests.sinks.helpers import committed_total, dead_letters, outcome

pytestmark = pytest.mark.broker


def settings() -> SinkSettings:
    return SinkSettings.load({}, linger_s=0.05, http_port=0, retry_backoff_s=0.05,
                             session_timeout_ms=6000)


def write(kafka: KafkaSettings, values: list[tuple[str, bytes, list]]) -> None:
    producer = Producer({"bootstrap.servers": kafka.bootstrap_servers})
    for key, value, headers in values:
        producer.produce(kafka.outcomes, key=key.encode(), value=value, headers=headers)
    assert producer.flush(30) == 0


def test_mixed_formats_are_written_back_and_an_unknown_id_is_dead_lettered(
        kafka_settings: KafkaSettings) -> None:
    with running_registry() as reg:
        kafka = dataclasses.replace(kafka_settings, schema_registry_url=reg.url)
        plain = AvroSerde("provisioning_outcome", topic=kafka.outcomes)
        confluent = AvroSerde("provisioning_outcome", topic=kafka.outcomes,
                              registry=SchemaRegistry(reg.url))
        records = [outcome(f"801{i:015d}", "Provisioned", n=i) for i in range(6)]
        forged = struct.pack(">bI", 0, 777) + plain.encode(outcome("801999999999999999",
                                                                   "Provisioned", n=99))
        values = [(r["order_id"], (plain if i % 2 else confluent).encode(r),
                   (plain if i % 2 else confluent).headers()) for i, r in enumerate(records)]
        write(kafka, [*values[:3], ("801999999999999999", forged, []), *values[3:]])
        fake = FakeCollections()
        stats = Sink(kafka, settings(), fake).run(timeout=60, exit_when_idle=True)
        assert stats.consumed == 7
        for r in records:
            assert fake.records[("Order", r["order_id"])]["WHMCS_Order_Id__c"] == \
                r["whmcs_order_id"]
        assert ("Order", "801999999999999999") not in fake.records
        letters = dead_letters(kafka, expected=1)
        assert len(letters) == 1
        key, value, headers = letters[0]
        assert key == b"801999999999999999" and value == forged  # the original bytes
        assert "unknown schema id 777" in headers["reason"]
        assert headers["stage"] == "sink"
        assert committed_total(kafka, settings()) == 7


def test_registry_outage_delays_the_sink_without_dead_letters(
        kafka_settings: KafkaSettings) -> None:
    with running_registry() as reg:
        kafka = dataclasses.replace(kafka_settings, schema_registry_url=reg.url)
        confluent = AvroSerde("provisioning_outcome", topic=kafka.outcomes,
                              registry=SchemaRegistry(reg.url))
        records = [outcome(f"802{i:015d}", "Provisioned", n=i) for i in range(3)]
        write(kafka, [(r["order_id"], confluent.encode(r), []) for r in records])
        reg.stop()
        threading.Timer(3.0, reg.start).start()
        fake = FakeCollections()
        stats = Sink(kafka, settings(), fake).run(timeout=60, exit_when_idle=True)
        assert stats.consumed == 3
        assert {k[1] for k in fake.records if k[0] == "Order"} == {r["order_id"]
                                                                   for r in records}
        assert dead_letters(kafka, expected=0, timeout=2) == []
