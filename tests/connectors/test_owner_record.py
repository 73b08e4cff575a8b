"""The owner record (:mod:`connectors.offsets`) and what a young fence makes of it, without a
broker: its key and value, the readers of the position that must not take it for one, the
writer committing it after every ``init_transactions``, and the connector's decision — the
last owner record its own → its own transaction timed out while its clocks stood still (a
frozen VM), the stream taken back; another instance's, none, or unreadable → exit 3."""

from __future__ import annotations

import os
import socket
import uuid
from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka import KafkaError as CKafkaError
from confluent_kafka import KafkaException

from common.errors import KafkaError, ProducerFencedError, TransactionTimedOutError
from connectors import metrics as m
from connectors import offsets, source
from connectors import writer as writer_module
from connectors.decode import KafkaRecord
from connectors.offsets import (
    EVENT,
    INSTANCE,
    KEEPALIVE,
    LatestOpened,
    OffsetCodec,
    Owner,
    Position,
    load_owner,
    load_position,
)
from connectors.pubsub.client import StreamEnded
from connectors.source import EXIT_FENCED, EXIT_OK
from connectors.writer import TransactionalWriter
from tests.connectors.test_source_loop import FakeSubscription, Writes, make
from tests.connectors.test_source_resume import TimingOutCommits

CODEC = OffsetCodec("owner-test", "/event/Owner__e")

# -- the record ------------------------------------------------------------------------------


def test_the_owner_record_names_this_process_under_a_key_of_its_own():
    assert CODEC.owner_key == b"owner-test|/event/Owner__e|owner"
    assert len({CODEC.key, CODEC.latest_opened_key, CODEC.owner_key}) == 3
    instance, host, pid_word, pid = INSTANCE.split(" ")
    assert uuid.UUID(instance).version == 4
    assert (host, pid_word, pid) == (socket.gethostname(), "pid", str(os.getpid()))
    value, headers = CODEC.owner_value(INSTANCE, 1_700_000_000_123)
    assert CODEC.decode_owner(value, headers) == Owner(INSTANCE, 1_700_000_000_123)
    # the offsets schema, as every record of that topic: ops' "offsets" view decodes it
    assert headers == CODEC.position_value(Position(b"\x01", EVENT, 0))[1]
    assert CODEC.decode_position(value, headers) == Position(b"", KEEPALIVE, 1_700_000_000_123,
                                                             INSTANCE)


class _Message:
    def __init__(self, key: bytes | None, value: bytes | None, headers: Any,
                 offset: int, eof: bool = False) -> None:
        self._key, self._value, self._headers, self._offset = key, value, headers, offset
        self._eof = eof

    def error(self) -> Any:
        return CKafkaError(CKafkaError._PARTITION_EOF) if self._eof else None

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value

    def headers(self) -> Any:
        return self._headers

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset


def _topic_holding(monkeypatch: pytest.MonkeyPatch, records: list[tuple[bytes, Any]]) -> None:
    """The offsets topic (one partition) holding ``records`` (key, (value, headers)), all
    committed, for the real :func:`offsets._last_values`."""
    log = [_Message(k, v, h, i) for i, (k, (v, h)) in enumerate(records)]
    log.append(_Message(None, None, None, len(records), eof=True))

    class Consumer:
        def __init__(self, _config: Any) -> None:
            self.read = 0

        def list_topics(self, topic: str, timeout: float) -> Any:
            return SimpleNamespace(topics={topic: SimpleNamespace(partitions={0: None},
                                                                  error=None)})

        def assign(self, _tps: Any) -> None:
            pass

        def poll(self, _timeout: float) -> Any:
            self.read += 1
            return log[self.read - 1] if self.read <= len(log) else None

        def position(self, tps: Any) -> Any:
            return [SimpleNamespace(partition=0, offset=min(self.read, len(records)))
                    for _tp in tps]

        def close(self) -> None:
            pass
    monkeypatch.setattr(offsets, "Consumer", Consumer)
    monkeypatch.setattr(offsets, "AdminClient", lambda _config: None)
    monkeypatch.setattr(offsets, "_log_ends", lambda *_a: {0: len(records)})


