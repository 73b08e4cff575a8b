"""Producing outcome records and reading dead letters on the real broker."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

from confluent_kafka import Consumer, Producer

from common.avro import AvroSerde
from common.deadletter import parse_headers
from common.settings import KafkaSettings, SinkSettings

STATUSES = ("Provisioned", "Provisioned", "Failed", "Skipped", "Duplicate")


def outcome(order_id: str, status: str, *, opportunity_id: str | None = None, n: int = 0,
            **extra: Any) -> dict[str, Any]:
    now = dt.datetime.now(dt.UTC)
    record = {"order_id": order_id, "opportunity_id": opportunity_id,
              "idem_key": f"{order_id}-{n}", "correlation_id": f"corr-{n}",
              "status": status, "whmcs_order_id": 1000 + n if status == "Provisioned" else None,
              "whmcs_service_ids": [5000 + n] if status == "Provisioned" else [],
              "error_code": "WHMCS_ERROR" if status == "Failed" else None,
              "error_message": f"order {n} refused" if status == "Failed" else None,
              "requested_at": now - dt.timedelta(seconds=5), "completed_at": now}
    record.update(extra)
    return record


def produce(kafka: KafkaSettings, outcomes: list[dict[str, Any]],
            raw: list[tuple[bytes, bytes]] = (),
            raw_headers: list[tuple[str, bytes]] | None = None,
            timestamp_ms: int | None = None) -> None:
    """Each of ``outcomes`` (keyed by Order id), then each of ``raw``; ``timestamp_ms`` the
    records' CreateTime (default: now)."""
    stamp = {} if timestamp_ms is None else {"timestamp": timestamp_ms}
    serde = AvroSerde("provisioning_outcome", topic=kafka.outcomes)
    producer = Producer({"bootstrap.servers": kafka.bootstrap_servers, "linger.ms": 20,
                         "enable.idempotence": True})
    for record in outcomes:
        producer.produce(kafka.outcomes, key=record["order_id"].encode(),
                         value=serde.encode(record), headers=serde.headers(), **stamp)
        producer.poll(0)
    for key, value in raw:
        producer.produce(kafka.outcomes, key=key, value=value, headers=raw_headers)
    assert producer.flush(30) == 0


def dead_letters(kafka: KafkaSettings, expected: int, timeout: float = 20.0
                 ) -> list[tuple[bytes | None, bytes | None, dict[str, str]]]:
    consumer = Consumer({"bootstrap.servers": kafka.bootstrap_servers,
                         "group.id": kafka.topic("dlq-reader"), "auto.offset.reset": "earliest",
                         "enable.auto.commit": False})
    consumer.subscribe([kafka.dead_letters])
    out: list = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and len(out) < expected:
            message = consumer.poll(0.5)
            if message is not None and not message.error():
                out.append((message.key(), message.value(), parse_headers(message.headers())))
        # a little longer, to see extra (unexpected) dead letters too
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            message = consumer.poll(0.2)
            if message is not None and not message.error():
                out.append((message.key(), message.value(), parse_headers(message.headers())))
    finally:
        consumer.close()
    return out


def committed_total(kafka: KafkaSettings, settings: SinkSettings) -> int:
    """Sum of the sink group's committed offsets over the outcomes partitions."""
    from confluent_kafka import KafkaException, TopicPartition
    consumer = Consumer({"bootstrap.servers": kafka.bootstrap_servers,
                         "group.id": kafka.topic(settings.group_id)})
    try:
        partitions = consumer.list_topics(kafka.outcomes, timeout=10).topics[kafka.outcomes]
        tps = [TopicPartition(kafka.outcomes, p) for p in partitions.partitions]
        for attempt in range(20):
            try:
                return sum(max(0, tp.offset) for tp in consumer.committed(tps, timeout=10))
            except KafkaException:  # coordinator loading / moving: ask again
                if attempt == 19:
                    raise
                time.sleep(0.25)
        raise AssertionError("unreachable")
    finally:
        consumer.close()


def committed_everywhere(partitions: list[Any], timeout: float = 0.0) -> list[Any]:
    """A fake consumer's ``committed()``: the group holds an offset (0) on every partition,
    so the sink's assignment starts there (sinks.start decides nothing)."""
    from confluent_kafka import TopicPartition
    return [TopicPartition(tp.topic, tp.partition, 0) for tp in partitions]
