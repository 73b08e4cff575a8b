"""A message handed out just before its partition was revoked.

``_poll`` takes one message with ``poll()`` and the rest with ``consume()``, and that second
call serves rebalance callbacks: the sink's revocation commits the lowest outcome it still
holds and forgets the partition. Handled after that, the earlier message was tracked again
and its commit passed the outcome still open at the revocation — the new owner started past
it, and that outcome was never written back nor dead-lettered."""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka import TopicPartition

from common import tracing
from common.avro import AvroSerde
from common.errors import SalesforceError
from common.settings import KafkaSettings, SinkSettings
from sinks.app import Sink
from tests.sinks.fakes import FakeCollections
from tests.sinks.helpers import outcome

KAFKA = KafkaSettings.load({}, bootstrap_servers="127.0.0.1:9")  # never reached
SERDE = AvroSerde("provisioning_outcome", topic=KAFKA.outcomes)


class Message:
    def __init__(self, partition: int, offset: int) -> None:
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
