"""Where the connector's loop (:mod:`connectors.source`) resumes after a stream ends or a
commit cannot be completed, with fakes for Salesforce and Kafka (no broker).

* No usable committed position (none stored yet under ``SF_EVENTS_REPLAY=LATEST``, or a
  LATEST override after a replay gap): a keepalive's replay id held in memory is where the
  resubscribe starts, committed first; before, every resubscribe was LATEST again and what
  was published between the stream's end and the new subscription was skipped, no gap
  recorded (the first keepalive was only committed one ``SF_PUBSUB_KEEPALIVE_COMMIT_S``
  interval after the start).
* A ``commit_transaction`` that times out on every retry: librdkafka keeps it as the call
  in progress (an abort gets ``_CONFLICT``), so only a new producer goes on; before, the
  connector exited 1.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka import KafkaError as CKafkaError
from confluent_kafka import KafkaException

from common.errors import KafkaError, ProducerFailedError, ReplayIdInvalidError, SalesforceError
from connectors import source
from connectors import writer as writer_module
from connectors.decode import KafkaRecord
from connectors.offsets import EVENT, KEEPALIVE, Position
from connectors.pubsub.client import StreamEnded
from connectors.source import EXIT_OK, Connector
from connectors.writer import TransactionalWriter
from tests.connectors.test_source_loop import FakeSubscription, Writes, make

KEEPALIVE_ID = b"\x00\x42"
STORED = Position(b"\x00\x10", EVENT, 1_700_000_000_000, "u-a")


def keepalive(replay_id: bytes = KEEPALIVE_ID) -> Any:
    return SimpleNamespace(events=[], latest_replay_id=replay_id, pending_num_requested=100)


def events(*replay_ids: int) -> Any:
    return SimpleNamespace(events=[
        KafkaRecord(key=b"801", value=b"v", headers=[], event_uuid=f"u-{i}",
                    replay_id=bytes([i]), order_id="801") for i in replay_ids])


def ended() -> StreamEnded:
    return StreamEnded(SalesforceError("UNAVAILABLE: RST_STREAM", retryable=True))


def streams(conn: Connector, monkeypatch: pytest.MonkeyPatch, stored: Position | None,
            *scripted: list[Any]) -> list[tuple[str, bytes | None]]:
    """``stored`` is the position read at start (and after a reopen); each subscription
    delivers the next of ``scripted``, then quiet streams. Returns what each subscribed with."""
    monkeypatch.setattr(source, "load_position", lambda *_a, **_kw: stored)
    monkeypatch.setattr(source, "load_last_gap", lambda *_a, **_kw: None)
    # with no position, the LATEST marker as committed before (test_source_review3): the
    # transactions counted and failed here are the ones after it
    conn._latest_marked = True
    calls: list[tuple[str, bytes | None]] = []

    def subscribe(preset: str, replay_id: bytes | None) -> FakeSubscription:
        calls.append((preset, replay_id))
        n = len(calls) - 1
        return FakeSubscription(scripted[n] if n < len(scripted) else [])
    conn.pubsub = SimpleNamespace(subscribe=subscribe)  # type: ignore[assignment]
    return calls


def offsets_transactions(conn: Connector) -> int:
    writes: Writes = conn.writer  # type: ignore[assignment]
    return sum(1 for txn in writes.committed
               if [topic for topic, *_ in txn] == [conn.kafka.connector_offsets])


# -- defect 1: a keepalive held in memory, no usable committed position ------------------

@pytest.mark.parametrize("start", ["no-position", "latest-after-gap"])
def test_a_keepalive_held_when_the_stream_ended_is_where_the_resubscribe_starts(
        monkeypatch, start):
    """The keepalive and the stream's end arrive together (one poll takes both): the
    keepalive's replay id is committed before the resubscribe, which is CUSTOM after it —
    not LATEST again, which skipped whatever was published meanwhile."""
    conn = make(backoff_initial_s=0.01, backoff_max_s=0.02, replay="LATEST",
                invalid_replay="LATEST")
    if start == "no-position":
        calls = streams(conn, monkeypatch, None, [keepalive(), ended()])
        expected = [("LATEST", None)]
    else:  # the stored id is refused: a gap recorded, LATEST until a position is committed
        refused = StreamEnded(ReplayIdInvalidError("replay id too old",
                                                   error_code="replayid.corrupted"))
        calls = streams(conn, monkeypatch, STORED, [refused], [keepalive(), ended()])
        expected = [("CUSTOM", STORED.replay_id), ("LATEST", None)]
    assert conn.run(timeout_s=0.5) == EXIT_OK
    assert calls[:len(expected) + 1] == [*expected, ("CUSTOM", KEEPALIVE_ID)]
    assert conn.position is not None and conn.position.source == KEEPALIVE
    assert conn.position.replay_id == KEEPALIVE_ID and conn.preset_override is None
    assert offsets_transactions(conn) == 1  # durable: a restart resumes after it too


@pytest.mark.parametrize("stored", [None, STORED], ids=["no-position", "stored-position"])
def test_the_first_keepalive_is_committed_at_once_only_while_no_position_is_stored(
        monkeypatch, stored):
    """Without a stored position the first keepalive is committed at once (a restart, or a
    resubscribe, would otherwise fall back to the preset); with one, the throttle
    (SF_PUBSUB_KEEPALIVE_COMMIT_S, 60 s) still holds it back on a stream that stays open."""
    conn = make(replay="LATEST")
    streams(conn, monkeypatch, stored, [keepalive()])
    assert conn.run(timeout_s=0.5) == EXIT_OK
    if stored is None:
        assert offsets_transactions(conn) == 1
        assert conn.position is not None and conn.position.replay_id == KEEPALIVE_ID
    else:
        assert offsets_transactions(conn) == 0 and conn.position == stored


def test_a_keepalive_behind_unwritten_events_is_not_where_the_resubscribe_starts(
        monkeypatch):
    """One poll takes keepalive 0x0042, events 5-6 and keepalive 0x09; the events'
    transaction fails. 0x09 lies past unwritten events and is not used; 0x0042 is, so the
    resubscribe delivers 5-6 again (LATEST would have skipped them)."""
    conn = make(backoff_initial_s=0.01, backoff_max_s=0.02, replay="LATEST")
    calls = streams(conn, monkeypatch, None,
                    [keepalive(), events(5, 6), keepalive(b"\x09"), ended()],
                    [events(5, 6)])
    writes: Writes = conn.writer  # type: ignore[assignment]
    writes.fail = [KafkaError("requests partition: leader not available", retryable=True)]
    assert conn.run(timeout_s=0.5) == EXIT_OK
    assert calls[:2] == [("LATEST", None), ("CUSTOM", KEEPALIVE_ID)]
    assert conn.position is not None and conn.position.replay_id == b"\x06"
    assert conn.written == 2


# -- defect 2: a commit that timed out on every retry --------------------------------------

class TimingOutCommits:
    """A transactional producer; with ``commit_times_out`` every ``commit_transaction``
    times out (retriable: "retry call to resume") and, as in librdkafka, stays the call in
    progress, so ``abort_transaction`` is refused with ``_CONFLICT``."""

    def __init__(self, commit_times_out: bool) -> None:
        self.commit_times_out = commit_times_out
        self.inits = self.commits = self.aborts = 0
        self.produced: list[tuple[str, bytes]] = []
        self.committed: list[list[tuple[str, bytes]]] = []

    def init_transactions(self, _timeout: float) -> None:
        self.inits += 1

    def begin_transaction(self) -> None:
        self.produced = []

    def produce(self, topic: str, **kwargs: Any) -> None:
        self.produced.append((topic, kwargs["key"]))

    def commit_transaction(self, _timeout: float) -> None:
        self.commits += 1
        if self.commit_times_out:
            raise KafkaException(CKafkaError(
                CKafkaError._TIMED_OUT, "Timed out waiting for operation to finish, retry "
                "call to resume", retriable=True))
        self.committed.append(self.produced)

    def abort_transaction(self, _timeout: float) -> None:
        self.aborts += 1
        raise KafkaException(CKafkaError(
            CKafkaError._CONFLICT, "Conflicting commit_transaction API call is already in "
            "progress", retriable=True))

    def purge(self, **_kwargs: Any) -> None:
        pass

    def poll(self, _timeout: float) -> int:
        return 0

    def flush(self, _timeout: float) -> int:
        return 0


def test_a_commit_that_times_out_on_every_retry_asks_for_a_new_producer():
    from common.settings import KafkaSettings

    tw = TransactionalWriter(KafkaSettings.load({}), "tid")
    producer = TimingOutCommits(commit_times_out=True)
    tw._producer = producer  # type: ignore[assignment]
    with pytest.raises(ProducerFailedError, match="commit_transaction") as raised:
        tw.write([("t", b"k", b"v", [])])
    assert raised.value.retryable
    assert producer.commits == 5 and producer.aborts == 0  # an abort would be refused
    assert tw.transactions == 0


def test_the_connector_replaces_a_producer_whose_commit_timed_out_and_writes_the_batch_once(
        monkeypatch):
    """The first producer's commit times out on every retry: the connector goes on in
    process (not exit 1) — a new producer, init_transactions, the position read again (none:
    the batch did not commit), the batch fetched again and committed once by the new one."""
    producers = [TimingOutCommits(commit_times_out=True),
                 TimingOutCommits(commit_times_out=False)]
    created: list[TimingOutCommits] = []

    def new_producer(_config: dict[str, Any]) -> TimingOutCommits:
        created.append(producers[len(created)])
        return created[-1]
    conn = make(backoff_initial_s=0.01, backoff_max_s=0.02)
    monkeypatch.setattr(writer_module, "Producer", new_producer)
    conn.writer = TransactionalWriter(conn.kafka, "tid")
    calls = streams(conn, monkeypatch, None, [events(1)], [events(1)])
    assert conn.run(timeout_s=1.0) == EXIT_OK
    first, second = producers
    assert created == producers and first.commits == 5 and first.aborts == 0
    assert second.inits == 1  # the reopen's init_transactions settles the stuck commit
    # no position yet: the resubscribe is LATEST again, its opening a gap (Salesforce would
    # not deliver the batch again; the fake does)
    assert second.committed == [[(conn.kafka.replay_gaps, conn.codec.key)],
                                [(conn.kafka.requests, b"801"),
                                 (conn.kafka.connector_offsets, conn.codec.key)]]
    assert len(calls) >= 2 and conn.written == 1
    assert conn.position is not None and conn.position.replay_id == b"\x01"
    assert conn.health.cause == "producer_failed"
