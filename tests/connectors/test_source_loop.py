"""The connector's loop (:mod:`connectors.source`) with fakes for Salesforce and Kafka: what
it subscribes with after a reopen that follows a replay gap, how the reconciler's failed
write is retried, and what CONNECTOR_MAX_BATCH bounds."""

from __future__ import annotations

import queue
import time
from types import SimpleNamespace
from typing import Any

import pytest

from common.errors import (
    KafkaError,
    ReplayIdInvalidError,
    SalesforceError,
    TransactionTimedOutError,
)
from common.reconcile import Plan
from common.settings import ConnectorSettings, KafkaSettings
from connectors import reconciler as rec
from connectors import source
from connectors.decode import KafkaRecord
from connectors.offsets import EVENT, KEEPALIVE, Position
from connectors.pubsub.client import StreamEnded
from connectors.source import EXIT_OK, Connector, StreamClosed


class Writes:
    """The connector's transactional writer: each write one transaction, kept in
    ``committed`` unless ``fail`` (a list of exceptions) has one left to raise for it."""

    def __init__(self) -> None:
        self.committed: list[list[tuple[str, bytes, bytes, Any]]] = []
        self.fail: list[Exception] = []
        self.attempts = 0
        self.reopened = 0

    def start(self) -> None:
        pass

    def reopen(self) -> None:
        self.reopened += 1

    def write(self, records: list[Any]) -> None:
        self.attempts += 1
        if self.fail:
            raise self.fail.pop(0)
        self.committed.append(list(records))

    def close(self) -> None:
        pass


def make(**settings: Any) -> Connector:
    kafka = KafkaSettings.load({}, bootstrap_servers="127.0.0.1:9", topic_prefix="t.")
    conn = Connector(kafka=kafka, salesforce=None,  # type: ignore[arg-type]
                     connector=ConnectorSettings.load({}, name="loop-test", **settings),
                     auth=object(), pubsub=SimpleNamespace(get_schema=lambda _sid: None))
    conn.writer.close()
    conn.writer = Writes()  # type: ignore[assignment]
    conn.decoder = SimpleNamespace(build=lambda ev: ev)  # type: ignore[assignment]
    return conn


class Subscribed(Exception):
    """Raised by the fake subscribe: the test has seen what it was called with."""


def subscribed_with(conn: Connector) -> tuple[str, bytes | None]:
    calls: list[tuple[str, bytes | None]] = []

    def subscribe(preset: str, replay_id: bytes | None) -> Any:
        calls.append((preset, replay_id))
        raise Subscribed
    conn.pubsub = SimpleNamespace(subscribe=subscribe)  # type: ignore[assignment]
    with pytest.raises(Subscribed):
        conn._subscribe_once(None, None)
    return calls[0]


# -- a reopen after a replay gap -----------------------------------------------------

REFUSED = Position(b"\x00\x10", EVENT, 1_700_000_000_000, "u-a")   # A's, too old for Salesforce
PAST_GAP = Position(b"\x05\x00", KEEPALIVE, 1_700_000_900_000)      # B's, after the gap


def gap_then_reopen(monkeypatch: pytest.MonkeyPatch, policy: str,
                    reloaded: Position) -> Connector:
    """Instance A: its stored position refused (a gap recorded, ``policy`` armed), then
    paused past its transaction timeout; on resuming, a reopen reads ``reloaded``."""
    conn = make(invalid_replay=policy)
    conn._set_position(REFUSED)
    assert conn._replay_invalid(ReplayIdInvalidError("replay id too old",
                                                     error_code="replayid.corrupted")) is None
    assert conn.preset_override == policy
    assert conn.writer.committed[-1][0][0] == conn.kafka.replay_gaps  # type: ignore[attr-defined]
    assert subscribed_with(conn) == (policy, None)  # the refused id is not tried again
    # the next write meets the broker's abort of the paused transaction
    conn._reopen_pending = True
    monkeypatch.setattr(source, "load_position", lambda *_a, **_kw: reloaded)
    conn._reopen()
    assert conn.writer.reopened == 1 and conn.position == reloaded  # type: ignore[attr-defined]
    return conn


