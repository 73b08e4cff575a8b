"""Salesforce sandbox Pub/Sub API over real gRPC, with a client generated at test time."""

from __future__ import annotations

import io
import json
import queue
import time
from typing import Any

import fastavro
import grpc
import pytest

from tests.conftest import wait_for
from tests.sandbox.conftest import SF_TOPIC, SfPubSub, sf_error_code

CORRUPTED = "sfdc.platform.eventbus.grpc.subscription.fetch.replayid.corrupted"


def _approve(sf: Any, n: int) -> list[str]:
    return sf.approve(n)


def _decode(pubsub: SfPubSub, event: Any) -> dict:
    info = pubsub.unary("GetSchema", pubsub.pb.SchemaRequest(schema_id=event.event.schema_id),
                        pubsub.pb.SchemaInfo)
    schema = fastavro.parse_schema(json.loads(info.schema_json))
    return fastavro.schemaless_reader(io.BytesIO(event.event.payload), schema)


def _drain_keepalive(sub: Any) -> Any:
    """Wait for the first keepalive (proves the stream is registered and positioned)."""
    response = sub.next(timeout=5)
    assert not isinstance(response, tuple)
    return response


def test_subscribe_receives_the_approval_event(sf_pubsub: SfPubSub, sf_sandbox: Any) -> None:
    sub = sf_pubsub.subscribe(num=10)
    _drain_keepalive(sub)
    order_id = _approve(sf_sandbox, 1)[0]
    [event] = sub.events(1)
    payload = _decode(sf_pubsub, event)
    assert payload["OrderId__c"] == order_id
    assert payload["IdemKey__c"].startswith(order_id + "-")
    assert payload["Version__c"] == 1.0
    assert payload["RequestedBy__c"] == "cs.agent@sfprov.sandbox"
    assert payload["CreatedById"].startswith("005") and payload["CreatedDate"] > 1.6e12
    assert len(payload["CorrelationId__c"]) == 36 and len(event.event.id) == 36
    topic = sf_pubsub.unary("GetTopic", sf_pubsub.pb.TopicRequest(topic_name=SF_TOPIC),
                            sf_pubsub.pb.TopicInfo)
    assert topic.schema_id == event.event.schema_id and topic.tenant_guid == sf_sandbox.org_id
    # the integration user's profile: subscribe, never publish (the Flow publishes)
    assert topic.can_subscribe and not topic.can_publish
    record = sf_sandbox.get_record(order_id)
    assert record["Activation_Status__c"] == "Activating" and record["Status"] == "Approved"


def test_retry_publishes_a_new_event_with_a_new_idem_key(sf_pubsub: SfPubSub,
                                                         sf_sandbox: Any) -> None:
    sub = sf_pubsub.subscribe(num=10)
    _drain_keepalive(sub)
    order_id = _approve(sf_sandbox, 1)[0]
    sf_sandbox.update("Order", order_id, {"Activation_Status__c": "Failed",
                                          "Activation_Error__c": "boom"})
    sf_sandbox.update("Order", order_id, {"Activation_Status__c": "Activating"})
    first, second = sub.events(2)
    keys = [_decode(sf_pubsub, e)["IdemKey__c"] for e in (first, second)]
    assert keys[0] != keys[1] and all(k.startswith(order_id) for k in keys)
    assert sf_sandbox.get_record(order_id)["Activation_Error__c"] is None
    assert second.replay_id > first.replay_id


def test_flow_control_never_exceeds_requested(sf_pubsub: SfPubSub, sf_sandbox: Any) -> None:
    probe = sf_pubsub.subscribe(num=1)
    start = _drain_keepalive(probe).latest_replay_id
    _approve(sf_sandbox, 12)
    sub = sf_pubsub.subscribe(sf_pubsub.pb.CUSTOM, num=5, replay_id=start)
    got = sub.events(5)
    assert len(got) == 5
    # nothing is requested now: no event, and no keepalive either (Salesforce sends one
    # only while requested events are pending)
    with pytest.raises(queue.Empty):
        sub.next(timeout=1.5)
    sub.fetch(num_requested=500)  # capped at 100 outstanding
    rest = sub.events(7)
    assert len(rest) == 7
    response = sub.next(timeout=3)  # a keepalive reports what is still requested
    assert response.pending_num_requested <= 100 and not response.events


