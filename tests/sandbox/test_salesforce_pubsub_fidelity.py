"""Salesforce sandbox Pub/Sub: fidelity to the proto comments and REFERENCE §1.

* a quiet subscription's keepalive carries a fresh replay id (the bus moves on), so a
  resubscribe from it works after the last real event has left the 72 h retention;
* PublishStream: the first request names the topic, later ones may omit it, another is
  INVALID_ARGUMENT;
* size limits: an event over 1 MiB is refused in its PublishResult, a request over 4 MiB
  by gRPC; FetchResponses stay within 4 MiB (a client with gRPC's default limits reads them);
* the ``subscribe_error_*`` faults end the next Subscribe calls with a limit/transient error;
* the 24-hour delivery allocation, summed over all subscribers: once used up, a stream ends
  after delivering up to it and new Subscribes are refused (RESOURCE_EXHAUSTED +
  ``…subscription.limit.exceeded``) until deliveries leave the rolling window; a restart
  keeps the count.
"""

from __future__ import annotations

import io
import json
import queue
from collections.abc import Iterator
from typing import Any

import fastavro
import grpc
import pytest

from tests.sandbox.conftest import SF_TOPIC, SfPubSub, sf_error_code

CORRUPTED = "sfdc.platform.eventbus.grpc.subscription.fetch.replayid.corrupted"
LIMIT = "sfdc.platform.eventbus.grpc.subscription.limit.exceeded"
CONCURRENT = "sfdc.platform.eventbus.grpc.concurrent.client.limit.exceeded"
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def sf_sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """This module's own sandbox (overrides conftest's): sessions outlive a 73 h clock
    advance, so a stream stays open across it and keeps getting keepalives."""
    from sandbox.salesforce.harness import running_sandbox

    with running_sandbox(tmp_path_factory.mktemp("sf_fidelity"), keepalive_s=0.5,
                         idle_close_s=4.0, token_lifetime_s=100 * 3600) as sandbox:
        sandbox.seed(accounts=5, orders=40, broken_every=0)
        yield sandbox


def _keepalive(sub: Any, timeout: float = 5.0) -> Any:
    response = sub.next(timeout=timeout)
    assert not isinstance(response, tuple), "stream closed"
    assert not response.events, "an event where a keepalive was expected"
    return response


def _fresh_keepalive(sub: Any) -> Any:
    """A keepalive sent after everything the test did so far (drops those in flight)."""
    while True:
        try:
            sub.next(timeout=0.3)
        except queue.Empty:
            break
    return _keepalive(sub)


def _purged_upto(sf: Any) -> int:
    return int(sf.events(after=10**15, limit=1)["purged_upto"])


def _seq(replay_id: bytes) -> int:
    return int.from_bytes(bytes(replay_id)[1:], "big")


# -- 1. keepalive replay ids -------------------------------------------------------------
def test_a_quiet_subscriptions_keepalive_id_outlives_the_last_events_retention(
        sf_pubsub: SfPubSub, sf_sandbox: Any) -> None:
    sub = sf_pubsub.subscribe(num=10)
    _keepalive(sub)
    [order_id] = sf_sandbox.approve(1)
    [event] = sub.events(1)
    assert _fresh_keepalive(sub).latest_replay_id > event.replay_id  # the bus moved on

    sf_sandbox.advance_clock(hours=73)  # the event leaves retention; the stream stays open
    assert _purged_upto(sf_sandbox) >= _seq(event.replay_id)
    kept = _fresh_keepalive(sub).latest_replay_id
    assert _seq(kept) > _purged_upto(sf_sandbox)

    # a resubscribe from the keepalive id is accepted: nothing was missed
    resumed = sf_pubsub.subscribe(sf_pubsub.pb.CUSTOM, num=10, replay_id=kept)
    first = _keepalive(resumed)
    assert first.latest_replay_id >= kept
    # a later event: a greater replay id, delivered to both streams (CUSTOM is *after* the id)
    [later_id] = sf_sandbox.approve(1)
    [got] = resumed.events(1)
    [same] = sub.events(1)
    assert got.replay_id > kept and got.replay_id == same.replay_id
    assert got.event.id == same.event.id
    assert sf_sandbox.get_record(later_id)["Activation_Status__c"] == "Activating"