@pytest.mark.parametrize("policy", ["EARLIEST", "LATEST"])
def test_a_reopen_resumes_after_a_position_committed_past_the_gap(monkeypatch, policy):
    """B met the same gap while A was paused and committed PAST_GAP. A kept its preset:
    EARLIEST wrote every retained event a second time, LATEST skipped those after PAST_GAP."""
    conn = gap_then_reopen(monkeypatch, policy, PAST_GAP)
    assert subscribed_with(conn) == ("CUSTOM", PAST_GAP.replay_id)
    assert conn.preset_override is None


@pytest.mark.parametrize("policy", ["EARLIEST", "LATEST"])
def test_a_reopen_reading_the_refused_position_again_keeps_the_preset(monkeypatch, policy):
    """Nobody committed meanwhile: the stored id is still the refused one, never retried."""
    conn = gap_then_reopen(monkeypatch, policy, REFUSED)
    assert subscribed_with(conn) == (policy, None)


# -- the reconciler's failed write, through the connector's loop ---------------------

class FakeSubscription:
    def __init__(self, items: list[Any] = ()) -> None:  # type: ignore[assignment]
        self.responses: queue.Queue[Any] = queue.Queue()
        for item in items:
            self.responses.put(item)
        self.flow = SimpleNamespace(buffered=0)

    def connected(self) -> bool:
        return True  # its channel connected (the 5-s-open rule asks)

    def consumed(self, _n: int) -> None:
        pass

    def cancel(self) -> None:
        pass


