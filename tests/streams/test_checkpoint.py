"""The checkpoint (streams/checkpoint.py): only the contiguous prefix of finished events is
committed, never past a record the worker did not finish. Logic with a stub reader; the range
reader on the real broker."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from confluent_kafka import Producer

from common.lag import committed_record_offsets, new_range_consumer
from streams import metrics
from streams.checkpoint import Checkpoint, broker_reader, safe_commit
from tests.conftest import create_topic, wait_markers_written


def test_safe_commit_stops_at_the_first_unfinished_record() -> None:
    # records 10..14 with a marker at 12 (not a record): all finished → the wanted offset
    assert safe_commit(10, 15, [10, 11, 13, 14], {10, 11, 13, 14}) == 15
    assert safe_commit(10, 15, [10, 11, 13, 14], {10, 11, 14}) == 13
    assert safe_commit(10, 15, [10, 11, 13, 14], set()) == 10
    # records outside [base, wanted) do not matter
    assert safe_commit(10, 12, [9, 10, 11, 12, 13], {10, 11}) == 12


def _checkpoint(found: dict[int, tuple[int, list[int]]] | Exception
                ) -> tuple[Checkpoint, list[dict[int, int]], list[tuple[int, int]]]:
    commits: list[dict[int, int]] = []
    seeks: list[tuple[int, int]] = []

    def reader(wanted: Any) -> dict[int, tuple[int, list[int]]]:
        if isinstance(found, Exception):
            raise found
        return {p: v for p, v in found.items() if p in wanted}

    async def commit(offsets: Any) -> bool:
        commits.append(dict(offsets))
        return True
    return (Checkpoint(reader, commit=commit, seek=lambda p, o: seeks.append((p, o))),
            commits, seeks)


def _admit_finish(cp: Checkpoint, partition: int, admitted: list[int], finished: list[int]):
    epochs = {o: cp.admitted(partition, o) for o in admitted}
    for o in finished:
        cp.finished(partition, o, epochs[o])


def test_candidate_is_the_lowest_unfinished_event_or_past_the_highest_finished() -> None:
    cp, commits, seeks = _checkpoint({0: (10, [10, 11, 13, 14]), 1: (5, [5, 6, 7])})
    _admit_finish(cp, 0, [10, 11, 13, 14], [10, 11, 13, 14])  # 12: a marker, never a record
    _admit_finish(cp, 1, [5, 6, 7], [5, 7])  # 6 still running (a hung WHMCS call)
    assert asyncio.run(cp.commit()) == {0: 15, 1: 6}
    assert commits == [{0: 15, 1: 6}] and seeks == []


def test_a_record_faust_never_handed_over_stops_the_commit_and_is_sought_back() -> None:
    cp, commits, seeks = _checkpoint({0: (10, [10, 11, 12, 13, 14])})
    _admit_finish(cp, 0, [10, 11, 13, 14], [10, 11, 13, 14])  # 12 fetched and dropped
    before = metrics.COMMIT_HOLDS.labels("unfinished_record")._value.get()
    assert asyncio.run(cp.commit()) == {0: 12}
    assert seeks == [(0, 12)] and cp.holds == 1
    assert metrics.COMMIT_HOLDS.labels("unfinished_record")._value.get() == before + 1


def test_nothing_moves_when_the_first_record_is_unfinished() -> None:
    cp, commits, seeks = _checkpoint({0: (10, [10, 11])})
    _admit_finish(cp, 0, [11], [11])  # 10 never reached the worker
    assert asyncio.run(cp.commit()) == {} and commits == []
    assert seeks == [(0, 10)]


def test_a_check_that_cannot_be_made_holds_every_commit() -> None:
    cp, commits, _ = _checkpoint(TimeoutError("broker away"))
    _admit_finish(cp, 0, [0, 1], [0, 1])
    before = metrics.COMMIT_HOLDS.labels("check_failed")._value.get()
    assert asyncio.run(cp.commit()) == {} and commits == []
    assert metrics.COMMIT_HOLDS.labels("check_failed")._value.get() == before + 1


def test_committed_offsets_forget_finished_events_and_nothing_is_committed_twice() -> None:
    cp, commits, _ = _checkpoint({0: (0, [0, 1, 2, 3])})
    _admit_finish(cp, 0, [0, 1, 2, 3], [0, 1, 2, 3])
    assert asyncio.run(cp.commit()) == {0: 4}
    assert cp.span(0) == 0
    assert asyncio.run(cp.commit()) == {}  # nothing new
    assert commits == [{0: 4}]


def test_a_rebalance_ignores_finishes_of_events_admitted_before_it() -> None:
    cp, commits, _ = _checkpoint({0: (0, [0, 1])})
    old = cp.admitted(0, 0)
    cp.reset()
    cp.finished(0, 0, old)  # the original finished after the rebalance: not counted
    assert asyncio.run(cp.commit()) == {}
    new = cp.admitted(0, 0)  # its redelivered copy
    cp.finished(0, 0, new)
    assert asyncio.run(cp.commit()) == {0: 1}


def log_start_past_commit(bootstrap: str, topic: str, group: str) -> None:
    """``topic`` (1 partition) with records 0-4 and a commit marker at 5, ``group``
    committed at 2, then the records below 4 deleted (retention, ``kafka-delete-records``):
    the log start passed the group's committed offset."""
    from confluent_kafka import Consumer, TopicPartition
    from confluent_kafka.admin import AdminClient

    create_topic(bootstrap, topic, partitions=1)
    _transaction(bootstrap, topic, 5, commit=True)  # 0-4, marker 5
    member = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                       "enable.auto.commit": False})
    member.commit(offsets=[TopicPartition(topic, 0, 2)], asynchronous=False)
    member.close()
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.delete_records([TopicPartition(topic, 0, 4)]).values():
        future.result(30)