def test_a_keepalive_id_unrefreshed_for_72_hours_is_refused(sf_pubsub: SfPubSub,
                                                            sf_sandbox: Any) -> None:
    """Keepalive ids age like events: one not refreshed for longer than the retention is
    refused as REFERENCE says (older than 72 h), and events never count it."""
    stored = sf_sandbox.counters()["events_stored"]
    sub = sf_pubsub.subscribe(num=1)
    kept = _fresh_keepalive(sub).latest_replay_id
    sub.close()
    assert sf_sandbox.counters()["events_stored"] == stored  # a keepalive stores no event
    sf_sandbox.advance_clock(hours=73)
    assert _purged_upto(sf_sandbox) >= _seq(kept)
    refused = sf_pubsub.subscribe(sf_pubsub.pb.CUSTOM, num=1, replay_id=kept)
    with pytest.raises(grpc.RpcError) as info:
        refused.next(timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert sf_error_code(info.value) == CORRUPTED
    # EARLIEST starts at the oldest retained *event*; keepalive ids are never delivered
    [order_id] = sf_sandbox.approve(1)
    [event] = sf_pubsub.subscribe(sf_pubsub.pb.EARLIEST, num=10).events(1)
    assert _decode(sf_pubsub, event)["OrderId__c"] == order_id


def test_keepalive_ids_survive_a_restart_and_stay_below_later_events(
        sf_pubsub: SfPubSub, sf_sandbox: Any) -> None:
    sf_sandbox.approve(1)
    sub = sf_pubsub.subscribe(num=10)
    kept = _fresh_keepalive(sub).latest_replay_id
    sub.close()
    sf_sandbox.restart()  # same database: the replay sequence goes on past the keepalive id
    again = SfPubSub(sf_pubsub.pb, sf_sandbox)  # a new channel to the restarted server
    try:
        resumed = again.subscribe(again.pb.CUSTOM, num=10, replay_id=kept)
        _keepalive(resumed, timeout=10)
        [order_id] = sf_sandbox.approve(1)
        [event] = resumed.events(1)
        assert event.replay_id > kept
        assert _decode(again, event)["OrderId__c"] == order_id
    finally:
        again.close()


# -- 2. PublishStream topic -------------------------------------------------------------
def _payload(pubsub: SfPubSub, order_id: str, size: int = 0) -> tuple[str, bytes]:
    topic = pubsub.unary("GetTopic", pubsub.pb.TopicRequest(topic_name=SF_TOPIC),
                         pubsub.pb.TopicInfo)
    info = pubsub.unary("GetSchema", pubsub.pb.SchemaRequest(schema_id=topic.schema_id),
                        pubsub.pb.SchemaInfo)
    out = io.BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(json.loads(info.schema_json)), {
        "CreatedDate": 1, "CreatedById": "005000000000000AAA", "OrderId__c": order_id,
        "CorrelationId__c": "x" * size})
    return topic.schema_id, out.getvalue()


def _request(pubsub: SfPubSub, topic: str, *events: tuple[str, str, bytes]) -> Any:
    return pubsub.pb.PublishRequest(topic_name=topic, events=[
        pubsub.pb.ProducerEvent(id=uuid, schema_id=schema_id, payload=payload)
        for uuid, schema_id, payload in events])


@pytest.fixture
def may_publish(sf_sandbox: Any) -> Iterator[None]:
    sf_sandbox.set_permissions(events={SF_TOPIC: "SP"})
    yield
    sf_sandbox.reset_permissions()


def test_publish_stream_takes_the_topic_of_its_first_request(
        sf_pubsub: SfPubSub, sf_sandbox: Any, may_publish: None) -> None:
    schema_id, payload = _payload(sf_pubsub, "801stream")
    sub = sf_pubsub.subscribe(num=10)
    _keepalive(sub)
    method = sf_pubsub.channel.stream_stream(
        "/eventbus.v1.PubSub/PublishStream", request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=sf_pubsub.pb.PublishResponse.FromString)
    requests = [_request(sf_pubsub, SF_TOPIC, ("ps-1", schema_id, payload)),
                _request(sf_pubsub, "", ("ps-2", schema_id, payload)),  # omitted: the first's
                _request(sf_pubsub, SF_TOPIC, ("ps-3", schema_id, payload)),  # the same: fine
                _request(sf_pubsub, "/event/Other__e", ("ps-4", schema_id, payload))]
    call = method(iter(requests), metadata=sf_pubsub.metadata(), timeout=10)
    answered = []
    with pytest.raises(grpc.RpcError) as info:
        for response in call:
            answered.append(response)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "topic" in (info.value.details() or "")
    assert [[r.correlation_key for r in a.results] for a in answered] == [
        ["ps-1"], ["ps-2"], ["ps-3"]]
    assert all(r.replay_id and not r.error.msg for a in answered for r in a.results)
    assert [e.event.id for e in sub.events(3)] == ["ps-1", "ps-2", "ps-3"]