def test_readers_of_the_position_and_the_marker_pass_over_the_owner_record(monkeypatch):
    """Read by their keys: an owner record committed after them (every init writes one)
    is neither the position nor the LATEST marker, and the owner is read by its own."""
    position = Position(b"\x07", EVENT, 1_700_000_000_000, "u-7")
    marker = CODEC.latest_opened_value(1_600_000_000_000)
    _topic_holding(monkeypatch, [(CODEC.latest_opened_key, marker),
                                 (CODEC.key, CODEC.position_value(position)),
                                 (CODEC.owner_key, CODEC.owner_value("other", 1)),
                                 (CODEC.owner_key, CODEC.owner_value(INSTANCE, 2))])
    opened = LatestOpened()
    assert load_position("unused:9", "offsets", CODEC, latest_opened=opened) == position
    assert opened.at_ms == 1_600_000_000_000
    assert load_position("unused:9", "offsets", CODEC) == position
    assert load_owner("unused:9", "offsets", CODEC) == Owner(INSTANCE, 2)


def test_no_owner_record_stored_is_none(monkeypatch):
    _topic_holding(monkeypatch, [(CODEC.key, CODEC.position_value(Position(b"\x01", EVENT, 0)))])
    assert load_owner("unused:9", "offsets", CODEC) is None


# -- the writer: an owner record after every init_transactions --------------------------------

class _Calls(TimingOutCommits):
    """A transactional producer recording the calls (and what each commit held)."""

    def __init__(self) -> None:
        super().__init__(commit_times_out=False)
        self.calls: list[str] = []

    def init_transactions(self, timeout: float) -> None:
        self.calls.append("init")
        super().init_transactions(timeout)

    def commit_transaction(self, timeout: float) -> None:
        self.calls.append("commit")
        super().commit_transaction(timeout)


def _recording_producers(monkeypatch: pytest.MonkeyPatch) -> list[_Calls]:
    """Every producer a writer makes from now on, each recording its calls, in order."""
    producers: list[_Calls] = []

    def new_producer(_config: Any) -> _Calls:
        producers.append(_Calls())
        return producers[-1]
    monkeypatch.setattr(writer_module, "Producer", new_producer)
    return producers


def test_start_and_reopen_commit_the_owner_record_after_init_transactions(monkeypatch):
    producers = _recording_producers(monkeypatch)
    claims: list[int] = []

    def owner() -> writer_module.Record:
        claims.append(len(producers))
        return ("offsets", CODEC.owner_key, b"v", [])
    tw = TransactionalWriter(SimpleNamespace(), "tid", owner=owner)  # type: ignore[arg-type]
    tw.start()
    tw.reopen()
    assert claims == [1, 2]  # made fresh for each claim: its time is the claim's
    for producer in producers:
        assert producer.calls == ["init", "commit"]
        assert producer.committed == [[("offsets", CODEC.owner_key)]]
    # without ``owner`` (a writer of its own: tests, tools) nothing more than the init
    bare = TransactionalWriter(SimpleNamespace(), "tid")  # type: ignore[arg-type]
    bare.start()
    assert producers[-1].calls == ["init"] and not producers[-1].committed


def test_the_connector_reads_its_position_only_after_its_owner_record_committed(monkeypatch):
    """And the owner record does not move the in-memory position."""
    producers = _recording_producers(monkeypatch)
    conn = make()
    conn.writer = TransactionalWriter(conn.kafka, "tid", owner=conn._owner_record)
    stored = Position(b"\x05", EVENT, 1_700_000_000_000, "u-5")
    seen: list[Any] = []

    def load(*_a: Any, **_kw: Any) -> Position:
        seen.append(list(producers[-1].committed))
        return stored
    monkeypatch.setattr(source, "load_position", load)
    conn._reopen_pending = True
    conn._reopen()
    assert seen == [[[(conn.kafka.connector_offsets, conn.codec.owner_key)]]]
    assert conn.position == stored and not conn._reopen_pending


# -- the decision -------------------------------------------------------------------------------

def _stored_owner(monkeypatch: pytest.MonkeyPatch, stored: Owner | Exception | None) -> list[int]:
    reads: list[int] = []

    def load(*_a: Any, **_kw: Any) -> Owner | None:
        reads.append(1)
        if isinstance(stored, Exception):
            raise stored
        return stored
    monkeypatch.setattr(offsets, "load_owner", load)
    return reads


YOUNG = ProducerFencedError("fenced: another connector instance with transactional.id 'x' "
                            "took over (Failed to end transaction: Local: This instance has "
                            "been fenced by a newer instance)")