def _transaction(bootstrap: str, topic: str, count: int, commit: bool, partition: int = 0) -> None:
    producer = Producer({"bootstrap.servers": bootstrap,
                         "transactional.id": f"gate-test-{uuid.uuid4().hex[:8]}"})
    producer.init_transactions(30)
    producer.begin_transaction()
    for i in range(count):
        producer.produce(topic, value=b"x%d" % i, partition=partition)
    producer.flush(30)
    if commit:
        producer.commit_transaction(30)
    else:
        producer.abort_transaction(30)
    # the coordinator writes the marker after answering: until then a read_committed
    # reader's end (the last stable offset) is still before this transaction's records
    wait_markers_written(bootstrap, {topic: partition + 1})


@pytest.mark.broker
def test_range_reader_lists_committed_records_only(kafka_bootstrap: str, unique_name) -> None:
    topic = unique_name("gate")
    create_topic(kafka_bootstrap, topic, partitions=2)
    _transaction(kafka_bootstrap, topic, 3, commit=True)    # offsets 0-2, marker 3
    _transaction(kafka_bootstrap, topic, 2, commit=False)   # 4-5 aborted, marker 6
    _transaction(kafka_bootstrap, topic, 2, commit=True)    # 7-8, marker 9
    consumer = new_range_consumer(kafka_bootstrap, unique_name("gate-reader"))
    try:
        got = committed_record_offsets(consumer, topic, {0: (0, 10), 1: (0, 0)}, timeout_s=20)
        assert got == {0: [0, 1, 2, 7, 8], 1: []}
        # a range that ends on a marker, and one that starts inside an aborted transaction
        assert committed_record_offsets(consumer, topic, {0: (1, 4)}) == {0: [1, 2]}
        assert committed_record_offsets(consumer, topic, {0: (5, 8)}) == {0: [7]}
    finally:
        consumer.close()


@pytest.mark.broker
def test_broker_reader_starts_at_the_groups_committed_offset(kafka_bootstrap: str,
                                                            unique_name) -> None:
    from confluent_kafka import Consumer, TopicPartition

    topic, group = unique_name("gate"), unique_name("group")
    create_topic(kafka_bootstrap, topic, partitions=2)
    _transaction(kafka_bootstrap, topic, 5, commit=True)  # 0-4, marker 5
    member = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": group,
                       "enable.auto.commit": False})
    member.commit(offsets=[TopicPartition(topic, 0, 2)], asynchronous=False)
    member.close()
    read = broker_reader(kafka_bootstrap, group, topic)
    try:
        # partition 0 from its committed offset 2; partition 1 never committed: its start
        assert read({0: 5, 1: 0}) == {0: (2, [2, 3, 4]), 1: (0, [])}
    finally:
        read.close()
    read.close()  # twice: a no-op


@pytest.mark.broker
def test_group_lag_counts_records_not_markers(kafka_bootstrap: str, unique_name) -> None:
    """sfprov lag and the watchdog read the same ranges (a consumer without partition EOF)."""
    from confluent_kafka import Consumer, TopicPartition

    from common.lag import group_lag, group_reader

    topic, group = unique_name("lag"), unique_name("group")
    create_topic(kafka_bootstrap, topic, partitions=1)
    _transaction(kafka_bootstrap, topic, 3, commit=True)    # 0-2, marker 3
    _transaction(kafka_bootstrap, topic, 2, commit=False)   # 4-5 aborted, marker 6
    member = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": group,
                       "enable.auto.commit": False})
    member.commit(offsets=[TopicPartition(topic, 0, 1)], asynchronous=False)
    member.close()
    reader = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": unique_name("r"),
                       "enable.auto.commit": False, "isolation.level": "read_committed"})
    offsets = group_reader(kafka_bootstrap, group)
    try:
        # offsets 1..6 hold two committed records (1, 2): the lag is 2, not 6
        assert group_lag(offsets, reader, topic) == [(0, 1, 3)]
    finally:
        reader.close()
        offsets.close()