# -- 3. size limits ---------------------------------------------------------------------
def test_an_event_over_1_mib_is_refused_alone(sf_pubsub: SfPubSub, sf_sandbox: Any,
                                              may_publish: None) -> None:
    schema_id, small = _payload(sf_pubsub, "801small")
    _, big = _payload(sf_pubsub, "801big", size=MIB + 10)
    response = sf_pubsub.unary("Publish", _request(
        sf_pubsub, SF_TOPIC, ("small-1", schema_id, small), ("big", schema_id, big),
        ("small-2", schema_id, small)), sf_pubsub.pb.PublishResponse)
    ok1, refused, ok2 = response.results
    assert [r.correlation_key for r in response.results] == ["small-1", "big", "small-2"]
    assert ok1.replay_id and ok2.replay_id and not ok1.error.msg and not ok2.error.msg
    assert not refused.replay_id and refused.error.code == 1  # ErrorCode.PUBLISH
    assert "1 MiB" in refused.error.msg or "1048576" in refused.error.msg


def test_a_publish_request_over_4_mib_is_refused_by_grpc(sf_pubsub: SfPubSub, sf_sandbox: Any,
                                                         may_publish: None) -> None:
    stored = sf_sandbox.counters()["events_stored"]
    schema_id, payload = _payload(sf_pubsub, "801many", size=900 * 1024)
    request = _request(sf_pubsub, SF_TOPIC,
                       *[(f"many-{i}", schema_id, payload) for i in range(5)])  # ~4.4 MiB
    with pytest.raises(grpc.RpcError) as info:
        sf_pubsub.unary("Publish", request, sf_pubsub.pb.PublishResponse)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert sf_sandbox.counters()["events_stored"] == stored


def test_fetch_responses_stay_within_4_mib(sf_pubsub: SfPubSub, sf_sandbox: Any,
                                           may_publish: None) -> None:
    """Six events of ~0.9 MiB each, requested at once: delivered in several FetchResponses
    that a client with gRPC's default 4 MiB receive limit reads."""
    probe = sf_pubsub.subscribe(num=1)
    start = _fresh_keepalive(probe).latest_replay_id
    schema_id, payload = _payload(sf_pubsub, "801bulk", size=900 * 1024)
    for part in range(2):
        response = sf_pubsub.unary("Publish", _request(
            sf_pubsub, SF_TOPIC, *[(f"bulk-{part}-{i}", schema_id, payload) for i in range(3)]),
            sf_pubsub.pb.PublishResponse)
        assert all(r.replay_id for r in response.results)
    sub = sf_pubsub.subscribe(sf_pubsub.pb.CUSTOM, num=10, replay_id=start)
    got = sub.events(6, timeout=10)
    assert [e.event.id for e in got] == [f"bulk-{p}-{i}" for p in range(2) for i in range(3)]


# -- 4. Subscribe faults ----------------------------------------------------------------
def test_subscribe_error_fault_ends_the_next_subscribes(sf_pubsub: SfPubSub,
                                                         sf_sandbox: Any) -> None:
    sf_sandbox.set_faults(subscribe_error_calls=2, subscribe_error_status="RESOURCE_EXHAUSTED",
                          subscribe_error_code=LIMIT)
    for _ in range(2):
        with pytest.raises(grpc.RpcError) as info:
            sf_pubsub.subscribe(num=1).next(timeout=5)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert sf_error_code(info.value) == LIMIT
    assert sf_sandbox.set_faults()["subscribe_error_calls"] == 0
    _keepalive(sf_pubsub.subscribe(num=1))  # the third is served

    # -1: every Subscribe until cleared; another code; auth is still checked first
    sf_sandbox.set_faults(subscribe_error_calls=-1, subscribe_error_code=CONCURRENT)
    for _ in range(3):
        with pytest.raises(grpc.RpcError) as info:
            sf_pubsub.subscribe(num=1).next(timeout=5)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert sf_error_code(info.value) == CONCURRENT
    with pytest.raises(grpc.RpcError) as info:
        sf_pubsub.subscribe(num=1, token="00Dbogus!token").next(timeout=5)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED

    # a transient INTERNAL without a Salesforce code: no error-code trailer at all
    sf_sandbox.set_faults(subscribe_error_status="INTERNAL", subscribe_error_code="")
    with pytest.raises(grpc.RpcError) as info:
        sf_pubsub.subscribe(num=1).next(timeout=5)
    assert info.value.code() == grpc.StatusCode.INTERNAL
    assert sf_error_code(info.value) is None
    sf_sandbox.reset_faults()
    _keepalive(sf_pubsub.subscribe(num=1))


