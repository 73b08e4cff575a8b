"""Review 3 of the connector (pure: fakes for Pub/Sub and Kafka, no broker).

* Start-up readiness: until a stream has been accepted once, an attempt that ended in an
  error is not ready **at once** (a wrong ``SF_PUBSUB_ENDPOINT``, an outage, a TLS
  mismatch, Kafka away) — it answered 200 from the first error, ``make up`` printed
  "connector healthy", and turned 503 sixty seconds later having never subscribed. The
  60-s grace applies only after the first acceptance.
* A LATEST stream opened with no stored position is remembered in Kafka (a marker in the
  connector-offsets topic, committed in the connector's transaction before the stream
  opens): a successor that finds it and still no position records the
  ``latest.resubscribed`` gap — what its predecessor received was never written (SIGKILL,
  exit 64 on a missing ACL) — instead of starting afresh and losing those events silently.
* An unreachable schema registry is named ``schema_registry`` on /readyz (it was
  ``salesforce``), its reconnect cause primed.
* ``sfprov_connector_buffered_events`` follows the flow after a batch is written.
"""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
import requests
from prometheus_client import REGISTRY

from common.avro import SerdeError
from common.envparse import Secret
from common.errors import (
    KafkaAccessError,
    KafkaError,
    PipelineError,
    ProducerFencedError,
    SalesforceAuthError,
    SalesforceError,
    SalesforceLimitError,
)
from common.metrics import HealthServer
from common.probes import READY_GRACE_S
from common.salesforce import Token
from connectors import metrics as m
from connectors import observability, offsets, source
from connectors.decode import KafkaRecord
from connectors.offsets import EVENT, Position
from connectors.pubsub.client import PubSubClient
from connectors.pubsub.flow import FlowControl
from connectors.pubsub.generated import pubsub_api_pb2_grpc as pb_grpc
from connectors.source import EXIT_ACCESS_REFUSED, EXIT_FENCED, EXIT_OK, Connector
from tests.connectors.test_source_loop import (
    KEEPALIVE_ANSWER,
    FakeSubscription,
    GapPasses,
    Writes,
    make,
)

ROOT = Path(__file__).resolve().parents[2]
STORED = Position(b"\x00\x10", EVENT, 1_700_000_000_000, "u-a")


def unavailable() -> SalesforceError:
    return SalesforceError("Pub/Sub UNAVAILABLE: failed to connect to all addresses "
                           "(wrong SF_PUBSUB_ENDPOINT)", retryable=True)


def event(n: int) -> SimpleNamespace:
    return SimpleNamespace(events=[KafkaRecord(
        key=b"801000000000001AAA", value=b"v", headers=[], event_uuid=f"uuid-{n}",
        replay_id=n.to_bytes(4, "big"), order_id="801000000000001AAA")])


def reasons(conn: Connector) -> tuple[bool, list[str]]:
    ok, details = observability.ready(conn)
    return ok, details["reasons"]


def turn(conn: Connector, *items: Any, open_s: float = 0.2, raises: Exception | None = None
         ) -> None:
    """One turn of the loop: a subscription (or ``raises`` from subscribe), then
    ``_recover`` if it ended in an error (no real wait)."""
    def subscribe(*_a: Any) -> FakeSubscription:
        if raises is not None:
            raise raises
        return FakeSubscription(list(items))
    conn.pubsub = SimpleNamespace(subscribe=subscribe,  # type: ignore[assignment]
                                  refresh_auth=lambda: None, login=lambda: None)
    conn._stop.wait = lambda _d: False  # type: ignore[method-assign]
    try:
        conn._subscribe_once(None, time.monotonic() + open_s)
    except PipelineError as exc:
        assert conn._recover(exc)


# -- 1. readiness before the first accepted stream --------------------------------------------

