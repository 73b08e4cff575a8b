"""/readyz is not ready before a process has started: each starts its probe port before its
Kafka clients and its Salesforce work, and every other readiness check is a "failing for
60 s" timer that starts unset — the first answer was 200. ``make up`` (``ops.stack``'s
``wait_healthy``) took that first 200: "healthy", exit 0, while the connector's login was
about to be refused or its ``init_transactions`` to time out (exit 1 thirty seconds
later); a Kubernetes readinessProbe counted a worker still restoring its tables ready.

Each process now answers 503 with a ``starting: …`` reason until its start-up is over:

* connector — until its producer is up, its position read and its first subscription
  answered, stayed open unrefused (a quiet channel sends nothing for minutes) or ended in
  an error (then the other checks judge it: a refused login, an outage);
* worker — until faust's first rebalance, its tables' recovery included, has ended (an
  empty assignment too: more workers than partitions must still become ready);
* sink — until its consumer's first assignment (an empty one too).

``/livez`` does not change: a starting process is alive. All pure: no broker (the clients
built point at a port nobody listens on), no Salesforce.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import requests

from common.errors import KafkaError, SalesforceAuthError
from common.metrics import HealthServer
from common.settings import (
    CommonSettings,
    ConnectorSettings,
    KafkaSettings,
    SinkSettings,
    WhmcsSettings,
    WorkerSettings,
)
from connectors import observability, source
from connectors.offsets import EVENT, Position
from connectors.source import EXIT_ERROR, Connector
from tests.connectors.test_source_loop import KEEPALIVE_ANSWER, FakeSubscription, make

NOWHERE = "127.0.0.1:1"  # nobody listens: the clients built never reach a broker
STORED = Position(b"\x00\x10", EVENT, 1_700_000_000_000, "u-a")


def starting(reasons: list[str]) -> list[str]:
    return [r for r in reasons if r.startswith("starting: ")]


# -- the connector ------------------------------------------------------------------------

def connector_ready(conn: Connector) -> tuple[bool, list[str]]:
    ok, details = observability.ready(conn)
    return ok, details["reasons"]


def test_a_connector_just_built_is_alive_but_not_ready():
    """The reviewer's case: built, nothing done yet (state "starting") → it answered ready."""
    kafka = KafkaSettings.load({}, bootstrap_servers=NOWHERE)
    conn = Connector(kafka=kafka, salesforce=None,  # type: ignore[arg-type]
                     connector=ConnectorSettings.load({}, name="ready-test"), auth=object(),
                     pubsub=SimpleNamespace(get_schema=lambda _sid: None))  # type: ignore[arg-type]
    try:
        assert conn.health.state == "starting"
        ok, reasons = connector_ready(conn)
        assert ok is False and starting(reasons), reasons
        assert observability.live(conn)[0] is True
    finally:
        conn.writer.close()


def test_a_connector_whose_kafka_start_fails_never_answers_ready():
    """``init_transactions`` timing out: it exits 1 — and was ready until then."""
    conn = make()

    def refused() -> None:
        raise KafkaError("init_transactions: Local: Timed out", retryable=True)
    conn.writer.start = refused  # type: ignore[method-assign]
    assert connector_ready(conn)[0] is False
    assert conn.run(timeout_s=1) == EXIT_ERROR
    ok, reasons = connector_ready(conn)
    assert ok is False and starting(reasons), reasons


def test_a_connector_is_ready_once_its_first_stream_answers():
    conn = make()
    conn._set_position(STORED)
    sub = FakeSubscription([])  # opened, no answer yet, not open long enough
    conn.pubsub = SimpleNamespace(subscribe=lambda *_a: sub)  # type: ignore[assignment]
    assert conn._subscribe_once(None, time.monotonic() + 0.2) is True
    assert conn.health.state == "subscribed"
    ok, reasons = connector_ready(conn)
    assert ok is False and starting(reasons), reasons
    sub = FakeSubscription([KEEPALIVE_ANSWER])  # Salesforce answers: start-up is over
    conn._subscribe_once(None, time.monotonic() + 0.2)
    assert connector_ready(conn) == (True, [])


def test_a_quiet_first_stream_makes_it_ready_once_it_stayed_open_unrefused(monkeypatch):
    """No event is needed, nor a keepalive (up to 270 s away on a quiet channel): a stream
    open ``GAP_ARM_OPEN_S`` without an error was accepted (a refusal comes within moments)."""
    monkeypatch.setattr(source, "GAP_ARM_OPEN_S", 0.2)
    conn = make()
    conn._set_position(STORED)
    conn.pubsub = SimpleNamespace(subscribe=lambda *_a: FakeSubscription([]))  # type: ignore[assignment]
    conn._subscribe_once(None, time.monotonic() + 0.6)
    assert connector_ready(conn) == (True, [])


