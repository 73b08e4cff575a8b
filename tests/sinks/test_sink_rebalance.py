"""A message handed out just before its partition was revoked.

``_poll`` takes one message with ``poll()`` and the rest with ``consume()``, and that second
call serves rebalance callbacks: the sink's revocation commits the lowest outcome it still
holds and forgets the partition. Handled after that, the earlier message was tracked again
and its commit passed the outcome still open at the revocation — the new owner started past
it, and that outcome was never written back nor dead-lettered.

And a partition paused, revoked and assigned again: it must not come back paused (below)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from common import tracing
from common.avro import AvroSerde
from common.errors import SalesforceError
from common.settings import KafkaSettings, SinkSettings
from sinks.app import Sink
from sinks.pausing import BACKPRESSURE
from tests.conftest import create_topic
from tests.sinks.fakes import FakeCollections
from tests.sinks.helpers import committed_everywhere, outcome

KAFKA = KafkaSettings.load({}, bootstrap_servers="127.0.0.1:9")  # never reached
SERDE = AvroSerde("provisioning_outcome", topic=KAFKA.outcomes)


class Message:
    def __init__(self, partition: int, offset: int,
                 record: dict[str, Any] | None = None) -> None:
        if record is None:
            record = outcome(f"801{partition:03d}{offset:012d}", "Failed", n=offset)
        self._partition, self._offset = partition, offset
        self._key, self._value = record["order_id"].encode(), SERDE.encode(record)

    def error(self) -> None:
        return None

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes:
        return self._key

    def value(self) -> bytes:
        return self._value

    def headers(self) -> list[tuple[str, bytes]]:
        return list(SERDE.headers())

    def topic(self) -> str:
        return KAFKA.outcomes


class RevokingConsumer:
    """``poll()`` hands out offset 11 of partition 0; the ``consume()`` after it revokes
    partition 0 (as librdkafka does when a rebalance is due) and returns ``then``."""

    def __init__(self, sink: Sink, then: list[Message]) -> None:
        self.sink, self.then = sink, then
        self.commits: list[list[tuple[int, int]]] = []

    committed = staticmethod(committed_everywhere)

    def poll(self, _timeout: float) -> Message:
        return Message(0, 11)

    def consume(self, num_messages: int, timeout: float) -> list[Message]:
        self.sink._on_revoke(self, [TopicPartition(KAFKA.outcomes, 0)])  # type: ignore[arg-type]
        return self.then

    def commit(self, offsets: list[TopicPartition], asynchronous: bool) -> None:
        self.commits.append([(tp.partition, tp.offset) for tp in offsets])

    def assign(self, partitions: list[TopicPartition]) -> None:
        pass

    def pause(self, partitions: list[TopicPartition]) -> None:
        pass

    def resume(self, partitions: list[TopicPartition]) -> None:
        pass


def sink_holding_offset_10(then: list[Message]) -> tuple[Sink, RevokingConsumer]:
    collections = FakeCollections()  # Salesforce cannot take offset 10 now: it stays held
    collections.fail_call = lambda _records: SalesforceError("Salesforce 503", status=503,
                                                             retryable=True)
    sink = Sink(KAFKA, SinkSettings.load({}, http_port=0, linger_s=60.0), collections)
    real = sink.consumer
    fake = RevokingConsumer(sink, then)
    sink.consumer = fake  # type: ignore[assignment]
    real.close()
    sink._on_assign(fake, [TopicPartition(KAFKA.outcomes, 0),  # type: ignore[arg-type]
                           TopicPartition(KAFKA.outcomes, 1)])
    sink._handle(Message(0, 10))  # held: waits in the batch, then fails to be written
    assert sink.offsets.outstanding() == 1
    return sink, fake


def test_a_message_from_before_a_revocation_is_not_handled() -> None:
    sink, fake = sink_holding_offset_10(then=[Message(1, 5)])
    messages: list[Any] = sink._poll(10, 0.1)
    assert fake.commits == [[(0, 10)]]  # the revocation committed what it still held
    assert [(m.partition(), m.offset()) for m in messages] == [(1, 5)]
    for message in messages:
        sink._handle(message)
    sink._commit(force=True)
    assert all(partition != 0 for commit in fake.commits[1:] for partition, _ in commit), \
        fake.commits  # nothing committed past offset 10 for a partition no longer owned


def test_a_message_of_a_partition_not_owned_is_left_to_its_owner() -> None:
    sink, fake = sink_holding_offset_10(then=[])
    sink._on_revoke(fake, [TopicPartition(KAFKA.outcomes, 0)])  # type: ignore[arg-type]
    sink._handle(Message(0, 11))  # consume() may return one fetched before the revocation
    assert sink.offsets.outstanding() == 0 and sink.stats.consumed == 1
    sink._commit(force=True)
    assert fake.commits == [[(0, 10)]]


class FakeSpan:
    def __init__(self, name: str, attributes: dict[str, Any]) -> None:
        self.name, self.attributes, self.ended = name, dict(attributes), False

    def set_attribute(self, key: str, value: Any) -> None:
        self.attributes[key] = value

    def end(self, end_time: int | None = None) -> None:
        self.ended = True


class FakeTracer:
    def __init__(self) -> None:
        self.spans: list[FakeSpan] = []

    def start_span(self, name: str, context: Any = None, attributes: Any = None,
                   start_time: Any = None) -> FakeSpan:
        self.spans.append(FakeSpan(name, attributes or {}))
        return self.spans[-1]


@pytest.mark.parametrize("how", ["revoked", "lost"])
def test_the_spans_of_a_revoked_partitions_outcomes_end_marked_revoked(
        how: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """With tracing on, an outcome still held when its partition goes must not leave its
    span open (never exported, and the open-span maps grow with every rebalance)."""
    tracer = FakeTracer()
    monkeypatch.setattr(tracing, "_tracer", tracer)
    sink, fake = sink_holding_offset_10(then=[])
    sink._handle(Message(1, 3))  # partition 1 stays: its span stays open
    assert len(sink.ops.spans._by_key) == 2
    lose = sink._on_revoke if how == "revoked" else sink._on_lost
    lose(fake, [TopicPartition(KAFKA.outcomes, 0)])  # type: ignore[arg-type]
    [held, kept] = [s for s in tracer.spans if s.name == "sink.write_back"]
    assert held.ended and held.attributes["sfprov.revoked"] is True
    assert not kept.ended and list(sink.ops.spans._by_key) == [(1, 3)]
    assert list(sink.ops.spans._by_order) == [kept.attributes["sfprov.order_id"]]
    sink._on_lost(fake, [TopicPartition(KAFKA.outcomes, 1)])  # type: ignore[arg-type]
    assert kept.ended and sink.ops.spans._by_key == {} and sink.ops.spans._by_order == {}
    sink.dead_letters.close()


# -- a pause must not outlive the assignment it was made for ----------------------------
#
# librdkafka keeps the application's pause flag of a partition on the client, not on the
# assignment: revoked (or lost) while paused and assigned again later, the partition comes
# back paused (librdkafka issues #1849, #5111). The sink paused what it held when a pause
# began and resumed what it held when the pause was lifted: a partition that left in
# between and came back was never fetched again — its outcomes were not written back, with
# /readyz OK and sfprov_sink_paused at 0, until the sink restarted.


class PausingConsumer:
    """A consumer whose pause flags outlive ``assign`` as librdkafka's do (pinned to the
    real client by the mock-cluster test below); a paused partition hands out nothing."""

    def __init__(self) -> None:
        self.assigned: set[int] = set()
        self.paused: set[int] = set()
        self.waiting: dict[int, list[Message]] = {}
        self.commits: list[list[tuple[int, int]]] = []

    committed = staticmethod(committed_everywhere)

    def assign(self, partitions: list[TopicPartition]) -> None:
        self.assigned = {tp.partition for tp in partitions}

    def unassign(self) -> None:
        self.assigned = set()

    def pause(self, partitions: list[TopicPartition]) -> None:
        self.paused |= {tp.partition for tp in partitions}

    def resume(self, partitions: list[TopicPartition]) -> None:
        self.paused -= {tp.partition for tp in partitions}

    def consume(self, num_messages: int, timeout: float) -> list[Message]:
        out: list[Message] = []
        for partition in sorted(self.assigned - self.paused):
            while self.waiting.get(partition) and len(out) < num_messages:
                out.append(self.waiting[partition].pop(0))
        return out

    def poll(self, timeout: float) -> Message | None:
        return next(iter(self.consume(1, timeout)), None)

    def commit(self, offsets: list[TopicPartition], asynchronous: bool) -> None:
        self.commits.append([(tp.partition, tp.offset) for tp in offsets])


def partitions(*numbers: int) -> list[TopicPartition]:
    return [TopicPartition(KAFKA.outcomes, n) for n in numbers]


def sink_on(fake: PausingConsumer, how: str) -> tuple[Sink, Callable[..., None]]:
    """A sink on ``fake``, and a rebalance to the given partitions (``how``: revoked or
    lost) as confluent-kafka runs it: the callback, then the unassignment, then the new
    assignment's callback."""
    sink = Sink(KAFKA, SinkSettings.load({}, http_port=0), FakeCollections())
    real = sink.consumer
    sink.consumer = fake  # type: ignore[assignment]
    real.close()
    lose = sink._on_revoke if how == "revoked" else sink._on_lost

    def rebalance(*to: int) -> None:
        lose(fake, partitions(*sorted(fake.assigned)))  # type: ignore[arg-type]
        fake.unassign()
        sink._on_assign(fake, partitions(*to))  # type: ignore[arg-type]

    return sink, rebalance


