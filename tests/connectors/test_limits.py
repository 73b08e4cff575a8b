"""Delivery-limit and concurrent-client errors: a long wait, visible in /healthz; a
subscription refused (no such topic, no access): retried, not ready meanwhile.

Most tests here use a tiny in-process Pub/Sub server built on our own stubs that refuses
every Subscribe with the given ``error-code``; the connector runs in-process against it and
the real broker. The Salesforce sandbox injects these errors too (the ``subscribe_error_*``
faults, ``sf.fail_subscribes(calls, error_code, status)``):
:func:`test_the_sandbox_limit_error_is_waited_out_then_events_flow_exactly_once` runs the
real connector process against it end to end.
"""

from __future__ import annotations

import gc
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
import requests
from prometheus_client import REGISTRY

from common.envparse import Secret
from common.salesforce import Token
from common.settings import ConnectorSettings
from connectors.offsets import EVENT, Position
from connectors.pubsub import errors as perr
from connectors.pubsub.client import PubSubClient
from connectors.pubsub.generated import pubsub_api_pb2_grpc as pb_grpc
from connectors.source import Connector
from tests.connectors.conftest import read_requests, wait_until

pytestmark = pytest.mark.broker


class RefusingPubSub(pb_grpc.PubSubServicer):
    def __init__(self, error_code: str,
                 status: grpc.StatusCode = grpc.StatusCode.RESOURCE_EXHAUSTED) -> None:
        self.error_code, self.status = error_code, status
        self.subscribes = 0
        self.metadata: list[dict] = []

    def Subscribe(self, request_iterator, context):  # noqa: N802 - gRPC API
        self.subscribes += 1
        self.metadata.append(dict(context.invocation_metadata()))
        next(request_iterator)
        context.set_trailing_metadata((("error-code", self.error_code),))
        context.abort(self.status, "refused")


class FakeAuth:
    def __init__(self) -> None:
        self._token = Token(Secret("tok-123456789"), "https://example.my.salesforce.com",
                            "00Dxx0000001gEREAY", "005xx", 0.0)

    def token(self) -> Token:
        return self._token

    def refresh(self, stale=None) -> Token:
        return self._token


@pytest.mark.parametrize("error_code", [perr.LIMIT_EXCEEDED, perr.CONCURRENT_CLIENTS])
def test_limit_errors_wait_long_and_report_unhealthy(kafka_settings, unique_name, error_code):
    servicer = RefusingPubSub(error_code)
    server = grpc.server(ThreadPoolExecutor(4))
    pb_grpc.add_PubSubServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    settings = ConnectorSettings.load({}, name=unique_name("lim"), limit_backoff_s=30.0,
                                      pubsub_endpoint=f"127.0.0.1:{port}", pubsub_tls=False,
                                      replay="EARLIEST")
    auth = FakeAuth()
    pubsub = PubSubClient(settings, None, auth,
                          channel=grpc.insecure_channel(f"127.0.0.1:{port}"))
    conn = Connector(kafka=kafka_settings, salesforce=None, connector=settings, auth=auth,
                     pubsub=pubsub)
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(conn.run(timeout_s=60)))
    thread.start()
    try:
        wait_until(lambda: conn.health.state == "limited", 20, "limited state")
        healthy, details = conn.health_check()
        assert not healthy
        assert details["waiting_s"] > 20 and "limit" in details["last_error"]
        assert servicer.subscribes == 1          # no hammering during the long wait
        md = servicer.metadata[0]
        assert md["tenantid"] == "00Dxx0000001gEREAY" and md["accesstoken"] == "tok-123456789"
        assert md["instanceurl"] == "https://example.my.salesforce.com"
    finally:
        conn.request_stop()
        thread.join(15)
        server.stop(0)
    assert result == [0]


