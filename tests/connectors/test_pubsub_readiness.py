"""/readyz while Pub/Sub does not answer: "can it do work now?" — not while every subscription
ends in an error and waits out a backoff (a network cut, an outage, a wrong endpoint), not
on a stream the watchdog found silent, not while what Pub/Sub delivers cannot be written
(a Kafka outage retried through the backoff). 503 after ``READY_GRACE_S`` (60 s), as the
worker and the sink; /livez stays 200 (a restart would not bring Salesforce back). A quiet
channel's healthy stream answers only with a keepalive every 270 s, also after a stream
reset: it never turns 503.

The loop runs with fakes for Pub/Sub and Kafka and a clock the backoff waits move."""

from __future__ import annotations

import queue
import time
from types import SimpleNamespace
from typing import Any

import pytest
import requests

from common.errors import KafkaError, PipelineError, SalesforceError
from common.metrics import HealthServer
from common.probes import READY_GRACE_S
from connectors import observability, source
from connectors.decode import KafkaRecord
from connectors.offsets import EVENT, Position
from connectors.pubsub.client import StreamEnded
from connectors.source import Connector, Health
from tests.connectors.test_source_loop import FakeSubscription, Writes, make

_real_monotonic = time.monotonic
STORED = Position(b"\x00\x10", EVENT, 1_700_000_000_000, "u-a")
KEEPALIVE = SimpleNamespace(events=[], latest_replay_id=b"\x09", pending_num_requested=100)


class Clock:
    """time.monotonic, moved on by the connector's backoff waits (and by the test)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return _real_monotonic() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


def connector(monkeypatch: pytest.MonkeyPatch) -> tuple[Connector, Clock]:
    conn = make()
    clock = Clock()
    monkeypatch.setattr(source.time, "monotonic", clock)  # the time module: observability too
    conn._stop.wait = lambda delay: clock.advance(delay) or False  # type: ignore[method-assign]
    return conn, clock


def unavailable() -> SalesforceError:
    return SalesforceError("Pub/Sub UNAVAILABLE: failed to connect to all addresses",
                           retryable=True)


def turn(conn: Connector, *items: Any, open_s: float = 0.3) -> Any:
    """One turn of :meth:`Connector.run`'s loop: a subscription delivering ``items`` (open
    ``open_s`` real seconds unless they end it), then :meth:`Connector._recover` if it ended
    in an error (its backoff moves the clock). Returns the subscription."""
    sub = FakeSubscription(list(items))
    conn.pubsub = SimpleNamespace(subscribe=lambda *_a: sub,  # type: ignore[assignment]
                                  login=lambda: None)
    try:
        conn._subscribe_once(None, time.monotonic() + open_s)
    except PipelineError as exc:
        assert conn._recover(exc)
    return sub


def ready(conn: Connector) -> tuple[bool, list[str]]:
    ok, details = observability.ready(conn)
    return ok, details["reasons"]


def live(conn: Connector) -> bool:
    return observability.live(conn)[0]


def event(n: int) -> SimpleNamespace:
    return SimpleNamespace(events=[KafkaRecord(key=b"801", value=b"v", headers=[],
                                               event_uuid=f"u-{n}", replay_id=n.to_bytes(4, "big"),
                                               order_id="801")])


def test_pubsub_unavailable_past_the_grace_makes_the_connector_not_ready_not_dead(monkeypatch):
    """Every subscribe ends UNAVAILABLE: subscribe → fail → backoff (≤ 30 s), over and over.
    Each subscribe reset the response time, so /readyz stayed 200 for hours. (A connector
    that ran: before a first stream is accepted it is not ready at once, no grace —
    test_source_review3.)"""
    conn, clock = connector(monkeypatch)
    turn(conn, KEEPALIVE)
    start = clock()
    seen: list[tuple[float, bool, list[str], bool]] = []
    while clock() - start < READY_GRACE_S + 120:
        turn(conn, StreamEnded(unavailable()))
        seen.append((clock() - start, *ready(conn), live(conn)))
    assert all(ok for t, ok, _r, _l in seen if t < READY_GRACE_S - 1), seen
    late = [(ok, reasons) for t, ok, reasons, _l in seen if t > READY_GRACE_S + 1]
    assert late and not any(ok for ok, _r in late), seen
    reasons = late[-1][1]
    assert len(reasons) == 1 and reasons[0].startswith("salesforce: no answer from Pub/Sub for ")
    assert "(last error: Pub/Sub UNAVAILABLE: failed to connect" in reasons[0]
    assert all(alive for *_x, alive in seen)  # a restart brings Salesforce back no sooner
    assert conn.health_check()[0] is False
    turn(conn, KEEPALIVE)  # Pub/Sub answers again
    assert ready(conn) == (True, []) and conn.health_check()[0] is True


def test_a_quiet_channel_stays_ready_between_keepalives_and_across_a_stream_reset(monkeypatch):
    """A healthy quiet stream answers only with its keepalive, every 270 s; a stream reset
    (RST_STREAM, a GOAWAY) is followed by a new stream whose first answer may come 270 s
    after it opened: neither is a reason to report the connector not ready."""
    conn, clock = connector(monkeypatch)
    sub = turn(conn, KEEPALIVE)
    for _ in range(3):
        for _ in range(27):
            clock.advance(10)
            assert ready(conn) == (True, []) and live(conn)
        sub.responses.put(KEEPALIVE)
        conn._consume(sub, None, time.monotonic() + 0.3)  # type: ignore[arg-type]
    clock.advance(200)
    turn(conn, StreamEnded(SalesforceError("Pub/Sub UNAVAILABLE: RST_STREAM closed stream",
                                           retryable=True)))
    assert conn.health.state == "backoff" and ready(conn) == (True, [])
    sub = turn(conn)  # the new stream opens, quiet
    for _ in range(27):
        clock.advance(10)
        assert ready(conn) == (True, []) and live(conn)
    sub.responses.put(KEEPALIVE)
    conn._consume(sub, None, time.monotonic() + 0.3)  # type: ignore[arg-type]
    assert ready(conn) == (True, []) and conn.health.failing_since is None


class SilentResponses:
    """A stream that neither delivers nor ends: each poll lets 10 s pass."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    def get(self, timeout: float) -> Any:
        self.clock.advance(10)
        raise queue.Empty