def test_a_first_subscription_that_fails_is_not_ready_at_once_then_ready_once_accepted():
    """/tmp/review-surface/unavail.py: the first attempt ends UNAVAILABLE. It answered ready
    right away (and for 60 s): ``make up`` printed "connector healthy"."""
    conn = make()
    conn._set_position(STORED)
    turn(conn, raises=unavailable())
    ok, why = reasons(conn)
    assert ok is False, why
    assert not [r for r in why if r.startswith("starting: ")], why
    sf = [r for r in why if r.startswith("salesforce: ")]
    assert len(sf) == 1 and "wrong SF_PUBSUB_ENDPOINT" in sf[0], why
    # the retry's stream opens, nothing answered yet, not open long enough: still 503
    turn(conn, open_s=0.1)
    assert conn.health.state == "subscribed"
    ok, why = reasons(conn)
    assert ok is False and any(r.startswith("salesforce: ") for r in why), why
    # a stream answers: accepted, ready
    turn(conn, KEEPALIVE_ANSWER)
    assert reasons(conn) == (True, [])
    # after the first acceptance one error is given the grace again (a stream reset)
    turn(conn, raises=unavailable())
    assert reasons(conn) == (True, [])


def test_the_first_stream_staying_open_unrefused_counts_as_accepted(monkeypatch):
    monkeypatch.setattr(source, "GAP_ARM_OPEN_S", 0.2)
    conn = make()
    conn._set_position(STORED)
    turn(conn, raises=unavailable())
    assert reasons(conn)[0] is False
    turn(conn, open_s=0.5)  # quiet, open past GAP_ARM_OPEN_S without an error
    assert reasons(conn) == (True, [])


def test_healthz_answers_503_right_after_a_failed_first_attempt():
    conn = make()
    conn._set_position(STORED)
    turn(conn, raises=unavailable())
    server = HealthServer(0, lambda: observability.ready(conn),
                          live=lambda: observability.live(conn)).start()
    try:
        url = f"http://127.0.0.1:{server.port}"
        for path in ("/healthz", "/readyz"):
            resp = requests.get(url + path, timeout=5)
            assert resp.status_code == 503, resp.text
            assert any(r.startswith("salesforce: ") for r in resp.json()["reasons"]), resp.text
        assert requests.get(url + "/livez", timeout=5).status_code == 200
    finally:
        server.stop()


def test_kafka_away_at_the_first_attempt_is_not_ready_at_once_named_kafka():
    """No position stored: Kafka fails every write from the start (the first LATEST
    stream's marker, or its batch). Not ready at once, the reason named kafka."""
    conn = make()
    writes: Writes = conn.writer  # type: ignore[assignment]
    writes.fail = [KafkaError("requests: Local: Message timed out", retryable=True)] * 10
    turn(conn, event(1))
    ok, why = reasons(conn)
    assert ok is False, why
    kafka = [r for r in why if r.startswith("kafka: ")]
    assert len(kafka) == 1 and "Message timed out" in kafka[0], why
    assert not any(r.startswith("salesforce: ") for r in why), why
    writes.fail = []
    turn(conn, event(2))
    assert conn.written == 1 and reasons(conn) == (True, [])


def test_a_limit_before_the_first_acceptance_stays_not_ready_after_its_wait():
    conn = make()
    conn._set_position(STORED)
    turn(conn, raises=SalesforceLimitError("too many subscriptions", retryable=True))
    assert reasons(conn)[0] is False  # waiting out the limit
    conn.health.waiting_until = time.monotonic() - 1  # the wait is over
    turn(conn, open_s=0.1)  # the next stream opens, not accepted yet
    ok, why = reasons(conn)
    assert ok is False and any(r.startswith("salesforce: ") for r in why), why


# -- 2. a LATEST stream opened with no position, remembered across a restart -----------------