@pytest.mark.parametrize("stored, code", [
    (Owner(INSTANCE, 1_700_000_000_000), None),
    (Owner("3b7e… other-host pid 7", 1_700_000_000_000), EXIT_FENCED),
    (None, EXIT_FENCED),
    (KafkaError("timed out reading the offsets topic to its end", retryable=True), EXIT_FENCED),
], ids=["mine", "another-instance", "none", "read-failed"])
def test_a_young_fence_is_taken_back_only_when_the_last_owner_record_is_this_instance(
        monkeypatch, stored, code):
    conn = make(backoff_initial_s=0.01, backoff_max_s=0.02)
    reads = _stored_owner(monkeypatch, stored)
    timeouts = m.TXN_TIMEOUTS._value.get()
    assert conn._on_fenced(YOUNG) == code
    assert reads == [1]
    if code is None:   # its own transaction, timed out unseen: as a TransactionTimedOutError
        assert conn._reopen_pending and conn.health.cause == "txn_timeout"
        assert m.TXN_TIMEOUTS._value.get() == timeouts + 1
    else:
        assert not conn._reopen_pending and conn.health.state == "fenced"
        assert m.TXN_TIMEOUTS._value.get() == timeouts


def test_an_old_fence_is_a_timeout_without_reading_the_owner(monkeypatch):
    conn = make(backoff_initial_s=0.01, backoff_max_s=0.02)
    reads = _stored_owner(monkeypatch, None)
    old = TransactionTimedOutError("fenced after 61 s", age_s=61.0, timeout_s=60.0)
    assert conn._on_fenced(old) is None and conn._reopen_pending and reads == []


def test_a_stop_during_the_backoff_is_a_fence_without_reading(monkeypatch):
    conn = make(backoff_initial_s=5.0, backoff_max_s=5.0)
    reads = _stored_owner(monkeypatch, Owner(INSTANCE, 1))
    conn.request_stop()
    assert conn._on_fenced(YOUNG) == EXIT_FENCED and reads == []


def test_a_fence_at_start_up_exits_3_without_reading_the_owner(monkeypatch):
    conn = make()
    reads = _stored_owner(monkeypatch, Owner(INSTANCE, 1))
    writes: Writes = conn.writer  # type: ignore[assignment]
    writes.start = lambda: (_ for _ in ()).throw(YOUNG)  # type: ignore[method-assign]
    assert conn.run(timeout_s=1.0) == EXIT_FENCED and reads == []


def test_the_connector_frozen_in_a_transaction_takes_the_stream_back_and_writes_it_once(
        monkeypatch):
    """Through the loop: the batch's transaction fenced young (the broker timed it out
    while the clocks stood still), the last owner record its own → a new producer, the
    position read again, the batch fetched again and committed once; no exit."""
    conn = make(backoff_initial_s=0.01, backoff_max_s=0.02)
    _stored_owner(monkeypatch, Owner(INSTANCE, 1_700_000_000_000))
    stored = Position(b"\x00", EVENT, 1_700_000_000_000, "u-0")
    monkeypatch.setattr(source, "load_position", lambda *_a, **_kw: stored)
    monkeypatch.setattr(source, "load_last_gap", lambda *_a, **_kw: None)
    writes: Writes = conn.writer  # type: ignore[assignment]
    writes.fail = [YOUNG]
    events = [KafkaRecord(key=b"801", value=b"v", headers=[], event_uuid=f"u-{i}",
                          replay_id=bytes([i]), order_id="801") for i in (1, 2)]
    subscribed: list[tuple[str, bytes | None]] = []

    def subscribe(preset: str, replay_id: bytes | None) -> FakeSubscription:
        subscribed.append((preset, replay_id))
        if len(subscribed) > 2:
            conn.request_stop()
            return FakeSubscription()
        return FakeSubscription([SimpleNamespace(events=events), StreamEnded(None)])
    conn.pubsub = SimpleNamespace(subscribe=subscribe)  # type: ignore[assignment]
    assert conn.run(timeout_s=30.0) == EXIT_OK
    assert writes.reopened == 1
    assert subscribed[:2] == [("CUSTOM", b"\x00"), ("CUSTOM", b"\x00")]
    requests = [key for txn in writes.committed for _t, key, _v, _h in txn
                if _t == conn.kafka.requests]
    assert requests == [b"801", b"801"]  # the batch's two events, once
    assert conn.position is not None and conn.position.replay_id == b"\x02"


