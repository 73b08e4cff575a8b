"""Reconciliation's topic read on the real broker, when retention deletes what it reads.

``read_topic`` looks its start up (``offsets_for_times``) and then fetches from there; a
segment deleted in between leaves that start below the partition's new log start
(OFFSET_OUT_OF_RANGE). With librdkafka's default ``auto.offset.reset`` (``largest``) the
reader jumped to the partition's end, and the next request written there (the connector
keeps writing) took its position past the end it reads to: the partition counted as read,
every record still there was missed, and the candidates looked request-less and were
re-requested. It reads on from the log start instead (the records below it are gone:
reading from there is complete).
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
from confluent_kafka import Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from common import reconcile as R
from common.avro import AvroSerde
from common.settings import KafkaSettings

pytestmark = pytest.mark.broker

OID, OTHER = "801000000000001AAA", "801000000000002AAA"


class DeletingBeforeTheFetch:
    """The reader's consumer, whose start look-up returns the offsets it found *after*
    retention deleted the partition's records below ``delete_below`` (the race, made
    certain)."""

    def __init__(self, consumer: Any, admin: AdminClient, topic: str, delete_below: int
                 ) -> None:
        self._consumer, self._admin = consumer, admin
        self._topic, self._delete_below = topic, delete_below

    def offsets_for_times(self, partitions: list[TopicPartition], timeout: float
                          ) -> list[TopicPartition]:
        starts = self._consumer.offsets_for_times(partitions, timeout=timeout)
        assert [(tp.partition, tp.offset) for tp in starts if tp.partition == 0] == [(0, 0)]
        futures = self._admin.delete_records(
            [TopicPartition(self._topic, 0, self._delete_below)], request_timeout=30)
        for future in futures.values():
            assert future.result().low_watermark == self._delete_below
        return starts

    def __getattr__(self, name: str) -> Any:
        return getattr(self._consumer, name)


def test_a_read_whose_start_retention_deleted_reads_on_from_the_log_start(
        kafka_settings: KafkaSettings, monkeypatch: pytest.MonkeyPatch) -> None:
    kafka = kafka_settings
    topic = kafka.requests
    serde = AvroSerde("provision_request", topic=topic)
    producer = Producer({"bootstrap.servers": kafka.bootstrap_servers})
    for _ in range(10):
        _topic, key, value, headers = R.request_record(kafka, OID, source="test",
                                                       requested_by="test", serde=serde)
        producer.produce(topic, value, key, partition=0, headers=headers)
    assert producer.flush(30) == 0
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap_servers})
    consumer = R._consumer
    monkeypatch.setattr(R, "_consumer", lambda *a, **kw: DeletingBeforeTheFetch(
        consumer(*a, **kw), admin, topic, 5))
    stop = threading.Event()

    def traffic() -> None:  # another Order's requests, written while the pass reads
        while not stop.wait(0.2):
            _topic, key, value, headers = R.request_record(kafka, OTHER, source="test",
                                                           requested_by="test", serde=serde)
            producer.produce(topic, value, key, partition=0, headers=headers)
            producer.flush(30)
    writer = threading.Thread(target=traffic, daemon=True)
    writer.start()
    try:
        read = [(partition, offset) for _key, _value, partition, offset in R.read_topic(
            kafka, topic, "provision_request", {OID}, since=0.0, idle_timeout_s=10.0)]
    finally:
        stop.set()
        writer.join(30)

    assert read == [(0, offset) for offset in range(5, 10)]