class Topics:
    """The Kafka topics as the shared ``Writes`` committed them, read as the connector's
    start-up reads them (offsets' last committed value per key)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.writes = Writes()

        def last_values(_b: Any, topic: str, keys: Any, **_kw: Any) -> dict:
            found: dict = {}
            for txn in self.writes.committed:
                for t, k, v, h in txn:
                    if t == topic and k in keys and v is not None:
                        found[k] = (v, h)
            return found

        def last_value(_b: Any, topic: str, key: bytes, **_kw: Any) -> Any:
            return last_values(_b, topic, (key,)).get(key)
        monkeypatch.setattr(offsets, "_last_values", last_values, raising=False)
        monkeypatch.setattr(offsets, "_last_value", last_value)

    def instance(self, *items: Any, fail: list[Exception] = (),  # type: ignore[assignment]
                 timeout_s: float = 0.5) -> tuple[int, list[str], Connector, GapPasses]:
        """One process: built, run for ``timeout_s`` (its first stream delivers ``items``,
        later ones nothing), its writes failing with ``fail`` first."""
        conn = make(backoff_initial_s=0.01, backoff_max_s=0.02)
        conn.writer = self.writes  # type: ignore[assignment]
        self.writes.fail = list(fail)
        passes = conn.reconciler = GapPasses()
        presets: list[str] = []

        def subscribe(preset: str, _rid: Any) -> FakeSubscription:
            presets.append(preset)
            return FakeSubscription(list(items) if len(presets) == 1 else [KEEPALIVE_ANSWER])
        conn.pubsub = SimpleNamespace(subscribe=subscribe,  # type: ignore[assignment]
                                      login=lambda: None)
        code = conn.run(timeout_s=timeout_s)
        return code, presets, conn, passes

    def gaps(self, conn: Connector) -> list[str]:
        return [conn.codec.decode_gap(v, h)["error_code"] for txn in self.writes.committed
                for t, _k, v, h in txn if t == conn.kafka.replay_gaps]

    def requests(self, conn: Connector) -> list[Any]:
        return [r for txn in self.writes.committed for r in txn if r[0] == conn.kafka.requests]


def gaps_metric() -> float:
    return REGISTRY.get_sample_value("sfprov_connector_replay_gaps_total",
                                     {"policy": "LATEST"}) or 0.0


def test_events_received_by_an_instance_that_exited_before_its_first_position_are_a_gap(
        monkeypatch):
    """/tmp/review-connector/demo_restart_gap.py: P1 opens LATEST with no position, receives
    an event, its batch is refused (missing ACL: exit 64). P2 found no position and no gap,
    opened LATEST as a fresh start and recorded nothing: the event was never written and no
    gap (record, metric, alert, pass) existed."""
    topics = Topics(monkeypatch)
    monkeypatch.setattr(source, "GAP_ARM_OPEN_S", 0.1)
    # P1's batch write is refused; whatever P1 committed before it stays committed
    p1 = make()
    p1.writer = topics.writes  # type: ignore[assignment]
    p1.pubsub = SimpleNamespace(  # type: ignore[assignment]
        subscribe=lambda *_a: FakeSubscription([event(1)]), login=lambda: None)
    refuse_batches = topics.writes.write

    def write(records: list[Any]) -> None:
        if any(r[0] == p1.kafka.requests for r in records):
            raise KafkaAccessError("TOPIC_AUTHORIZATION_FAILED on t.requests")
        refuse_batches(records)
    p1.writer = SimpleNamespace(start=lambda: None, write=write,  # type: ignore[assignment]
                                close=lambda: None, reopen=lambda: None)
    p1.reconciler = GapPasses()
    assert p1.run(timeout_s=0.5) == EXIT_ACCESS_REFUSED
    assert topics.requests(p1) == [] and topics.gaps(p1) == []
    before = gaps_metric()
    code, presets, p2, passes = topics.instance(timeout_s=0.5)
    assert code == EXIT_OK and presets[0] == "LATEST"
    assert topics.gaps(p2) == ["latest.resubscribed"], "P2 recorded no gap"
    assert gaps_metric() == before + 1
    assert len(passes.armed) == 1, passes.armed  # its pass, once the stream was accepted


def test_an_instance_killed_before_its_first_position_leaves_a_gap_for_the_next(monkeypatch):
    """SIGKILL: P1 opened LATEST (a quiet channel, no keepalive yet) and is gone."""
    topics = Topics(monkeypatch)
    code, presets, p1, _ = topics.instance(timeout_s=0.3)  # quiet: nothing committed
    assert presets == ["LATEST"] and p1.position is None and topics.gaps(p1) == []
    code, presets, p2, _ = topics.instance(timeout_s=0.3)
    assert topics.gaps(p2) == ["latest.resubscribed"]
    # P2 too ended before a position: P3 records one again
    code, presets, p3, _ = topics.instance(timeout_s=0.3)
    assert topics.gaps(p3) == ["latest.resubscribed", "latest.resubscribed"]


def test_the_first_ever_start_records_no_gap_and_its_marker_precedes_the_stream(monkeypatch):
    topics = Topics(monkeypatch)
    committed_at_subscribe: list[int] = []
    conn = make()
    conn.writer = topics.writes  # type: ignore[assignment]

    def subscribe(*_a: Any) -> FakeSubscription:
        committed_at_subscribe.append(len(topics.writes.committed))
        return FakeSubscription([])
    conn.pubsub = SimpleNamespace(subscribe=subscribe,  # type: ignore[assignment]
                                  login=lambda: None)
    assert conn.run(timeout_s=0.3) == EXIT_OK
    assert topics.gaps(conn) == []
    # one transaction, to the offsets topic, committed before the stream was opened
    assert committed_at_subscribe == [1], committed_at_subscribe
    [(topic, key, _v, _h)] = topics.writes.committed[0]
    assert topic == conn.kafka.connector_offsets and key != conn.codec.key
    # the position key is untouched: still no position
    assert offsets.load_position("unused:9", conn.kafka.connector_offsets, conn.codec) is None


def test_a_position_committed_after_the_marker_supersedes_it(monkeypatch):
    """An ordinary restart after positions were committed: CUSTOM, no gap."""
    topics = Topics(monkeypatch)
    code, presets, p1, _ = topics.instance(event(1), timeout_s=0.3)
    assert presets[0] == "LATEST" and len(topics.requests(p1)) == 1
    code, presets, p2, passes = topics.instance(timeout_s=0.3)
    assert presets == ["CUSTOM"] and topics.gaps(p2) == [] and passes.armed == []


def test_a_fenced_instance_writes_no_marker_and_opens_no_stream(monkeypatch):
    topics = Topics(monkeypatch)
    code, presets, conn, _ = topics.instance(
        event(1), fail=[ProducerFencedError("fenced by a newer instance")])
    assert code == EXIT_FENCED and presets == [], presets
    assert topics.writes.committed == []


def test_earliest_ignores_the_marker(monkeypatch):
    """A successor configured EARLIEST replays what its predecessor lost: no gap."""
    topics = Topics(monkeypatch)
    topics.instance(timeout_s=0.3)
    conn = make(replay="EARLIEST")
    conn.writer = topics.writes  # type: ignore[assignment]
    conn.pubsub = SimpleNamespace(subscribe=lambda *_a: FakeSubscription([]))  # type: ignore[assignment]
    assert conn.run(timeout_s=0.3) == EXIT_OK
    assert topics.gaps(conn) == []


# -- 3. an unreachable schema registry is named as such ------------------------------------------

def registry_down() -> Connector:
    """/tmp/review-connector/demo_registry.py"""
    conn = make(backoff_initial_s=0.01, backoff_max_s=0.02)
    conn._set_position(STORED)

    def build(_ev: Any) -> Any:
        raise SerdeError("schema registry http://registry:8081 unreachable: ConnectError",
                         retryable=True)
    conn.decoder = SimpleNamespace(build=build)  # type: ignore[assignment]
    conn.pubsub = SimpleNamespace(  # type: ignore[assignment]
        subscribe=lambda *_a: FakeSubscription([SimpleNamespace(events=[object()])]))
    return conn


def test_an_unreachable_schema_registry_is_named_on_readyz_not_salesforce(monkeypatch):
    conn = registry_down()
    monkeypatch.setattr(source, "load_position", lambda *_a, **_kw: STORED)
    monkeypatch.setattr(source, "load_last_gap", lambda *_a, **_kw: None)
    conn.run(timeout_s=0.3)
    h = conn.health
    assert h.failing_since is not None
    h.failing_since -= READY_GRACE_S + 1  # the registry away past the grace; Pub/Sub answers
    h.last_response = time.monotonic()
    ok, why = reasons(conn)
    assert ok is False
    assert any(r.startswith("schema_registry: ") and "registry:8081 unreachable" in r
               for r in why), why
    assert not any(r.startswith(("salesforce: ", "kafka: ")) for r in why), why


def reconnect_causes() -> dict[str, float]:
    return {s.labels["cause"]: s.value for metric in REGISTRY.collect()
            if metric.name == "sfprov_connector_reconnects" for s in metric.samples
            if s.name.endswith("_total")}


def test_the_registrys_reconnect_cause_is_primed_at_zero(monkeypatch):
    monkeypatch.setattr(source, "load_position", lambda *_a, **_kw: STORED)
    monkeypatch.setattr(source, "load_last_gap", lambda *_a, **_kw: None)
    before = reconnect_causes()
    registry_down().run(timeout_s=0.2)
    after = reconnect_causes()
    causes = [c for c, v in after.items() if v > before.get(c, 0.0)]
    assert len(causes) == 1, after
    script = ("from prometheus_client import generate_latest\n"
              "from connectors import metrics\n"
              "metrics.prime('EARLIEST')\n"
              "print(generate_latest().decode())")
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, check=True).stdout
    assert f'sfprov_connector_reconnects_total{{cause="{causes[0]}"}} 0.0' in out, causes


# -- 4. the buffered-events gauge after a written batch ---------------------------------------

def test_the_buffered_gauge_follows_the_flow_after_the_batch_is_written():
    """/tmp/review-connector/demo_buffered.py: 100 events delivered and written; the gauge
    kept showing 100 through the quiet period that followed."""
    conn = make()
    conn._set_position(STORED)
    flow = FlowControl(100, 1000)
    flow.initial()
    sub = SimpleNamespace(flow=flow, consumed=flow.consumed)
    flow.delivered(100)
    conn._handle(sub, [SimpleNamespace(events=[event(i).events[0] for i in range(1, 101)])])
    assert conn.written == 100 and flow.buffered == 0
    assert m.BUFFERED._value.get() == 0  # type: ignore[attr-defined]


# -- 5. a fresh start's first login is done before the LATEST marker ----------------------------

class RefusedLogin:
    """SalesforceAuth whose every login is refused (the connected app not approved)."""

    def token(self) -> Any:
        raise SalesforceAuthError("JWT bearer login refused: invalid_grant: user hasn't "
                                  "approved this consumer", retryable=False)

    def refresh(self, _stale: Any = None) -> Any:
        return self.token()


def test_a_login_refused_at_a_fresh_start_leaves_no_marker_and_the_next_start_no_gap(
        monkeypatch):
    """/tmp/review-regress2/login_gap.py: P1 (LATEST, no position) committed the LATEST
    marker, then its first subscribe logged in and the login was refused: no stream ever
    opened. The operator fixed .env and restarted; P2 found the marker and no position and
    recorded a false ``latest.resubscribed`` gap (alert, gap pass armed)."""
    topics = Topics(monkeypatch)
    monkeypatch.setattr(source, "GAP_ARM_OPEN_S", 0.1)
    p1 = make(backoff_initial_s=0.01, backoff_max_s=0.02)
    p1.writer = topics.writes  # type: ignore[assignment]
    p1.reconciler = GapPasses()
    # the real client: every subscribe raises the refused login (its _metadata logs in)
    p1.pubsub = PubSubClient(p1.settings, None, RefusedLogin(),  # type: ignore[arg-type]
                             channel=grpc.insecure_channel("127.0.0.1:9"))
    try:
        assert p1.run(timeout_s=0.5) == EXIT_OK
    finally:
        p1.pubsub.close()
    assert "invalid_grant" in p1.health.auth_refused
    assert topics.writes.committed == [], "P1 committed the marker though no stream opened"
    code, presets, p2, passes = topics.instance(timeout_s=0.5)
    assert code == EXIT_OK and presets[0] == "LATEST"
    assert topics.gaps(p2) == [] and passes.armed == [], "P2 recorded a false gap"


def test_earliest_after_a_marker_does_not_claim_a_gap(monkeypatch, caplog):
    """SF_EVENTS_REPLAY=EARLIEST: the marker's warning said a gap is recorded; none is (the
    EARLIEST stream replays what is retained)."""
    topics = Topics(monkeypatch)
    topics.instance(timeout_s=0.3)  # LATEST, quiet: only the marker committed
    conn = make(replay="EARLIEST")
    conn.writer = topics.writes  # type: ignore[assignment]
    conn.pubsub = SimpleNamespace(subscribe=lambda *_a: FakeSubscription([]))  # type: ignore[assignment]
    with caplog.at_level(logging.WARNING, logger="connectors"):
        assert conn.run(timeout_s=0.3) == EXIT_OK
    assert topics.gaps(conn) == []
    [warning] = [r.getMessage() for r in caplog.records if "marker" in r.getMessage()]
    assert "may have been opened" in warning and "records a gap" not in warning, warning
    assert "EARLIEST" in warning and "no gap" in warning, warning


# -- 6. open 5 s counts as accepted only on a connected channel ---------------------------------

class TokenAuth:
    def token(self) -> Token:
        return Token(Secret("tok-123456789"), "https://example.my.salesforce.com",
                     "00Dxx0000001gEREAY", "005xx", 0.0)

    def refresh(self, _stale: Any = None) -> Token:
        return self.token()


@contextmanager
def silent_endpoint() -> Iterator[str]:
    """A TCP server that accepts connections and never says a word (no HTTP/2 SETTINGS):
    what a firewalled or blackholed SF_PUBSUB_ENDPOINT looks like to gRPC."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.settimeout(0.05)
    stop, accepted = threading.Event(), []

    def accept() -> None:
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                continue
    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(5)
        for conn in accepted:
            conn.close()
        server.close()