def test_a_login_refused_at_the_first_subscribe_ends_start_up_not_ready_for_the_login():
    """The first attempt's error ends start-up: the refused login is what /readyz names."""
    conn = make()
    refusal = SalesforceAuthError("invalid_grant: user hasn't approved this consumer",
                                  retryable=False)

    def subscribe(*_a: Any) -> None:
        raise refusal

    def refresh_auth() -> None:
        raise refusal
    # the login is refused (a fresh start logs in before its LATEST marker, or in subscribe)
    conn.pubsub = SimpleNamespace(subscribe=subscribe,  # type: ignore[assignment]
                                  refresh_auth=refresh_auth, login=refresh_auth)
    conn._stop.wait = lambda _delay: False  # type: ignore[method-assign]
    with pytest.raises(SalesforceAuthError) as ended:
        conn._subscribe_once(None, None)
    assert conn._recover(ended.value)
    ok, reasons = connector_ready(conn)
    assert ok is False and not starting(reasons), reasons
    assert any(r.startswith("salesforce_auth: ") for r in reasons), reasons
    # the next stream opens (state "subscribed" again, nothing answered yet): start-up
    # stays over — it ended with the first attempt, whatever the next one meets
    conn.pubsub = SimpleNamespace(  # type: ignore[assignment]
        subscribe=lambda *_a: FakeSubscription([]), login=lambda: None)
    assert conn._subscribe_once(None, time.monotonic() + 0.2) is True
    assert conn.health.state == "subscribed"
    assert not starting(connector_ready(conn)[1])


def test_a_starting_connector_answers_503_on_readyz_and_healthz_200_on_livez():
    conn = make()
    server = HealthServer(0, lambda: observability.ready(conn),
                          live=lambda: observability.live(conn)).start()
    try:
        url = f"http://127.0.0.1:{server.port}"
        for path in ("/readyz", "/healthz"):
            resp = requests.get(url + path, timeout=5)
            assert resp.status_code == 503 and starting(resp.json()["reasons"]), resp.text
        assert requests.get(url + "/livez", timeout=5).status_code == 200
    finally:
        server.stop()


# -- the worker ---------------------------------------------------------------------------

WHMCS = {"WHMCS_API_URL": "http://127.0.0.1:9/includes/api.php",
         "WHMCS_API_IDENTIFIER": "id", "WHMCS_API_SECRET": "secret"}


def worker(tmp_path: Path) -> Any:
    from streams.app import Worker

    return Worker(kafka=KafkaSettings.load({}, bootstrap_servers=NOWHERE,
                                           topic_prefix="ready."),
                  worker=WorkerSettings.load({}), whmcs=WhmcsSettings.load(WHMCS),
                  sf_client=None,  # type: ignore[arg-type]
                  common=CommonSettings.load({}, state_dir=tmp_path))


def test_a_worker_is_ready_only_once_its_first_rebalance_restored_its_tables(tmp_path):
    """faust's first rebalance as faust runs it: the revoke (``on_rebalance_start``), the
    assignment's signal, then the recovery's end. The assignment is empty — more workers
    than partitions — and must still end start-up."""
    built = worker(tmp_path)
    app = built.app
    ok, details = built.ops.ready()
    assert ok is False and starting(details["reasons"]), details["reasons"]
    assert details["assigned_partitions"] == []
    assert built.ops.live()[0] is True

    async def first_rebalance() -> tuple[bool, list[str]]:
        app.on_rebalance_start()  # what faust's rebalance listener calls first
        await built._on_assigned(app, set())
        mid_ok, mid = built.ops.ready()
        app.consumer.assignment = lambda: set()  # nothing assigned: no seek

        async def nothing() -> None:
            return None
        app._fetcher.maybe_start = nothing
        await app.tables.recovery.on_recovery_completed(app.consumer_generation_id)
        await asyncio.sleep(0)
        return mid_ok, mid["reasons"]

    mid_ok, mid_reasons = asyncio.run(first_rebalance())
    assert mid_ok is False and starting(mid_reasons), mid_reasons
    ok, details = built.ops.ready()
    assert ok is True and details["reasons"] == [], details["reasons"]
    assert details["assigned_partitions"] == []
    assert built.ops.start_up not in set(app.sensors)  # no per-event sensor call after
    app.on_rebalance_start()  # a later rebalance: start-up is over once
    assert not starting(built.ops.ready()[1]["reasons"])


# -- the sink -----------------------------------------------------------------------------

def test_a_sink_is_ready_only_once_its_first_assignment_came_an_empty_one_too():
    from sinks.app import Sink

    sink = Sink(KafkaSettings.load({}, bootstrap_servers=NOWHERE),
                SinkSettings.load({}, http_port=0), object())  # type: ignore[arg-type]
    try:
        ok, details = sink.ops.ready()
        assert ok is False and starting(details["reasons"]), details["reasons"]
        assert details["consumed"] == 0
        assert sink.ops.live()[0] is True
        consumer = SimpleNamespace(assign=lambda _p: None, pause=lambda _p: None,
                                   resume=lambda _p: None)
        sink._on_assign(consumer, [])  # type: ignore[arg-type]  # more sinks than partitions
        ok, details = sink.ops.ready()
        assert ok is True and details["reasons"] == [], details["reasons"]
        assert details["assigned_partitions"] == []
    finally:
        sink.consumer.close()
        sink.dead_letters.close()
