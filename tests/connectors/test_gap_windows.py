"""The windows a gap pass must cover, and the reads it must not plan from: a LATEST stream
opened again before any position was committed (what was published meanwhile is skipped),
a gap pass armed before the stream answered (a limit wait or a backoff counted as the replay
settling), and a topic read only in part (the Orders not read looked as if they had no
request). Fakes for Salesforce and Kafka, no broker."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka import TopicPartition

from common import reconcile as R
from common.avro import SerdeError, encode_schemaless, frame, load_schema
from common.errors import KafkaError, ReplayIdInvalidError, SalesforceLimitError
from common.settings import ConnectorSettings, KafkaSettings
from connectors import reconciler as rec
from connectors import source
from connectors.decode import KafkaRecord
from connectors.offsets import epoch_ms
from connectors.pubsub.client import StreamEnded
from connectors.source import Connector, StreamClosed
from tests.connectors.test_source_loop import REFUSED, FakeSubscription, Writes, make

OID = "801000000000001AAA"
QUIET = SimpleNamespace(events=[], latest_replay_id=b"", pending_num_requested=0)


def with_reconciler(conn: Connector) -> rec.Reconciler:
    conn.reconciler = rec.Reconciler(conn.kafka, conn.settings, sf=None,  # type: ignore[arg-type]
                                     worker_group="t.sfprov-worker", written=lambda: 0)
    return conn.reconciler


def gaps(conn: Connector) -> list[dict[str, Any]]:
    writes: Writes = conn.writer  # type: ignore[assignment]
    return [conn.codec.decode_gap(value, headers) for txn in writes.committed
            for topic, _key, value, headers in txn if topic == conn.kafka.replay_gaps]


def refused(conn: Connector) -> None:
    """The stored position refused by Salesforce: a gap recorded, the policy's preset armed."""
    conn._set_position(REFUSED)
    assert conn._replay_invalid(ReplayIdInvalidError(
        "replay id too old", error_code="replayid.corrupted")) is None


def open_stream(conn: Connector, *items: Any) -> float:
    """One subscription delivering ``items``; returns when it was asked for."""
    asked: list[float] = []

    def subscribe(_preset: str, _replay_id: bytes | None) -> FakeSubscription:
        asked.append(time.time())
        return FakeSubscription(list(items))
    conn.pubsub = SimpleNamespace(subscribe=subscribe)  # type: ignore[assignment]
    time.sleep(0.002)  # the clock moves between two subscriptions
    with pytest.raises((StreamClosed, KafkaError, SalesforceLimitError)):
        conn._subscribe_once(None, None)
    return asked[0]


# -- 1. a LATEST stream opened again before a position was committed ------------------

def test_a_latest_stream_ended_before_its_first_keepalive_records_a_gap_at_the_next():
    """SF_EVENTS_INVALID_REPLAY=LATEST; the first LATEST stream ends before any event or
    keepalive (the first keepalive may take 270 s). The next subscription is LATEST again:
    what was published meanwhile is skipped, so its opening is a gap, and the gap pass
    covers the Orders changed up to it — not only those changed before the first gap."""
    conn = make(invalid_replay="LATEST")
    r = with_reconciler(conn)
    counted = source.m.REPLAY_GAPS.labels("LATEST")._value.get()
    refused(conn)
    open_stream(conn, StreamEnded(StreamClosed("RST_STREAM")))
    assert len(gaps(conn)) == 1  # the first LATEST stream after the gap skips nothing
    assert source.m.REPLAY_GAPS.labels("LATEST")._value.get() == counted + 1
    second = open_stream(conn, QUIET, StreamEnded(StreamClosed("RST_STREAM")))
    assert r._gap_at is not None and r._gap_at >= second, (r._gap_at, second)
    first, again = gaps(conn)
    assert epoch_ms(again["detected_at"]) >= int(second * 1000)  # re-armed after a restart
    assert (again["policy"], again["error_code"]) == ("LATEST", "latest.resubscribed")
    assert again["last_good_replay_id"] == first["last_good_replay_id"] == REFUSED.replay_id
    # counted as a gap too: sfprov_connector_replay_gaps_total is what the alert watches
    assert source.m.REPLAY_GAPS.labels("LATEST")._value.get() == counted + 2