def test_a_stream_the_watchdog_found_silent_is_not_ready_until_one_answers(monkeypatch):
    """No keepalive for the stall timeout (above Salesforce's 270 s): the watchdog
    resubscribes. The new stream is not given the benefit of the doubt a reset gets."""
    conn, clock = connector(monkeypatch)
    sub = turn(conn, KEEPALIVE)
    sub.responses = SilentResponses(clock)  # type: ignore[assignment]
    with pytest.raises(source.StreamStalled) as stalled:
        conn._consume(sub, None, None)  # type: ignore[arg-type]
    silent_s = clock() - conn.health.last_response
    assert conn.settings.keepalive_timeout_s < silent_s <= conn.settings.keepalive_timeout_s + 10
    assert conn._recover(stalled.value)
    ok, reasons = ready(conn)
    assert not ok and reasons[0].startswith("salesforce: no answer from Pub/Sub for ")
    turn(conn)  # the next stream opens
    assert not ready(conn)[0] and live(conn)
    turn(conn, KEEPALIVE)
    assert ready(conn) == (True, [])


@pytest.mark.parametrize("stored", [STORED, None], ids=["position", "no-position"])
def test_a_kafka_outage_retried_through_the_backoff_is_not_ready(monkeypatch, stored):
    """Pub/Sub answers, every batch's transaction fails (with no position stored, the gap
    record of each LATEST stream opened again fails first): the loop resubscribes after
    each error, never writing; not ready after the grace, named after Kafka."""
    conn, clock = connector(monkeypatch)
    conn._set_position(stored)
    if stored is None:  # the fresh start's first stream: its LATEST marker, open unrefused
        monkeypatch.setattr(source, "GAP_ARM_OPEN_S", 0.1)
        turn(conn)
        assert conn.health.accepted and conn.position is None
    writes: Writes = conn.writer  # type: ignore[assignment]
    writes.fail = [KafkaError("requests: Local: Message timed out", retryable=True)] * 1000
    start, n, seen = clock(), 0, []
    while clock() - start < READY_GRACE_S + 60:
        n += 1
        turn(conn, event(n))
        seen.append((clock() - start, *ready(conn), live(conn)))
    assert conn.written == 0 and conn.health.state == "backoff"
    assert all(ok for t, ok, _r, _l in seen if t < READY_GRACE_S - 1), seen
    late = [(ok, reasons) for t, ok, reasons, _l in seen if t > READY_GRACE_S + 1]
    assert late and not any(ok for ok, _r in late), seen
    reasons = late[-1][1]
    assert len(reasons) == 1 and reasons[0].startswith("kafka: every attempt for "), reasons
    assert reasons[0].endswith("(last error: requests: Local: Message timed out)"), reasons
    assert all(alive for *_x, alive in seen)
    writes.fail = []
    turn(conn, event(n + 1))
    assert conn.written == 1 and ready(conn) == (True, [])
    assert conn.health.failing_since is None and conn.health.errors == 0