@pytest.mark.parametrize("how", ["revoked", "lost"])
def test_a_partition_paused_revoked_and_assigned_again_is_consumed(how: str) -> None:
    fake = PausingConsumer()
    sink, rebalance = sink_on(fake, how)
    sink._on_assign(fake, partitions(0, 1, 2, 3))  # type: ignore[arg-type]
    sink.pauses.pause(BACKPRESSURE)  # e.g. SINK_MAX_PENDING reached
    rebalance(0, 1)  # a second sink joins and takes 2 and 3
    sink.pauses.lift(BACKPRESSURE)
    rebalance(0, 1, 2, 3)  # the second sink leaves
    assert fake.paused == set(), "a partition came back still paused"
    fake.waiting[2] = [Message(2, 7)]
    messages: list[Any] = sink._poll(10, 0.1)
    assert [(m.partition(), m.offset()) for m in messages] == [(2, 7)]
    for message in messages:
        sink._handle(message)
    assert sink.stats.consumed == 1 and sink.offsets.outstanding() == 1
    sink.dead_letters.close()


@pytest.mark.parametrize("how", ["revoked", "lost"])
def test_no_pause_flag_outlives_the_assignment_it_was_set_for(how: str) -> None:
    fake = PausingConsumer()
    sink, rebalance = sink_on(fake, how)
    sink._on_assign(fake, partitions(0, 1, 2, 3))  # type: ignore[arg-type]
    sink.pauses.pause(BACKPRESSURE)
    assert fake.paused == {0, 1, 2, 3}
    rebalance(0, 1)
    assert fake.paused == {0, 1}  # assigned during a pause: paused; 2 and 3 keep no flag
    rebalance(1, 2)
    assert fake.paused == {1, 2}
    sink.pauses.lift(BACKPRESSURE)
    assert fake.paused == set()
    sink.dead_letters.close()