def test_subscribe_error_fault_is_validated(sf_sandbox: Any) -> None:
    from sandbox.salesforce.admin_client import AdminError

    with pytest.raises(AdminError, match="subscribe_error_status"):
        sf_sandbox.set_faults(subscribe_error_status="NO_SUCH_STATUS")
    with pytest.raises(AdminError, match="subscribe_error_status"):
        sf_sandbox.set_faults(subscribe_error_status="OK")
    assert sf_sandbox.fail_subscribes(1, LIMIT)["subscribe_error_calls"] == 1
    sf_sandbox.reset_faults()
    assert sf_sandbox.set_faults()["subscribe_error_calls"] == 0


def _decode(pubsub: SfPubSub, event: Any) -> dict:
    info = pubsub.unary("GetSchema", pubsub.pb.SchemaRequest(schema_id=event.event.schema_id),
                        pubsub.pb.SchemaInfo)
    schema = fastavro.parse_schema(json.loads(info.schema_json))
    return fastavro.schemaless_reader(io.BytesIO(event.event.payload), schema)


# -- 5. replay ids leave gaps -----------------------------------------------------------
def test_replay_ids_increase_with_gaps_and_custom_resumes_right_after_one(
        sf_pubsub: SfPubSub, sf_sandbox: Any, may_publish: None) -> None:
    """REFERENCE §1: replay ids are not contiguous. Fifty events published at once get
    strictly increasing ids with gaps between them (not the consecutive numbers a bare
    sequence gives), and a CUSTOM subscribe from one resumes with the very next event."""
    schema_id, payload = _payload(sf_pubsub, "801gaps")
    response = sf_pubsub.unary("Publish", _request(
        sf_pubsub, SF_TOPIC, *[(f"gap-{i}", schema_id, payload) for i in range(50)]),
        sf_pubsub.pb.PublishResponse)
    assert [r.correlation_key for r in response.results] == [f"gap-{i}" for i in range(50)]
    numbers = [_seq(r.replay_id) for r in response.results]
    steps = [b - a for a, b in zip(numbers, numbers[1:], strict=False)]
    assert all(step >= 1 for step in steps), numbers  # strictly increasing
    assert any(step > 1 for step in steps), numbers  # not contiguous
    sub = sf_pubsub.subscribe(sf_pubsub.pb.CUSTOM, num=100,
                              replay_id=response.results[24].replay_id)
    got = sub.events(25, timeout=10)
    assert [e.event.id for e in got] == [f"gap-{i}" for i in range(25, 50)]
    assert [e.replay_id for e in got] == [r.replay_id for r in response.results[25:]]


# -- 6. delivery allocation -------------------------------------------------------------
def _assert_allocation_exhausted(exc: grpc.RpcError) -> None:
    """The limit error as the injected ``subscribe_error_*`` limit fault renders it."""
    assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc
    assert sf_error_code(exc) == LIMIT
    assert "delivery allocation" in (exc.details() or "")


def _events_until_end(sub: Any, count: int) -> tuple[list[Any], grpc.RpcError | None]:
    """The events ``sub`` delivers until it has ``count`` or ends with an error (keepalives
    skipped)."""
    got: list[Any] = []
    while len(got) < count:
        try:
            response = sub.next(timeout=5)
        except grpc.RpcError as exc:
            return got, exc
        assert not isinstance(response, tuple), f"stream closed after {len(got)} events"
        got.extend(response.events)
    return got, None


