"""The commit gate (streams/commit_gate.py): no commit of the requests topic past a record
the agent did not finish. Logic with a stub reader; the range reader on the real broker."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from confluent_kafka import Producer
from faust.types import TP

from common.lag import committed_record_offsets, new_range_consumer
from streams import metrics
from streams.commit_gate import CommitGate, broker_reader, install, safe_commit
from tests.conftest import create_topic

REQ = "requests"


def test_safe_commit_stops_at_the_first_unfinished_record() -> None:
    # records 10..14 with a marker at 12 (not a record): all finished → the wanted offset
    assert safe_commit(10, 15, [10, 11, 13, 14], {10, 11, 13, 14}) == 15
    assert safe_commit(10, 15, [10, 11, 13, 14], {10, 11, 14}) == 13
    assert safe_commit(10, 15, [10, 11, 13, 14], set()) == 10
    # records outside [base, wanted) do not matter
    assert safe_commit(10, 12, [9, 10, 11, 12, 13], {10, 11}) == 12


def _gate(found: dict[int, tuple[int, list[int]]] | Exception) -> CommitGate:
    def reader(wanted: Any) -> dict[int, tuple[int, list[int]]]:
        if isinstance(found, Exception):
            raise found
        return {p: v for p, v in found.items() if p in wanted}
    return CommitGate(REQ, reader)


def test_check_clamps_to_the_first_unfinished_record_and_asks_for_a_seek() -> None:
    gate = _gate({0: (10, [10, 11, 13, 14]), 1: (5, [5, 6])})
    for offset in (10, 11, 14):
        gate.finished(0, offset)
    gate.finished(1, 5)
    gate.finished(1, 6)
    before = metrics.COMMIT_HOLDS.labels("unfinished_record")._value.get()
    allowed = asyncio.run(gate.check({TP(REQ, 0): 15, TP(REQ, 1): 7}))
    assert allowed == {TP(REQ, 0): 13, TP(REQ, 1): 7}
    assert gate.pending_seeks == {TP(REQ, 0): 13}
    assert gate.holds == 1
    assert metrics.COMMIT_HOLDS.labels("unfinished_record")._value.get() == before + 1


def test_check_leaves_out_a_partition_that_may_not_move() -> None:
    gate = _gate({0: (10, [10, 11])})  # record 10 never finished: the commit stays at 10
    gate.finished(0, 11)
    assert asyncio.run(gate.check({TP(REQ, 0): 12})) == {}
    assert gate.pending_seeks == {TP(REQ, 0): 10}


def test_a_check_that_cannot_be_made_holds_every_commit() -> None:
    gate = _gate(TimeoutError("broker away"))
    gate.finished(0, 10)
    assert asyncio.run(gate.check({TP(REQ, 0): 11})) == {}
    assert gate.pending_seeks == {}


def test_committed_offsets_forget_finished_records_below_them() -> None:
    gate = _gate({})
    for offset in range(10, 20):
        gate.finished(0, offset)
    gate.committed({TP(REQ, 0): 15})
    assert gate.retained_count() == 5


class FakeConsumer:
    """The three things :func:`install` touches on faust's consumer."""

    def __init__(self, fetches: list[list[tuple[TP, int]]]) -> None:
        self.fetches = fetches
        self.commits: list[dict[TP, int]] = []
        self.seeks: list[tuple[TP, int]] = []
        self.events: list[str] = []

    async def _commit_offsets(self, offsets: Any, start_new_transaction: bool = True) -> bool:
        self.commits.append(dict(offsets))
        return True

    async def getmany(self, timeout: float) -> Any:
        self.events.append("fetch")
        for tp, offset in self.fetches.pop(0):
            yield tp, offset

    async def seek(self, tp: TP, offset: int) -> None:
        self.events.append(f"seek {tp.partition}:{offset}")
        self.seeks.append((tp, offset))

    def assignment(self) -> set[TP]:
        return {TP(REQ, 0), TP(REQ, 1)}


def test_install_clamps_commits_and_seeks_between_fetches() -> None:
    gate = _gate({0: (0, [0, 1, 2, 3])})
    consumer = FakeConsumer([[(TP(REQ, 0), 0), (TP(REQ, 0), 3)], [(TP(REQ, 0), 1)]])
    install(gate, consumer)

    async def run() -> None:
        got = [item async for item in consumer.getmany(timeout=1.0)]
        assert got == [(TP(REQ, 0), 0), (TP(REQ, 0), 3)]  # faust "dropped" 1 and 2
        gate.finished(0, 0)
        gate.finished(0, 3)
        # faust wants 4 (it counted 1..2 as a gap); other topics pass untouched
        assert await consumer._commit_offsets({TP(REQ, 0): 4, TP("changelog", 0): 9})
        assert consumer.commits == [{TP(REQ, 0): 1, TP("changelog", 0): 9}]
        assert consumer.seeks == []  # not while a fetched batch may still be iterated
        [item async for item in consumer.getmany(timeout=1.0)]
        assert consumer.events == ["fetch", "seek 0:1", "fetch"]

    asyncio.run(run())


def test_install_commits_nothing_when_nothing_may_move() -> None:
    gate = _gate({0: (5, [5])})
    consumer = FakeConsumer([])
    install(gate, consumer)
    assert asyncio.run(consumer._commit_offsets({TP(REQ, 0): 6})) is False
    assert consumer.commits == []


# -- on the broker ---------------------------------------------------------------------------


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
    # partition 0 from its committed offset 2; partition 1 never committed: from its start
    assert read({0: 5, 1: 0}) == {0: (2, [2, 3, 4]), 1: (0, [])}


@pytest.mark.broker
def test_group_lag_counts_records_not_markers(kafka_bootstrap: str, unique_name) -> None:
    """sfprov lag and the watchdog read the same ranges (a consumer without partition EOF)."""
    from confluent_kafka import Consumer, TopicPartition
    from confluent_kafka.admin import AdminClient

    from common.lag import group_lag

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
    try:
        # offsets 1..6 hold two committed records (1, 2): the lag is 2, not 6
        assert group_lag(AdminClient({"bootstrap.servers": kafka_bootstrap}), reader, group,
                         topic) == [(0, 1, 3)]
    finally:
        reader.close()