@pytest.mark.parametrize("start", ["fresh", "gap"])
def test_an_event_delivered_but_not_written_before_latest_again_is_a_gap(start):
    """A LATEST stream delivers E1, its batch's write fails retryably, no position was ever
    committed: the resubscribe is LATEST again and E1 is never delivered again. A fresh
    start's first stream records no gap (that is where LATEST starts); the next one does."""
    conn = make(invalid_replay="LATEST")
    r = with_reconciler(conn)
    if start == "gap":
        refused(conn)
    else:
        conn._mark_latest_opened()  # the fresh start's LATEST marker: the write below fails
    before = len(gaps(conn))
    e1 = KafkaRecord(OID.encode(), b"v", [], "uuid-1", b"\x09", OID)
    conn.writer.fail = [KafkaError("broker blip", retryable=True)]  # type: ignore[attr-defined]
    open_stream(conn, SimpleNamespace(events=[e1], latest_replay_id=b"\x09",
                                      pending_num_requested=99))
    assert len(gaps(conn)) == before
    second = open_stream(conn, QUIET, StreamEnded(None))
    assert len(gaps(conn)) == before + 1
    again = gaps(conn)[-1]
    assert epoch_ms(again["detected_at"]) >= int(second * 1000)
    assert again["last_good_replay_id"] == (None if start == "fresh" else REFUSED.replay_id)
    assert r._gap_at is not None and r._gap_at >= second, (r._gap_at, second)


# -- 3. the gap pass waits for the stream's first answer ------------------------------

def test_a_gap_pass_is_armed_when_the_stream_first_answers_not_when_the_gap_is_found():
    """EARLIEST after a gap, the first stream meets a delivery limit: armed at once, the
    limit wait counted as the replay settling and the pass re-requested Orders whose events
    Salesforce would still replay (two requests, two IdemKeys). Armed on the first answer,
    as a stored gap is at start-up, with the gap's own time as the pass's bound."""
    conn = make(invalid_replay="EARLIEST")
    r = with_reconciler(conn)
    refused(conn)
    assert r._gap_at is None, "armed before any stream answered"
    open_stream(conn, StreamEnded(SalesforceLimitError("delivery allocation exceeded")))
    assert r._gap_at is None, "armed before any stream answered"
    open_stream(conn, QUIET, StreamEnded(None))
    (gap,) = gaps(conn)  # EARLIEST replays: no gap for a stream opened again
    assert r._gap_at == pytest.approx(epoch_ms(gap["detected_at"]) / 1000, abs=0.002)


def test_a_gap_pass_is_armed_when_the_stream_stays_open_with_nothing_to_replay(monkeypatch):
    """EARLIEST after a gap with every event past retention: the stream has nothing to
    replay and answers only with its first keepalive, up to 270 s later. Open and unrefused
    for GAP_ARM_OPEN_S it was accepted (a refusal comes within moments): the pass is armed
    then, not minutes later — nor at once, before the stream was opened."""
    # 1 s: the first stream (0.1 s, returning after its 0.2-s read) must not reach it even
    # on a loaded box (with 0.3 s, a thread scheduled 110 ms late armed it there)
    monkeypatch.setattr(source, "GAP_ARM_OPEN_S", 1.0)
    conn = make(invalid_replay="EARLIEST")
    r = with_reconciler(conn)
    refused(conn)
    conn.pubsub = SimpleNamespace(  # type: ignore[assignment]
        subscribe=lambda _preset, _replay_id: FakeSubscription([]))
    started = time.monotonic()
    assert conn._subscribe_once(None, time.monotonic() + 0.1) is True
    assert r._gap_at is None, "armed before the stream had stayed open"
    assert conn._subscribe_once(None, time.monotonic() + 3.0) is True
    (gap,) = gaps(conn)
    assert r._gap_at == pytest.approx(epoch_ms(gap["detected_at"]) / 1000, abs=0.002)
    assert time.monotonic() - started < 3.0 + 5  # the two deadlines, and room: no hang


# -- 2. a topic read in part ----------------------------------------------------------

