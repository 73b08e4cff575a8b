"""common.lag beyond EXACT_LAG_LIMIT: offsets of aborted transactions alone are no records.

A connector whose every transaction aborts (its offsets partition under min ISR) writes the
same batch into the requests partitions again and again: past the limit the lag was the
offset distance, which the worker's stall watchdog took for records waiting — it exited the
worker (75) every two minutes, and `sfprov lag` showed a backlog that was not there."""

from __future__ import annotations

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from common import lag
from tests.conftest import create_topic

pytestmark = pytest.mark.broker


def _write(bootstrap: str, topic: str, n: int, *, commit: bool, txn: str) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": txn})
    producer.init_transactions(30)
    producer.begin_transaction()
    for i in range(n):
        producer.produce(topic, key=b"k", value=str(i).encode(), partition=0)
    producer.flush(30)
    if commit:
        producer.commit_transaction(30)
    else:
        producer.abort_transaction(30)


def _detail(bootstrap: str, topic: str, group: str) -> lag.PartitionLag:
    reader = lag.group_reader(bootstrap, group)
    consumer = lag.new_range_consumer(bootstrap, f"{group}-lag")
    try:
        (row,) = lag.group_lag_detail(reader, consumer, topic)
        return row
    finally:
        reader.close()
        consumer.close()


def test_aborted_offsets_past_the_limit_are_no_lag_and_a_record_after_them_is(
        kafka_bootstrap, unique_name, monkeypatch):
    monkeypatch.setattr(lag, "EXACT_LAG_LIMIT", 10)
    topic, group = unique_name("aborted"), unique_name("group")
    create_topic(kafka_bootstrap, topic)
    _write(kafka_bootstrap, topic, 3, commit=True, txn=unique_name("txn"))  # 0-2, marker 3
    committer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": group,
                          "enable.auto.commit": False})
    committer.commit(offsets=[TopicPartition(topic, 0, 4)], asynchronous=False)
    committer.close()
    _write(kafka_bootstrap, topic, 30, commit=False, txn=unique_name("txn"))  # 4-33, abort 34
    row = _detail(kafka_bootstrap, topic, group)
    assert (row.committed, row.end) == (4, 35)
    assert (row.lag, row.exact) == (0, True)  # 31 offsets, no record among them
    # what the watchdog and the lag gauges read: (partition, committed, committed + records)
    assert lag.lag_reader(kafka_bootstrap, group, topic)() == [(0, 4, 4)]
    _write(kafka_bootstrap, topic, 1, commit=True, txn=unique_name("txn"))  # 35, marker 36
    row = _detail(kafka_bootstrap, topic, group)
    assert row.end == 37 and row.lag == 33 and not row.exact  # a record: the distance
