"""The connector's Kafka side on the real broker: transactions, positions, fencing."""

from __future__ import annotations

import pytest
from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka import KafkaError as CKafkaError

import connectors.offsets
from common.errors import KafkaAccessError, KafkaError, ProducerFencedError
from connectors.offsets import EVENT, OffsetCodec, Position, load_position
from connectors.writer import TransactionalWriter, transactional_id
from tests.conftest import wait_markers_written

pytestmark = pytest.mark.broker


def read_committed(bootstrap: str, topic: str, partitions: int) -> list:
    """Every committed record of ``topic``, once the last transaction's markers are written
    (its commit returned before they were: a read at once could end before its records)."""
    wait_markers_written(bootstrap, {topic: partitions})
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "t-reader",
                         "isolation.level": "read_committed", "enable.auto.commit": False,
                         "enable.partition.eof": True})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    out, eof = [], set()
    try:
        while len(eof) < partitions:
            msg = consumer.poll(5)
            assert msg is not None, "broker did not answer"
            if msg.error():
                eof.add(msg.partition())
                continue
            out.append(msg)
    finally:
        consumer.close()
    return out


@pytest.fixture
def closing():
    """Closes the writers a test opens (left open, their producers outlive the session's
    broker and log connection failures after the run)."""
    opened: list[TransactionalWriter] = []

    def keep(writer: TransactionalWriter) -> TransactionalWriter:
        opened.append(writer)
        return writer
    yield keep
    for writer in opened:
        writer.close()


def test_batch_and_position_commit_together_and_abort_leaves_nothing(kafka_settings,
                                                                    closing) -> None:
    codec = OffsetCodec("c-test", "/event/X__e")
    txn_id = transactional_id(kafka_settings, "c-test", "/event/X__e")
    writer = closing(TransactionalWriter(kafka_settings, txn_id))
    writer.start()
    boot = kafka_settings.bootstrap_servers
    assert load_position(boot, kafka_settings.connector_offsets, codec) is None

    pos1 = Position(b"\x01", EVENT, 1000, "u1")
    value, headers = codec.position_value(pos1)
    writer.write([(kafka_settings.requests, b"801A", b"v1", []),
                  (kafka_settings.connector_offsets, codec.key, value, headers)])
    assert load_position(boot, kafka_settings.connector_offsets, codec) == pos1

    # An aborted transaction: neither its record nor its position become visible.
    p = writer._producer
    p.begin_transaction()
    p.produce(kafka_settings.requests, key=b"801B", value=b"v2")
    value2, _ = codec.position_value(Position(b"\x02", EVENT, 2000, "u2"))
    p.produce(kafka_settings.connector_offsets, key=codec.key, value=value2)
    p.flush(10)
    p.abort_transaction(10)
    assert load_position(boot, kafka_settings.connector_offsets, codec) == pos1
    msgs = read_committed(boot, kafka_settings.requests, kafka_settings.partitions)
    assert [m.key() for m in msgs] == [b"801A"]


def test_second_writer_with_same_id_fences_the_first(kafka_settings, closing) -> None:
    txn_id = transactional_id(kafka_settings, "c-fence", "/event/X__e")
    first = closing(TransactionalWriter(kafka_settings, txn_id))
    first.start()
    first.write([(kafka_settings.requests, b"k", b"from-first", [])])
    second = closing(TransactionalWriter(kafka_settings, txn_id))
    second.start()
    with pytest.raises(ProducerFencedError, match="fenced"):
        first.write([(kafka_settings.requests, b"k", b"zombie", [])])
    second.write([(kafka_settings.requests, b"k", b"from-second", [])])
    values = [m.value() for m in read_committed(kafka_settings.bootstrap_servers,
                                                kafka_settings.requests,
                                                kafka_settings.partitions)]
    assert values == [b"from-first", b"from-second"]


class _BrokerAwayFirst(Consumer):
    """A consumer whose first metadata request finds the broker away (as a paused single
    broker answers: a transport failure once the attempt's timeout has passed)."""

    calls = 0

    def list_topics(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        type(self).calls += 1
        if type(self).calls == 1:
            raise KafkaException(CKafkaError(CKafkaError._TRANSPORT,
                                             "Failed to get metadata: Broker transport failure"))
        return super().list_topics(*args, **kwargs)

    def always_away(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        type(self).calls += 1
        raise KafkaException(CKafkaError(CKafkaError._TRANSPORT, "Broker transport failure"))

    def refused(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        type(self).calls += 1
        raise KafkaException(CKafkaError(CKafkaError.TOPIC_AUTHORIZATION_FAILED,
                                         "Topic authorization failed"))


def test_a_broker_away_while_the_position_is_read_is_waited_for(kafka_settings, monkeypatch,
                                                                  closing) -> None:
    codec = OffsetCodec("c-away", "/event/X__e")
    writer = closing(TransactionalWriter(
        kafka_settings, transactional_id(kafka_settings, "c-away", "/event/X__e")))
    writer.start()
    position = Position(b"\x07", EVENT, 7000, "u7")
    value, headers = codec.position_value(position)
    writer.write([(kafka_settings.connector_offsets, codec.key, value, headers)])
    monkeypatch.setattr(connectors.offsets, "Consumer", _BrokerAwayFirst)
    assert load_position(kafka_settings.bootstrap_servers, kafka_settings.connector_offsets,
                         codec) == position
    assert _BrokerAwayFirst.calls == 2  # the failed attempt, then the one that answered
    _BrokerAwayFirst.calls = 0
    with pytest.raises(KafkaError, match="cannot read") as info:  # away for the whole time
        monkeypatch.setattr(_BrokerAwayFirst, "list_topics", _BrokerAwayFirst.always_away)
        load_position(kafka_settings.bootstrap_servers, kafka_settings.connector_offsets,
                      codec, timeout_s=2.0)
    assert info.value.retryable
    # failing at once, it is not asked in a loop: a backoff between attempts (0.5 s doubling,
    # jittered down to no less than 0.25 s), so 2 s hold at most 1 + 2 / 0.25 attempts; with
    # the sleep removed it asked 18,663 times. (CI once saw 5: four short jittered delays.)
    assert 2 <= _BrokerAwayFirst.calls <= 1 + int(2.0 / 0.25)


def test_a_refused_position_read_ends_at_once(kafka_settings, monkeypatch) -> None:
    monkeypatch.setattr(connectors.offsets, "Consumer", _BrokerAwayFirst)
    monkeypatch.setattr(_BrokerAwayFirst, "list_topics", _BrokerAwayFirst.refused)
    _BrokerAwayFirst.calls = 0
    with pytest.raises(KafkaAccessError, match="TOPIC_AUTHORIZATION_FAILED|read"):
        load_position(kafka_settings.bootstrap_servers, kafka_settings.connector_offsets,
                      OffsetCodec("c-refused", "/event/X__e"), timeout_s=30.0)
    assert _BrokerAwayFirst.calls == 1  # not retried for 30 s