def test_an_exhausted_delivery_allocation_ends_the_stream_and_refuses_subscribes(
        sf_pb: Any, tmp_path: Any) -> None:
    """REFERENCE §1: a 24 h delivery allocation; exceeding it ends subscriptions with
    ``…subscription.limit.exceeded``. Allocation 5, ten events, EARLIEST with 100 requested:
    exactly five delivered, then the limit error; a new Subscribe is refused, across a
    restart too; 24 hours later (sandbox clock) delivery resumes, up to the allocation."""
    from sandbox.salesforce.harness import running_sandbox

    with running_sandbox(tmp_path / "sf", keepalive_s=0.5, idle_close_s=4.0,
                         token_lifetime_s=100 * 3600, delivery_allocation=5) as sf:
        sf.seed(accounts=2, orders=11, broken_every=0)
        approved = sf.approve(10)  # the Flow publishes ten events
        assert sf.counters()["delivery_allocation"] == 5
        pubsub = SfPubSub(sf_pb, sf)
        try:
            first, error = _events_until_end(pubsub.subscribe(pubsub.pb.EARLIEST, num=100), 10)
            assert len(first) == 5, [e.event.id for e in first]  # up to the allocation
            assert error is not None, "the stream went on past the allocation"
            _assert_allocation_exhausted(error)
            assert sf.counters()["events_delivered_24h"] == 5
            with pytest.raises(grpc.RpcError) as info:  # a new Subscribe: refused at once
                pubsub.subscribe(pubsub.pb.CUSTOM, num=100,
                                 replay_id=first[-1].replay_id).next(timeout=5)
            _assert_allocation_exhausted(info.value)
        finally:
            pubsub.close()

        sf.restart()  # same database: the deliveries of the last 24 hours are remembered
        pubsub = SfPubSub(sf_pb, sf)
        try:
            assert sf.counters()["events_delivered_24h"] == 5
            with pytest.raises(grpc.RpcError) as info:
                pubsub.subscribe(pubsub.pb.CUSTOM, num=100,
                                 replay_id=first[-1].replay_id).next(timeout=10)
            _assert_allocation_exhausted(info.value)

            sf.advance_clock(hours=24)  # the five deliveries leave the window (not retention)
            assert sf.counters()["events_delivered_24h"] == 0
            resumed = pubsub.subscribe(pubsub.pb.CUSTOM, num=100, replay_id=first[-1].replay_id)
            rest = resumed.events(5, timeout=10)
            assert len(rest) == 5
            assert sorted(_decode(pubsub, e)["OrderId__c"] for e in first + rest) == \
                sorted(approved)  # each of the ten once
            _keepalive(resumed)  # caught up, the allocation just used up: the stream stays
            sf.approve(1)  # one more event to deliver: none left, the stream ends
            more, error = _events_until_end(resumed, 1)
            assert more == [] and error is not None
            _assert_allocation_exhausted(error)
            assert sf.counters()["events_delivered_24h"] == 5
        finally:
            pubsub.close()


def test_the_delivery_allocation_is_summed_over_all_subscribers(
        sf_pubsub: SfPubSub, sf_sandbox: Any) -> None:
    """Two caught-up streams, room for three deliveries, two new events (four deliveries):
    three are delivered between them and one stream ends with the limit error; Subscribe is
    refused until the allocation (a run-time setting, as ``daily_limit``) is raised."""
    from sandbox.salesforce.admin_client import AdminError

    with pytest.raises(AdminError, match="delivery_allocation"):
        sf_sandbox.set_faults(delivery_allocation=-1)
    streams = [sf_pubsub.subscribe(num=100), sf_pubsub.subscribe(num=100)]
    for stream in streams:
        _fresh_keepalive(stream)  # open and caught up
    used = sf_sandbox.counters()["events_delivered_24h"]
    sf_sandbox.set_faults(delivery_allocation=used + 3)
    sf_sandbox.approve(2)
    outcomes = [_events_until_end(stream, 2) for stream in streams]
    assert sum(len(got) for got, _ in outcomes) == 3, outcomes
    errors = [error for _, error in outcomes if error is not None]
    assert len(errors) == 1, outcomes
    _assert_allocation_exhausted(errors[0])
    with pytest.raises(grpc.RpcError) as info:
        sf_pubsub.subscribe(num=1).next(timeout=5)
    _assert_allocation_exhausted(info.value)

    sf_sandbox.set_faults(delivery_allocation=used + 100)
    _keepalive(sf_pubsub.subscribe(num=1))
    sf_sandbox.reset_faults()  # back to the configured allocation
    assert sf_sandbox.set_faults()["delivery_allocation"] == 5_000_000