def test_keepalives_and_silence(sf_pubsub: SfPubSub, sf_sandbox: Any) -> None:
    sub = sf_pubsub.subscribe(num=5)
    first = sub.next(timeout=3)
    assert not first.events and first.latest_replay_id and first.pending_num_requested == 5
    second = sub.next(timeout=3)
    assert second.latest_replay_id == first.latest_replay_id
    sf_sandbox.set_faults(keepalives_paused=True)
    while True:  # drop a keepalive that may already be in flight
        try:
            sub.next(timeout=0.3)
        except queue.Empty:
            break
    with pytest.raises(queue.Empty):
        sub.next(timeout=2.5)
    sf_sandbox.set_faults(keepalives_paused=False)
    assert not sub.next(timeout=3).events


def test_replay_presets(sf_pubsub: SfPubSub, sf_sandbox: Any) -> None:
    _approve(sf_sandbox, 3)
    earliest = sf_pubsub.subscribe(sf_pubsub.pb.EARLIEST, num=3).events(3)
    assert [e.replay_id for e in earliest] == sorted(e.replay_id for e in earliest)
    anchor = earliest[0]
    custom = sf_pubsub.subscribe(sf_pubsub.pb.CUSTOM, num=1, replay_id=anchor.replay_id)
    assert custom.events(1)[0].replay_id == earliest[1].replay_id  # resumes *after* the id
    latest = sf_pubsub.subscribe(num=5)
    _drain_keepalive(latest)
    new_id = _approve(sf_sandbox, 1)[0]
    [event] = latest.events(1)
    assert _decode(sf_pubsub, event)["OrderId__c"] == new_id
    # Only the first FetchRequest's preset counts; another topic later is refused.
    latest.fetch(topic_name="/event/Other__e", num_requested=1)
    with pytest.raises(grpc.RpcError) as info:
        latest.events(1, timeout=3)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    for bad in (b"garbage", b"\x01" + (10**12).to_bytes(8, "big")):
        sub = sf_pubsub.subscribe(sf_pubsub.pb.CUSTOM, num=1, replay_id=bad)
        with pytest.raises(grpc.RpcError) as info:
            sub.next(timeout=3)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert sf_error_code(info.value) == CORRUPTED


def test_auth_errors_and_token_expiry(sf_pubsub: SfPubSub, sf_sandbox: Any) -> None:
    for meta in ({"token": "00Dbogus!token"}, {"tenant": "00D000000000000AAA"}):
        sub = sf_pubsub.subscribe(num=1, **meta)
        with pytest.raises(grpc.RpcError) as info:
            sub.next(timeout=3)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert sf_error_code(info.value) == "sfdc.platform.eventbus.grpc.service.auth.error"
    with pytest.raises(grpc.RpcError) as info:
        sf_pubsub.unary("GetSchema", sf_pubsub.pb.SchemaRequest(schema_id="x"),
                        sf_pubsub.pb.SchemaInfo, token="00Dbogus!token")
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    sub = sf_pubsub.subscribe(num=1)
    _drain_keepalive(sub)
    sf_sandbox.expire_tokens()
    with pytest.raises(grpc.RpcError) as info:
        for _ in range(5):
            sub.next(timeout=3)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_managed_subscribe_says_it_is_not_emulated_after_checking_the_session(
        sf_pubsub: SfPubSub) -> None:
    """Not emulated (the pipeline uses Subscribe): a clear UNIMPLEMENTED, not the generated
    stub's "Method not implemented!", and a bad session still refused first."""
    method = sf_pubsub.channel.stream_stream(
        "/eventbus.v1.PubSub/ManagedSubscribe",
        request_serializer=sf_pubsub.pb.ManagedFetchRequest.SerializeToString,
        response_deserializer=sf_pubsub.pb.ManagedFetchResponse.FromString)
    for token, code in (("00Dbogus!token", grpc.StatusCode.UNAUTHENTICATED),
                        (None, grpc.StatusCode.UNIMPLEMENTED)):
        calls = method(iter([sf_pubsub.pb.ManagedFetchRequest(num_requested=1)]),
                       metadata=sf_pubsub.metadata(token=token), timeout=10)
        with pytest.raises(grpc.RpcError) as info:
            next(calls)
        assert info.value.code() == code, info.value
    assert "ManagedSubscribe is not emulated" in info.value.details()