# -- the same on librdkafka itself, against the real broker ---------------------------------


@pytest.fixture
def four_partitions(kafka_bootstrap: str, unique_name: Callable[[str], str]) -> str:
    """A topic of 4 partitions of its own on the real broker (this module's fakes stand in
    for librdkafka; these tests check that what they assume is what librdkafka does)."""
    topic = unique_name("pause")
    create_topic(kafka_bootstrap, topic, partitions=4)
    return topic


def _read(poll: Callable[[], list[Any]], until: Callable[[set[int]], bool], within: float,
          handle: Callable[[Any], None] = lambda _m: None) -> set[int]:
    """Poll for ``within`` seconds at most, until ``until`` holds for the partitions read
    from; each message is given to ``handle``."""
    seen: set[int] = set()
    deadline = time.monotonic() + within
    while time.monotonic() < deadline and not until(seen):
        for message in poll():
            if message is not None and message.error() is None:
                seen.add(message.partition())
                handle(message)
    return seen


def _produce(producer: Producer, topic: str, numbers: range, tag: int) -> None:
    for n in numbers:
        record = outcome(f"801{n:03d}{tag:012d}", "Skipped", n=tag)
        producer.produce(topic, key=record["order_id"].encode(), value=SERDE.encode(record),
                         headers=SERDE.headers(), partition=n)
    assert producer.flush(10) == 0