@pytest.mark.parametrize(("status", "error_code"), [
    (grpc.StatusCode.NOT_FOUND, "sfdc.platform.eventbus.grpc.topic.not.found"),
    (grpc.StatusCode.PERMISSION_DENIED, ""),
])
def test_a_refused_subscription_is_retried_and_not_ready(kafka_settings, unique_name, status,
                                                         error_code):
    """A channel misspelt in SF_PROVISION_EVENT_CHANNEL, or the user's access to the event
    taken away: retried (REFERENCE §1), but /readyz says so, where it answered ready."""
    from connectors.observability import live, ready

    servicer = RefusingPubSub(error_code, status)
    server = grpc.server(ThreadPoolExecutor(4))
    pb_grpc.add_PubSubServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    settings = ConnectorSettings.load({}, name=unique_name("ref"), backoff_initial_s=0.2,
                                      backoff_max_s=0.5, pubsub_endpoint=f"127.0.0.1:{port}",
                                      pubsub_tls=False, replay="EARLIEST",
                                      channel="/event/OrderProvisionRequestd__e")
    auth = FakeAuth()
    conn = Connector(kafka=kafka_settings, salesforce=None, connector=settings, auth=auth,
                     pubsub=PubSubClient(settings, None, auth,
                                         channel=grpc.insecure_channel(f"127.0.0.1:{port}")))
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(conn.run(timeout_s=60)))
    thread.start()
    try:
        wait_until(lambda: servicer.subscribes >= 3, 20, "three refused subscriptions")
        ok, details = ready(conn)
        assert not ok and not conn.health_check()[0]
        assert any("SF_PROVISION_EVENT_CHANNEL" in r and "OrderProvisionRequestd__e" in r
                   for r in details["reasons"]), details
        assert live(conn)[0]  # the loop itself is fine: a restart would not help
    finally:
        conn.request_stop()
        thread.join(15)
        server.stop(0)
    assert result == [0]


def test_nothing_keeps_a_connector_once_its_owner_lets_go(kafka_settings, unique_name):
    """The committed-age gauge is module-level; it reads a Connector only while the
    Connector lives (a bound method held it, and its producer went on connecting to the
    session's broker after it stopped)."""
    settings = ConnectorSettings.load({}, name=unique_name("rel"), pubsub_endpoint="127.0.0.1:9",
                                      pubsub_tls=False)
    auth = FakeAuth()
    conn = Connector(kafka=kafka_settings, salesforce=None, connector=settings, auth=auth,
                     pubsub=PubSubClient(settings, None, auth,
                                         channel=grpc.insecure_channel("127.0.0.1:9")))
    conn.position = Position(b"\x01", EVENT, committed_at_ms=0)
    assert REGISTRY.get_sample_value("sfprov_connector_committed_replay_id_age_seconds") > 0
    gone = weakref.ref(conn)
    del conn
    gc.collect()
    assert gone() is None
    assert REGISTRY.get_sample_value("sfprov_connector_committed_replay_id_age_seconds") == -1


def test_the_sandbox_limit_error_is_waited_out_then_events_flow_exactly_once(
        sf, connector, kafka_settings):
    """The real connector meets the sandbox's delivery-limit error on its first Subscribe:
    /healthz answers 503 "limited" for SF_PUBSUB_LIMIT_BACKOFF_S (one Subscribe, no
    hammering), then it subscribes again and writes every event exactly once."""
    sf.seed(accounts=5, orders=30, broken_every=0)
    expected = set(sf.approve(10))
    sf.fail_subscribes(1, perr.LIMIT_EXCEEDED)
    sf.reset_counters()
    proc = connector("--timeout", "90", SF_PUBSUB_LIMIT_BACKOFF_S="6")

    def healthz(status: int, state: str) -> dict | None:
        """/healthz's body when it answers ``status`` in ``state``, else None."""
        try:
            resp = requests.get(f"http://127.0.0.1:{proc.port}/healthz", timeout=2)
        except requests.RequestException:
            return None  # not listening yet
        body = resp.json()
        return body if resp.status_code == status and body.get("state") == state else None

    body = wait_until(lambda: healthz(503, "limited"), 30, "a limited /healthz")
    assert "limit" in body["last_error"] and body["cause"] == "limit", body
    assert any(r.startswith("salesforce: delivery limit") for r in body["reasons"]), body
    assert sf.counters()["calls"].get("grpc_subscribe") == 1  # waiting, not retrying
    assert read_requests(kafka_settings) == []

    wait_until(lambda: len(read_requests(kafka_settings)) >= 10, 60, "events after the wait")
    expected |= set(sf.approve(10))
    wait_until(lambda: len(read_requests(kafka_settings)) >= 20, 30, "events streamed live")
    wait_until(lambda: healthz(200, "subscribed"), 15, "a healthy /healthz")
    assert sf.counters()["calls"]["grpc_subscribe"] == 2
    assert proc.metric('sfprov_connector_reconnects_total{cause="limit"}') == 1
    assert proc.terminate() == 0
    rows = read_requests(kafka_settings)
    uuids = [r["event_uuid"] for r in rows]
    assert len(uuids) == len(set(uuids)) == 20, "an event missing or written twice"
    assert {r["OrderId__c"] for r in rows} == expected