def test_drop_streams_is_unavailable(sf_pubsub: SfPubSub, sf_sandbox: Any) -> None:
    sub = sf_pubsub.subscribe(num=1)
    _drain_keepalive(sub)
    assert sf_sandbox.drop_streams() >= 1
    with pytest.raises(grpc.RpcError) as info:
        for _ in range(3):
            sub.next(timeout=3)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert sf_error_code(info.value) == "sfdc.platform.eventbus.grpc.service.unavailable"


def test_injected_bad_events_and_publish(sf_pubsub: SfPubSub, sf_sandbox: Any) -> None:
    sub = sf_pubsub.subscribe(num=10)
    _drain_keepalive(sub)
    sf_sandbox.inject_event("malformed")
    sf_sandbox.inject_event("unknown_schema")
    malformed, unknown = sub.events(2)
    with pytest.raises(Exception):  # noqa: B017 - any decoding failure will do
        _decode(sf_pubsub, malformed)
    with pytest.raises(grpc.RpcError) as info:
        _decode(sf_pubsub, unknown)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    # Publish an event of our own and see it delivered.
    schema_id = malformed.event.schema_id
    request = _publish_request(sf_pubsub, schema_id, "801x", "my-uuid")
    # the integration user may not publish until an admin grants it
    with pytest.raises(grpc.RpcError) as refused:
        sf_pubsub.unary("Publish", request, sf_pubsub.pb.PublishResponse)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    sf_sandbox.set_permissions(events={SF_TOPIC: "SP"})
    try:
        published = sf_pubsub.unary("Publish", request, sf_pubsub.pb.PublishResponse)
    finally:
        sf_sandbox.reset_permissions()
    assert published.results[0].correlation_key == "my-uuid" and published.results[0].replay_id
    [event] = sub.events(1)
    assert event.event.id == "my-uuid" and event.replay_id == published.results[0].replay_id


def test_stream_with_nothing_requested_is_closed(sf_pubsub: SfPubSub) -> None:
    sub = sf_pubsub.subscribe(num=0)
    started = time.monotonic()
    while True:
        response = sub.next(timeout=20)
        if isinstance(response, tuple):
            break
    # idle_close_s is 4 (conftest): not before it; the upper bound only says "closed", with
    # room for a loaded machine
    assert 3.5 <= time.monotonic() - started <= 15


def _publish_request(sf_pubsub: SfPubSub, schema_id: str, order_id: str, uuid: str) -> Any:
    """A PublishRequest of one event for ``order_id``, encoded with the event's schema."""
    info_json = sf_pubsub.unary("GetSchema", sf_pubsub.pb.SchemaRequest(schema_id=schema_id),
                                sf_pubsub.pb.SchemaInfo).schema_json
    out = io.BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(json.loads(info_json)), {
        "CreatedDate": 1, "CreatedById": "005000000000000AAA", "OrderId__c": order_id})
    return sf_pubsub.pb.PublishRequest(topic_name=SF_TOPIC, events=[
        sf_pubsub.pb.ProducerEvent(id=uuid, schema_id=schema_id, payload=out.getvalue())])


def _assert_subscribe_refused(sub: Any, *, tries: int, timeout: float) -> None:
    """The stream ends PERMISSION_DENIED, naming the missing Subscribe, within ``tries``."""
    with pytest.raises(grpc.RpcError) as info:
        for _ in range(tries):
            sub.next(timeout=timeout)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "subscribe" in (info.value.details() or "")