class QuietPubSub(pb_grpc.PubSubServicer):
    """Accepts every Subscribe and answers nothing (a quiet channel before its keepalive)."""

    def Subscribe(self, request_iterator: Any, context: Any) -> Any:  # noqa: N802 - gRPC API
        next(request_iterator)
        while context.is_active():
            time.sleep(0.05)
        return iter(())


@contextmanager
def answering_endpoint() -> Iterator[str]:
    server = grpc.server(ThreadPoolExecutor(4))
    pb_grpc.add_PubSubServicer_to_server(QuietPubSub(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(0)


@pytest.mark.parametrize("endpoint", ["silent", "answering"])
def test_a_stream_open_counts_as_accepted_only_on_a_connected_channel(monkeypatch, endpoint):
    """/tmp/review-readme/silent_ready.py: SF_PUBSUB_ENDPOINT firewalled (the TCP connection
    accepted, nothing answered): gRPC fails the stream only at its ~20-s connect timeout,
    so the stream "stayed open unrefused" and after 5 s the connector was ready (``make up``
    printed healthy), a gap's pass armed; 503 only after 60 s. An endpoint that completes
    the HTTP/2 handshake and stays quiet (a quiet channel) is still accepted."""
    monkeypatch.setattr(source, "GAP_ARM_OPEN_S", 0.3)
    conn = make()
    conn._set_position(STORED)
    passes = conn.reconciler = GapPasses()
    conn._rearm_at = time.time()  # a stored gap's pass, armed once a stream is accepted
    with (silent_endpoint if endpoint == "silent" else answering_endpoint)() as target:
        conn.pubsub = PubSubClient(conn.settings, None, TokenAuth(),  # type: ignore[arg-type]
                                   channel=grpc.insecure_channel(target))
        try:
            assert conn._subscribe_once(None, time.monotonic() + 1.5) is True
            assert conn.health.state == "subscribed"
            ok, why = reasons(conn)
        finally:
            conn.pubsub.close()
    if endpoint == "silent":
        assert ok is False and [r for r in why if r.startswith("starting: ")], why
        assert not conn.health.accepted and passes.armed == [], passes.armed
    else:
        assert (ok, why) == (True, [])
        assert len(passes.armed) == 1, passes.armed