def quiet_stream(conn: Connector, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """No stored position or gap; every subscription opens on a quiet channel."""
    monkeypatch.setattr(source, "load_position", lambda *_a, **_kw: None)
    monkeypatch.setattr(source, "load_last_gap", lambda *_a, **_kw: None)
    presets: list[str] = []

    def subscribe(preset: str, _replay_id: bytes | None) -> FakeSubscription:
        presets.append(preset)
        return FakeSubscription()
    conn.pubsub = SimpleNamespace(subscribe=subscribe)  # type: ignore[assignment]
    return presets


@pytest.mark.parametrize("error", [
    KafkaError("requests partition: leader not available", retryable=True),
    TransactionTimedOutError("fenced after 61 s", age_s=61.0, timeout_s=60.0)])
def test_a_reconciler_write_that_failed_is_written_once_after_the_resubscribe(
        monkeypatch, error):
    """The loop resubscribes after the error (a new producer after a timed-out transaction)
    and writes the plan in the next turn's transaction, once: with
    CONNECTOR_RECONCILE_INTERVAL_S=0 nothing else would re-request these Orders."""
    conn = make(backoff_initial_s=0.01, backoff_max_s=0.02, reconcile_interval_s=0.0)
    presets = quiet_stream(conn, monkeypatch)
    monkeypatch.setattr(rec, "find_stranded", lambda *a, **kw: Plan(
        no_request=["801000000000001AAA"], candidates={"801000000000001AAA": {}}))
    conn.reconciler = rec.Reconciler(conn.kafka, conn.settings, sf=None,  # type: ignore[arg-type]
                                     worker_group="t.sfprov-worker", written=lambda: 0)
    conn.reconciler._pass("gap", older_than_s=0.0, changed_before=0.0)
    writes: Writes = conn.writer  # type: ignore[assignment]
    conn._mark_latest_opened()  # the fresh start's LATEST marker, before its first stream
    writes.fail = [error]
    assert conn.run(timeout_s=1.0) == EXIT_OK
    # failed; resubscribed (LATEST again with no position: a gap recorded); written
    assert writes.attempts == 4 and len(presets) == 2
    assert [txn[0][0] for txn in writes.committed] == [conn.kafka.connector_offsets,
                                                       conn.kafka.replay_gaps,
                                                       conn.kafka.requests]
    assert writes.reopened == (1 if isinstance(error, TransactionTimedOutError) else 0)
    requests = [r for txn in writes.committed for r in txn if r[0] == conn.kafka.requests]
    assert [key for _t, key, _v, _h in requests] == [b"801000000000001AAA"]


# -- what CONNECTOR_MAX_BATCH bounds ---------------------------------------------------------

def test_max_batch_ends_a_transaction_but_never_splits_a_response_as_documented():
    """The loop takes whole FetchResponses (each ≤ 100 events) until the batch holds
    CONNECTOR_MAX_BATCH events, so a transaction can hold up to 99 more. Capping
    num_requested would not bound it (responses add up) unless credit were held back to
    what is left of the batch — throttling flow control — so the description says what it
    is instead of "most events written in one transaction"."""
    from common.settings import all_variables

    conn = make(max_batch=150)
    serial = iter(range(1, 10_000))

    def response(n: int) -> Any:
        return SimpleNamespace(events=[
            KafkaRecord(key=b"801", value=b"v", headers=[], event_uuid=f"u-{i}",
                        replay_id=i.to_bytes(4, "big"), order_id="801")
            for i in (next(serial) for _ in range(n))])
    sub = FakeSubscription([response(100), response(100), response(100), StreamEnded(None)])
    with pytest.raises(StreamClosed):
        conn._consume(sub, None, None)  # type: ignore[arg-type]
    writes: Writes = conn.writer  # type: ignore[assignment]
    sizes = [sum(1 for r in txn if r[0] == conn.kafka.requests) for txn in writes.committed]
    assert sizes == [200, 100] and conn.written == 300
    assert all(n <= conn.settings.max_batch + 99 for n in sizes)
    doc = next(row[1] for row in all_variables() if row[0] == "CONNECTOR_MAX_BATCH")
    assert "never split" in doc and "up to 99 more" in doc, doc
    assert not doc.startswith("Most events"), doc


# -- a LATEST gap's pass covers what was published until the LATEST stream was accepted -----

KEEPALIVE_ANSWER = SimpleNamespace(events=[], latest_replay_id=b"\x09", pending_num_requested=100)


class SlowWrites(Writes):
    """A broker that takes ``delay_s`` to commit each transaction (acks=all, a slow ISR)."""

    def __init__(self, delay_s: float) -> None:
        super().__init__()
        self.delay_s = delay_s

    def write(self, records: list[Any]) -> None:
        time.sleep(self.delay_s)
        super().write(records)


class GapPasses:
    """The reconciler, as the loop sees it: the gap passes it is asked to plan."""

    def __init__(self) -> None:
        self.armed: list[float | None] = []

    def gap_recorded(self, at: float | None = None) -> None:
        self.armed.append(at)

    def write_due(self, _write: Any) -> int:
        return 0


@pytest.mark.parametrize("accepted", ["answers", "stays_open"])
def test_a_latest_gaps_pass_covers_what_was_published_before_the_stream_was_accepted(
        monkeypatch, accepted):
    """SF_EVENTS_INVALID_REPLAY=LATEST: the gap record takes 0.2 s to commit, then the
    LATEST stream opens. An Order approved in between was delivered by no stream (LATEST
    starts where Salesforce handles the stream's first request); bounded at the gap's
    detection its pass excluded that Order, left Activating until a periodic pass — for
    ever with CONNECTOR_RECONCILE_INTERVAL_S=0."""
    monkeypatch.setattr(source, "GAP_ARM_OPEN_S", 0.3)
    conn = make(invalid_replay="LATEST")
    conn.writer = SlowWrites(0.2)  # type: ignore[assignment]
    passes = conn.reconciler = GapPasses()
    conn._set_position(REFUSED)
    detected = time.time()
    assert conn._replay_invalid(ReplayIdInvalidError(
        "replay id too old", error_code="replayid.corrupted")) is None
    opened: list[float] = []

    def subscribe(preset: str, _replay_id: bytes | None) -> FakeSubscription:
        opened.append(time.time())
        assert preset == "LATEST"
        return FakeSubscription([KEEPALIVE_ANSWER] if accepted == "answers" else [])
    conn.pubsub = SimpleNamespace(subscribe=subscribe)  # type: ignore[assignment]
    assert conn._subscribe_once(None, time.monotonic() + 1.0) is True
    assert len(passes.armed) == 1, passes.armed
    at = passes.armed[0]
    assert at is not None and at >= opened[0], \
        f"gap pass bounded at {at - detected:.3f}s after detection, before the LATEST " \
        f"stream was opened ({opened[0] - detected:.3f}s)"


def test_a_latest_gaps_pass_covers_a_failed_open_and_its_backoff(monkeypatch):
    """After the gap, the first LATEST subscribe fails before any stream exists (a token
    fetch during a Salesforce login outage); the retry after the backoff opens LATEST.
    Events published during the backoff were skipped by every stream: the gap's pass must
    cover the Orders changed until the stream that opened was accepted."""
    conn = make(invalid_replay="LATEST", backoff_initial_s=0.3, backoff_max_s=0.3)
    passes = conn.reconciler = GapPasses()
    monkeypatch.setattr(source, "load_position", lambda *_a, **_kw: REFUSED)
    monkeypatch.setattr(source, "load_last_gap", lambda *_a, **_kw: None)
    calls: list[tuple[str, float]] = []

    def subscribe(preset: str, _replay_id: bytes | None) -> FakeSubscription:
        calls.append((preset, time.time()))
        if preset == "CUSTOM":
            raise ReplayIdInvalidError("replay id too old", error_code="replayid.corrupted")
        if len(calls) == 2:
            raise SalesforceError("token endpoint unavailable", retryable=True)
        return FakeSubscription([KEEPALIVE_ANSWER])
    conn.pubsub = SimpleNamespace(subscribe=subscribe)  # type: ignore[assignment]
    assert conn.run(timeout_s=1.2) == EXIT_OK
    assert [p for p, _t in calls] == ["CUSTOM", "LATEST", "LATEST"]
    writes: Writes = conn.writer  # type: ignore[assignment]
    gaps = [conn.codec.decode_gap(v, h) for txn in writes.committed
            for topic, _k, v, h in txn if topic == conn.kafka.replay_gaps]
    assert [g["error_code"] for g in gaps] == ["replayid.corrupted"]  # one gap, one record
    assert len(passes.armed) == 1, passes.armed
    at, opened = passes.armed[0], calls[-1][1]
    assert at is not None and at >= opened, \
        f"gap pass bounded {opened - at:.3f}s before the LATEST stream that opened"


# -- /livez while the Kafka work before a subscription lasts ---------------------------


def test_livez_keeps_a_connector_writing_before_its_subscription_alive(monkeypatch):
    """A backoff over, the connector commits the keepalive position its last stream held
    (the brokers cut: about 85 s) before it subscribes. /livez counted that as the backoff
    having ended long ago — "main loop wedged" — and a liveness probe restarted it mid-write
    (connector review). It is timed from the work's start now: alive for RESUBSCRIBE_MAX_S."""
    from connectors.observability import live

    conn = make()
    now = [1000.0]
    monkeypatch.setattr(source.time, "monotonic", lambda: now[0])
    monkeypatch.setattr("connectors.observability.time.monotonic", lambda: now[0])
    conn.health.state, conn.health.waiting_until = "backoff", now[0]
    conn._keepalive_candidate = b"\x07"  # held by the stream that ended; no position stored
    seen: list[tuple[bool, dict[str, Any]]] = []

    class SlowWrite(Writes):
        def write(self, records: list[Any]) -> None:
            now[0] += 90.0  # init, produce and commit timing out against cut brokers
            seen.append(live(conn))
            super().write(records)
    conn.writer = SlowWrite()  # type: ignore[assignment]
    assert subscribed_with(conn)[0] == "CUSTOM"  # resumed after the keepalive it committed
    assert seen and seen[0][0], seen
    now[0] += 300.0  # the same work still going after RESUBSCRIBE_MAX_S: wedged
    conn.health.state = "resubscribing"
    ok, details = live(conn)
    assert not ok and "resubscribing for 390 s" in details["reason"]