@pytest.mark.broker
def test_librdkafka_keeps_a_pause_across_unassign_and_assign(
        kafka_bootstrap: str, four_partitions: str) -> None:
    """What ``PausingConsumer`` assumes: the flag survives the assignment."""
    topic = four_partitions
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    _produce(producer, topic, range(4), tag=1)
    consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": topic,
                         "enable.auto.commit": False, "auto.offset.reset": "latest"})
    try:
        assert len(consumer.list_topics(topic, timeout=10).topics[topic].partitions) == 4
        # past the first records (offset 0 of each partition): the second ones, produced
        # below, are the first read (no "latest" to resolve before they land)
        every = [TopicPartition(topic, n, 1) for n in range(4)]

        def poll() -> list[Any]:
            return [consumer.poll(0.1)]

        consumer.assign(every)
        consumer.pause(every)
        consumer.unassign()
        consumer.assign(every[:2])
        consumer.resume(every[:2])
        consumer.unassign()
        consumer.assign(every)
        _produce(producer, topic, range(4), tag=2)
        seen = _read(poll, lambda s: {0, 1} <= s, within=10)
        seen |= _read(poll, lambda s: bool(s & {2, 3}), within=1.5)
        assert seen == {0, 1}, "librdkafka no longer keeps the pause: PausingConsumer is stale"
        consumer.resume(every)
        assert _read(poll, lambda s: {2, 3} <= s, within=10) == {2, 3}
    finally:
        consumer.close()


@pytest.mark.broker
def test_the_sink_on_librdkafka_consumes_a_partition_paused_before_it_left(
        kafka_bootstrap: str, four_partitions: str) -> None:
    """The sink's own callbacks on a real client: paused, revoked, lifted, assigned again
    (its start position the default one: a new installation's first records)."""
    kafka = KafkaSettings.load({}, bootstrap_servers=kafka_bootstrap,
                               outcomes_topic=four_partitions)
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    _produce(producer, kafka.outcomes, range(4), tag=1)
    sink = Sink(kafka, SinkSettings.load({}, http_port=0, group_id=four_partitions),
                FakeCollections())
    consumer = sink.consumer
    every = [TopicPartition(kafka.outcomes, n) for n in range(4)]

    def poll() -> list[Any]:
        return list(sink._poll(50, 0.1))

    def rebalance(to: list[TopicPartition]) -> None:
        sink._on_revoke(consumer, list(sink._assigned))
        consumer.unassign()  # what confluent-kafka does after the callback
        sink._on_assign(consumer, to)

    try:
        sink._on_assign(consumer, every)
        assert _read(poll, lambda s: s == {0, 1, 2, 3}, within=10, handle=sink._handle) \
            == {0, 1, 2, 3}
        sink.pauses.pause(BACKPRESSURE)
        rebalance(to=every[:2])
        sink.pauses.lift(BACKPRESSURE)
        rebalance(to=every)
        _produce(producer, kafka.outcomes, range(4), tag=2)
        seen = _read(poll, lambda s: s == {0, 1, 2, 3}, within=10, handle=sink._handle)
        assert seen == {0, 1, 2, 3}, f"partitions {sorted({0, 1, 2, 3} - seen)} stay paused"
    finally:
        consumer.close()
        sink.dead_letters.close()