class Msg:
    def __init__(self, value: bytes) -> None:
        self._value = value

    def error(self) -> None:
        return None

    def key(self) -> bytes:
        return OID.encode()

    def value(self) -> bytes:
        return self._value

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return 0

    def headers(self) -> list[Any]:
        return []


class Consumer:
    """One partition, end offset 1: its record (``msg``) or, with none, nothing at all
    (a broker away); each consume moves ``clock`` by its timeout."""

    def __init__(self, msg: Msg | None, clock: list[float]) -> None:
        self.msg, self.clock, self.read = msg, clock, 0

    def offsets_for_times(self, tps: list[TopicPartition], timeout: float) -> list[Any]:
        return [TopicPartition(tp.topic, tp.partition, 0) for tp in tps]

    def assign(self, _tps: list[TopicPartition]) -> None:
        pass

    def consume(self, _n: int, timeout: float) -> list[Msg]:
        self.clock[0] += timeout
        msg, self.msg = self.msg, None
        self.read += msg is not None
        return [msg] if msg else []

    def position(self, tps: list[TopicPartition]) -> list[TopicPartition]:
        return [TopicPartition(tp.topic, tp.partition, self.read) for tp in tps]

    def close(self) -> None:
        pass


class Salesforce:
    """One Order Activating since an hour ago."""

    def count(self, _soql: str) -> int:
        return 1

    def query(self, _soql: str) -> list[dict[str, Any]]:
        changed = time.strftime("%Y-%m-%dT%H:%M:%S.000+0000", time.gmtime(time.time() - 3600))
        return [{"Id": OID, "OrderNumber": "00000001", "LastModifiedDate": changed}]


def request_value() -> bytes:
    """A request for OID in Confluent's format: decoding it asks the registry (id 7)."""
    return frame(7, encode_schemaless(load_schema("provision_request"), {
        "event_uuid": "u1", "replay_id": b"\x01", "schema_id": "s", "channel": "c",
        "received_at": 1_700_000_000_000, "CreatedDate": 1_700_000_000_000,
        "CreatedById": "x", "OrderId__c": OID, "IdemKey__c": "k1"}))


@pytest.mark.parametrize("away", ["registry", "broker"])
def test_a_pass_that_cannot_read_the_requests_whole_raises_instead_of_re_requesting(
        monkeypatch, away):
    """The request for OID is in Kafka, but the registry cannot be reached to decode it
    (retryable), or nothing arrives before the partition's end (a broker away): the read
    was partial, so the plan raises instead of listing OID as having no request — which
    the pass re-requested, spending one of its MAX_REREQUESTS. The connector's pass logs
    and counts the error and tries the gap again."""
    kafka = KafkaSettings.load({}, bootstrap_servers="127.0.0.1:9", topic_prefix="t.",
                               schema_registry_url="http://127.0.0.1:9")
    clock = [0.0]
    monkeypatch.setattr(R, "time", SimpleNamespace(time=time.time, monotonic=lambda: clock[0]))
    monkeypatch.setattr(R, "_consumer", lambda *_a, **_kw: Consumer(
        Msg(request_value()) if away == "registry" else None, clock))
    monkeypatch.setattr(R, "end_offsets", lambda _c, _topic: {0: (0, 1)})
    with pytest.raises((SerdeError, KafkaError)) as raised:
        plan = R.find_stranded(Salesforce(), kafka, older_than_s=0.0)
        pytest.fail(f"a partial read planned {plan}")
    assert raised.value.retryable
    if away == "broker":
        assert isinstance(raised.value, KafkaError) and "not read to their end" in \
            str(raised.value)

    r = rec.Reconciler(kafka, ConnectorSettings.load({}), sf=Salesforce(),
                       worker_group="t.sfprov-worker", written=lambda: 0)
    errors = rec.PASSES.labels("gap", "error")._value.get()
    gap_at = time.time()
    r._pass("gap", older_than_s=0.0, changed_before=gap_at)
    assert r._ready is None  # nothing re-requested
    assert r._gap_at == gap_at  # the gap's pass is tried again
    assert rec.PASSES.labels("gap", "error")._value.get() == errors + 1
