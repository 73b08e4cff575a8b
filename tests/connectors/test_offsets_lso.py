"""The position read past another connector's open transaction, on the real broker.

Two connectors (different ``CONNECTOR_NAME`` or channel) share the offsets topic. Under
``read_committed`` a partition's end-of-partition comes at its *last stable offset*: the
first record of a transaction still open there. A position committed after that record —
by this connector, while the other one is paused with its transaction open — lies beyond
it, so a reader that stopped at the first end-of-partition returned the older position
(events written twice) or none (the replay preset: perhaps events skipped). The reader
reads to the partition's real end instead, waiting for the open transaction to end.
Nothing here measures how long anything took.
"""

from __future__ import annotations

import threading
import time

import pytest
from confluent_kafka import KafkaError as CKafkaError

from common.errors import KafkaError
from common.settings import KafkaSettings
from connectors import offsets
from connectors.offsets import EVENT, OffsetCodec, Position, load_position
from connectors.writer import TransactionalWriter, transactional_id

pytestmark = pytest.mark.broker

CHANNEL = "/event/X__e"


@pytest.fixture
def writers(kafka_settings: KafkaSettings):
    """Started writers for connector names; closed after the test."""
    opened: list[TransactionalWriter] = []

    def start(name: str) -> TransactionalWriter:
        writer = TransactionalWriter(kafka_settings, transactional_id(kafka_settings, name,
                                                                      CHANNEL))
        opened.append(writer)
        writer.start()
        return writer
    yield start
    for writer in opened:
        writer.close()


def commit_position(kafka: KafkaSettings, writer: TransactionalWriter, codec: OffsetCodec,
                    position: Position) -> None:
    value, headers = codec.position_value(position)
    writer.write([(kafka.connector_offsets, codec.key, value, headers)])


def open_transaction(kafka: KafkaSettings, writer: TransactionalWriter,
                     codec: OffsetCodec) -> None:
    """A position record of ``codec``'s connector in the offsets topic, in a transaction
    left open (the other connector, paused between its produce and its commit)."""
    value, _ = codec.position_value(Position(b"\xee", EVENT, 5000, "other"))
    p = writer._producer
    p.begin_transaction()
    p.produce(kafka.connector_offsets, key=codec.key, value=value)
    assert p.flush(10) == 0  # in the log, uncommitted: the last stable offset stays before it


@pytest.mark.parametrize("ending", ["abort", "commit"])
def test_a_position_past_another_connectors_open_transaction_is_found(
        kafka_settings: KafkaSettings, writers, ending: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    ours, theirs = OffsetCodec("c-ours", CHANNEL), OffsetCodec("c-theirs", CHANNEL)
    writer, other = writers("c-ours"), writers("c-theirs")
    topic = kafka_settings.connector_offsets
    p1, p2 = Position(b"\x01", EVENT, 1000, "u1"), Position(b"\x02", EVENT, 2000, "u2")
    commit_position(kafka_settings, writer, ours, p1)
    open_transaction(kafka_settings, other, theirs)
    commit_position(kafka_settings, writer, ours, p2)  # after the other's open record

    # end the other transaction only once the reader has met the last stable offset (an
    # end-of-partition before the end): ended earlier, the old reader would pass too
    met, ended = threading.Event(), threading.Event()

    class Watching(offsets.Consumer):
        def poll(self, *args, **kwargs):
            msg = super().poll(*args, **kwargs)
            if msg is not None and msg.error() is not None \
                    and msg.error().code() == CKafkaError._PARTITION_EOF:
                met.set()
            return msg

    monkeypatch.setattr(offsets, "Consumer", Watching)

    def end_later() -> None:
        assert met.wait(60), "the reader never met the open transaction"
        time.sleep(0.5)  # the reader is waiting meanwhile
        ended.set()
        if ending == "abort":
            other._producer.abort_transaction(30)
        else:
            other._producer.commit_transaction(30)

    thread = threading.Thread(target=end_later, daemon=True)
    thread.start()
    try:
        found = load_position(kafka_settings.bootstrap_servers, topic, ours, timeout_s=60.0)
    finally:
        thread.join(60)
    assert met.is_set(), "the reader met no end-of-partition: nothing was tested"
    assert found == p2, f"read {found}, not the position committed last"
    # it waited for the open transaction: returned only after the other one ended it
    assert ended.is_set()
    # the other connector's own position is as its transaction left it
    assert load_position(kafka_settings.bootstrap_servers, topic, theirs) == (
        None if ending == "abort" else Position(b"\xee", EVENT, 5000, "other"))


def test_a_transaction_open_past_the_deadline_is_a_retryable_error_saying_so(
        kafka_settings: KafkaSettings, writers) -> None:
    ours, theirs = OffsetCodec("c-ours", CHANNEL), OffsetCodec("c-theirs", CHANNEL)
    writer, other = writers("c-ours"), writers("c-theirs")
    topic = kafka_settings.connector_offsets
    commit_position(kafka_settings, writer, ours, Position(b"\x01", EVENT, 1000, "u1"))
    open_transaction(kafka_settings, other, theirs)
    p2 = Position(b"\x02", EVENT, 2000, "u2")
    commit_position(kafka_settings, writer, ours, p2)
    try:
        with pytest.raises(KafkaError, match="transaction .*still open") as info:
            # long enough for the metadata and the log ends on a loaded machine (a 3 s run
            # once saw the first admin request time out), short of the broker's own abort
            # (the writer's transaction timeout, 60 s)
            load_position(kafka_settings.bootstrap_servers, topic, ours, timeout_s=20.0)
        assert info.value.retryable  # the connector's start-up fails, its restart reads again
    finally:
        other._producer.abort_transaction(30)
    assert load_position(kafka_settings.bootstrap_servers, topic, ours) == p2


def test_a_tombstone_on_the_position_key_is_no_position(kafka_settings: KafkaSettings,
                                                        writers) -> None:
    """An operator's reset (a tombstone on ``<connector>|<channel>``, Kafka Connect's way)
    is no position at once, as ``sfprov lag`` reads it: before the fix the connector resumed
    from the value under it until the log cleaner removed both, then from the preset."""
    ours = OffsetCodec("c-ours", CHANNEL)
    writer = writers("c-ours")
    topic = kafka_settings.connector_offsets
    commit_position(kafka_settings, writer, ours, Position(b"\x01", EVENT, 1000, "u1"))
    assert load_position(kafka_settings.bootstrap_servers, topic, ours) is not None
    writer.write([(topic, ours.key, None, [])])
    assert load_position(kafka_settings.bootstrap_servers, topic, ours) is None
    p2 = Position(b"\x02", EVENT, 2000, "u2")
    commit_position(kafka_settings, writer, ours, p2)  # a position after the reset counts
    assert load_position(kafka_settings.bootstrap_servers, topic, ours) == p2