def test_subscribe_refused_without_the_permission(sf_pubsub: SfPubSub, sf_sandbox: Any) -> None:
    """A profile without Subscribe on the event: the stream ends PERMISSION_DENIED, which the
    connector reports as a refused subscription (``/readyz`` 503), not a retry storm."""
    sf_sandbox.set_permissions(events={SF_TOPIC: ""})
    try:
        topic = sf_pubsub.unary("GetTopic", sf_pubsub.pb.TopicRequest(topic_name=SF_TOPIC),
                                sf_pubsub.pb.TopicInfo)
        assert not topic.can_subscribe and not topic.can_publish
        _assert_subscribe_refused(sf_pubsub.subscribe(num=1), tries=3, timeout=5)
    finally:
        sf_sandbox.reset_permissions()
    assert sf_sandbox.permissions()["events"][SF_TOPIC] == "S"


def test_subscribe_is_checked_again_when_the_stream_reauthenticates(
        sf_pubsub: SfPubSub, sf_sandbox: Any) -> None:
    """Subscribe is checked when the stream authenticates: a profile edit alone does not cut
    a live stream (the permission is checked at subscribe, not per event), but a FetchRequest
    carrying ``auth_refresh`` is a new authentication and is refused PERMISSION_DENIED."""
    sub = sf_pubsub.subscribe(num=10)
    _drain_keepalive(sub)
    sf_sandbox.set_permissions(events={SF_TOPIC: ""})
    try:
        [order_id] = _approve(sf_sandbox, 1)
        [event] = sub.events(1)
        assert _decode(sf_pubsub, event)["OrderId__c"] == order_id
        sub.fetch(auth_refresh=sf_sandbox.login()["access_token"], num_requested=1)
        _assert_subscribe_refused(sub, tries=5, timeout=3)
    finally:
        sf_sandbox.reset_permissions()


def test_a_session_gone_mid_call_is_not_an_unrestricted_user(sf_pubsub: SfPubSub,
                                                             sf_sandbox: Any) -> None:
    """The session expires between authentication and the permission check (held apart by
    injected latency): the publish is refused UNAUTHENTICATED and GetTopic grants nothing —
    a token that names no user is not taken for one no profile holds."""
    from concurrent.futures import ThreadPoolExecutor

    schema_id = sf_pubsub.unary("GetTopic", sf_pubsub.pb.TopicRequest(topic_name=SF_TOPIC),
                                sf_pubsub.pb.TopicInfo).schema_id
    publish = _publish_request(sf_pubsub, schema_id, "801late", "late-uuid")
    before = sf_sandbox.counters()
    stored, calls = before["events_stored"], before["calls"]

    def arrived() -> bool:
        """Both calls are in: the sandbox counts a call and authenticates it in one step of
        its event loop (no await between them, and /counters is served by that loop), so a
        count seen here is an authenticated call, now waiting out the latency."""
        now = sf_sandbox.counters()["calls"]
        return all(now.get(kind, 0) == calls.get(kind, 0) + 1
                   for kind in ("grpc_get_topic", "grpc_publish"))

    sf_sandbox.set_faults(grpc_latency_ms=5000)  # ample time to see both arrive, then expire
    with ThreadPoolExecutor(2) as pool:
        topic = pool.submit(sf_pubsub.unary, "GetTopic",
                            sf_pubsub.pb.TopicRequest(topic_name=SF_TOPIC), sf_pubsub.pb.TopicInfo)
        published = pool.submit(sf_pubsub.unary, "Publish", publish, sf_pubsub.pb.PublishResponse)
        wait_for("GetTopic and Publish authenticated", arrived, timeout=30, interval=0.05)
        sf_sandbox.expire_tokens()
        with pytest.raises(grpc.RpcError) as info:
            published.result(timeout=15)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        answered = topic.result(timeout=15)
    assert not answered.can_publish and not answered.can_subscribe
    assert sf_sandbox.counters()["events_stored"] == stored