def test_the_reason_is_served_masked_and_livez_stays_200():
    """What the loop leaves after an hour of failed subscribes (the reviewer's case): 503
    naming Pub/Sub with the last error, masked as a log line is; /livez 200."""
    h = Health()
    h.state, h.cause = "backoff", "unavailable"
    h.last_error = ("StatusCode.UNAVAILABLE: failed to connect to all addresses via "
                    "https://u:hunter2@proxy.example:3128")
    h.last_response = time.monotonic() - 3600
    h.waiting_until = time.monotonic() + 20
    conn = SimpleNamespace(health=h, settings=SimpleNamespace(keepalive_timeout_s=300.0,
                                                              channel="/event/X"),
                           health_check=lambda: h.snapshot(300.0))
    server = HealthServer(0, lambda: observability.ready(conn),  # type: ignore[arg-type]
                          live=lambda: observability.live(conn)).start()  # type: ignore[arg-type]
    try:
        url = f"http://127.0.0.1:{server.port}"
        resp = requests.get(url + "/readyz", timeout=5)
        assert resp.status_code == 503
        assert resp.json()["reasons"][0].startswith(
            "salesforce: no answer from Pub/Sub for 3600 s (last error: StatusCode.UNAVAILABLE")
        assert "hunter2" not in resp.text
        assert requests.get(url + "/livez", timeout=5).status_code == 200
    finally:
        server.stop()


def test_the_sandbox_answering_every_subscribe_unavailable(sf, monkeypatch):
    """The same against the Pub/Sub sandbox's fault injection, through the real gRPC client
    and its error classification (Kafka faked, the backoff waits on the test's clock):
    every Subscribe ends ``UNAVAILABLE`` with ``…service.unavailable``, then the faults
    are lifted and the stream's keepalive (every 1 s here) makes the connector ready."""
    from common.salesforce import SalesforceAuth
    from common.settings import ConnectorSettings, SalesforceSettings
    from connectors.pubsub.client import PubSubClient

    env = sf.env()
    salesforce = SalesforceSettings.load(env)
    conn, clock = connector(monkeypatch)
    conn.pubsub = PubSubClient(ConnectorSettings.load(env, name="loop-test"), salesforce,
                               SalesforceAuth(salesforce))
    try:
        assert conn._subscribe_once(None, time.monotonic() + 3) is True  # a connector that ran
        sf.fail_subscribes(-1, "sfdc.platform.eventbus.grpc.service.unavailable",
                           "UNAVAILABLE")
        start, seen = clock(), []
        while clock() - start < READY_GRACE_S + 30:
            with pytest.raises(PipelineError) as ended:
                conn._subscribe_once(None, time.monotonic() + 10)  # refused within moments
            assert conn._recover(ended.value)
            seen.append((clock() - start, *ready(conn), live(conn)))
        assert all(ok for t, ok, _r, _l in seen if t < READY_GRACE_S - 1), seen
        ok, reasons, alive = seen[-1][1:]
        assert not ok and alive, seen
        assert reasons[0].startswith("salesforce: no answer from Pub/Sub for "), reasons
        assert "service.unavailable" in reasons[0], reasons
        sf.reset_faults()
        assert conn._subscribe_once(None, time.monotonic() + 3) is True
        assert ready(conn) == (True, []) and conn.health.errors == 0
    finally:
        conn.pubsub.close()  # type: ignore[attr-defined]
