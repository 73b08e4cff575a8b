"""Delivery-limit and concurrent-client errors: a long wait, visible in /healthz; a
subscription refused (no such topic, no access): retried, not ready meanwhile.

The Salesforce sandbox cannot inject these, so a tiny in-process Pub/Sub server built on
our own stubs refuses every Subscribe with the given ``error-code``; the connector runs
in-process against it and the real broker.
"""

from __future__ import annotations

import gc
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from prometheus_client import REGISTRY

from common.salesforce import Token
from common.settings import ConnectorSettings, Secret
from connectors.offsets import EVENT, Position
from connectors.pubsub import errors as perr
from connectors.pubsub.client import PubSubClient
from connectors.pubsub.generated import pubsub_api_pb2_grpc as pb_grpc
from connectors.source import Connector
from tests.connectors.conftest import wait_until

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