def test_an_owner_transaction_timed_out_at_start_up_is_taken_back_not_exit_3(monkeypatch):
    """The first producer's owner transaction waited 75 s (the process paused, or the
    coordinator away) and the broker aborted it for its age (60 s): a timeout of its own,
    as in the loop — exit 3 blamed a newer instance that did not exist, never restarted."""
    clock = [1000.0]
    monkeypatch.setattr(writer_module, "lease_clock", lambda: clock[0])
    producers: list[_Calls] = []

    class Stalled(_Calls):
        def commit_transaction(self, timeout: float) -> None:
            clock[0] += 75.0
            raise KafkaException(CKafkaError(CKafkaError._FENCED, "This instance has been "
                                             "fenced by a newer instance", fatal=True))

        def abort_transaction(self, timeout: float) -> None:
            raise KafkaException(CKafkaError(CKafkaError._FENCED, "fenced", fatal=True))

    def new_producer(_config: Any) -> _Calls:
        producers.append(Stalled() if not producers else _Calls())
        return producers[-1]
    conn = make(backoff_initial_s=0.01, backoff_max_s=0.02)
    monkeypatch.setattr(writer_module, "Producer", new_producer)
    stored = Position(b"\x05", EVENT, 1_700_000_000_000, "u-5")
    monkeypatch.setattr(source, "load_position", lambda *_a, **_kw: stored)
    monkeypatch.setattr(source, "load_last_gap", lambda *_a, **_kw: None)

    def subscribe(preset: str, replay_id: bytes | None) -> FakeSubscription:
        conn.request_stop()  # started: that is all this test asks
        return FakeSubscription()
    conn.pubsub = SimpleNamespace(subscribe=subscribe)  # type: ignore[assignment]
    conn.writer = TransactionalWriter(conn.kafka, "tid", transaction_timeout_s=60.0,
                                      owner=conn._owner_record)
    timeouts = m.TXN_TIMEOUTS._value.get()
    assert conn.run(timeout_s=10.0) == EXIT_OK
    assert len(producers) == 2 and producers[1].calls[:2] == ["init", "commit"]
    assert producers[1].committed[0] == [(conn.kafka.connector_offsets, conn.codec.owner_key)]
    assert m.TXN_TIMEOUTS._value.get() == timeouts + 1


def test_a_start_up_backing_off_after_a_failed_owner_transaction_says_so_on_readyz(
        monkeypatch):
    """It said 'starting' with the Kafka check passing and no error, for as long as the new
    producers kept failing: only the log told."""
    from common.errors import ProducerFailedError
    from connectors.observability import ready
    conn = make(backoff_initial_s=5.0, backoff_max_s=5.0)
    writes: Writes = conn.writer  # type: ignore[assignment]
    failure = ProducerFailedError("transaction: the producer failed: Broker: invalid state")
    writes.start = lambda: (_ for _ in ()).throw(failure)  # type: ignore[method-assign]
    seen: list[tuple[bool, dict[str, Any]]] = []

    def wait(_timeout: float | None = None) -> bool:
        seen.append(ready(conn))
        return True  # then stopped
    monkeypatch.setattr(conn._stop, "wait", wait)
    assert conn.run(timeout_s=10.0) == EXIT_OK
    ok, details = seen[0]
    assert not ok and details["checks"]["kafka"] is False, details
    assert "invalid state" in str(details)


def test_a_start_up_retry_is_live_while_its_new_producer_starts_and_clean_once_started(
        monkeypatch):
    """After a failed owner transaction the state stayed 'backoff' through the new
    producer's start (its init and owner record: minutes with the brokers cut), which
    /livez reads as a loop wedged once 60 s past the backoff; and once started, /readyz
    still blamed Kafka with the old error until the first stream was accepted."""
    import time

    from common.errors import ProducerFailedError
    from connectors import observability
    from connectors.observability import live, ready
    conn = make(backoff_initial_s=0.01, backoff_max_s=0.02)
    writes: Writes = conn.writer  # type: ignore[assignment]
    failure = ProducerFailedError("transaction: the producer failed: Broker: invalid state")
    writes.start = lambda: (_ for _ in ()).throw(failure)  # type: ignore[method-assign]
    seen: dict[str, Any] = {}
    real = time.monotonic

    def reopen() -> None:  # the new producer's init and owner record take 90 s
        monkeypatch.setattr(observability, "time", SimpleNamespace(monotonic=lambda: real() + 90))
        seen["live"] = live(conn)
        monkeypatch.setattr(observability, "time", time)
    writes.reopen = reopen  # type: ignore[method-assign]
    monkeypatch.setattr(source, "load_position", lambda *_a, **_kw: Position(
        b"\x05", EVENT, 1_700_000_000_000, "u-5"))
    monkeypatch.setattr(source, "load_last_gap", lambda *_a, **_kw: None)

    class Sub(FakeSubscription):
        def connected(self) -> bool:
            seen.setdefault("ready", ready(conn))
            conn.request_stop()
            return False
    conn.pubsub = SimpleNamespace(subscribe=lambda p, r: Sub())  # type: ignore[assignment]
    assert conn.run(timeout_s=10.0) == EXIT_OK
    assert seen["live"][0], seen["live"]
    ok, details = seen["ready"]
    assert details["checks"]["kafka"] is True and "invalid state" not in str(details), details
