"""Unit tests of the connector's pure parts: flow control, backoff, error codes, records."""

from __future__ import annotations

import io
import json
import logging
import random
from types import SimpleNamespace
from typing import Any

import fastavro
import grpc
import pytest
from confluent_kafka import KafkaError as CKafkaError
from confluent_kafka import KafkaException

from common.avro import AvroSerde, load_schema
from common.backoff import Backoff
from common.deadletter import parse_headers
from common.errors import (
    ConfigError,
    KafkaError,
    ProducerFailedError,
    ProducerFencedError,
    ReplayIdInvalidError,
    SalesforceAuthError,
    SalesforceError,
    SalesforceLimitError,
    TransactionTimedOutError,
)
from common.kafka import PAUSE_SLACK_S
from connectors.decode import (
    KAFKA_MESSAGE_MAX_BYTES,
    TRUNCATED_PAYLOAD_BYTES,
    EventDecoder,
    SchemaCache,
    UnknownSchemaError,
)
from connectors.offsets import EVENT, OffsetCodec, Position
from connectors.pubsub import errors as perr
from connectors.pubsub.flow import MAX_OUTSTANDING, FlowControl
from connectors.pubsub.generated import pubsub_api_pb2 as pb
from connectors.writer import (
    TransactionalWriter,
    producer_config,
    transactional_id,
    translate,
)

# -- flow control ------------------------------------------------------------------------


def test_flow_initial_request_is_capacity_and_never_exceeds_100() -> None:
    flow = FlowControl(100, 1000)
    assert flow.initial() == 100
    assert flow.outstanding == 100
    with pytest.raises(ValueError):
        FlowControl(MAX_OUTSTANDING + 1)


def test_flow_tops_up_as_delivered_in_chunks() -> None:
    flow = FlowControl(100, 1000, min_request=25)
    flow.initial()
    assert flow.delivered(10) == 0          # deficit 10 < chunk 25: no tiny request
    assert flow.delivered(20) == 30         # deficit 30: ask for it
    assert flow.outstanding == 100
    assert flow.buffered == 30


def test_flow_stops_requesting_when_buffer_full_and_resumes_on_consume() -> None:
    flow = FlowControl(100, 250, min_request=1)
    flow.initial()
    total_requested = 100
    for _ in range(10):
        total_requested += flow.delivered(flow.outstanding)
        assert flow.outstanding <= 100
        assert flow.buffered + flow.outstanding <= 250
    assert flow.buffered == 250 and flow.outstanding == 0
    assert flow.delivered(0) == 0
    assert flow.consumed(250) == 100        # drained: full capacity again
    assert flow.outstanding == 100


def test_flow_random_walk_respects_bounds() -> None:
    rng = random.Random(7)
    flow = FlowControl(100, 400, min_request=10)
    flow.initial()
    for _ in range(2000):
        if rng.random() < 0.6 and flow.outstanding:
            flow.delivered(rng.randint(1, flow.outstanding))
        elif flow.buffered:
            flow.consumed(rng.randint(1, flow.buffered))
        assert 0 <= flow.outstanding <= 100
        assert flow.buffered + flow.outstanding <= 400
    flow.consumed(flow.buffered)
    assert flow.outstanding == 100, "an empty buffer always restores full credit (no starvation)"


# -- backoff -----------------------------------------------------------------------------


def test_backoff_grows_capped_with_jitter_and_resets() -> None:
    b = Backoff(0.5, 8.0, rng=random.Random(1))
    delays = [b.next() for _ in range(10)]
    assert all(0.25 <= d <= 8.0 for d in delays)
    assert max(delays[5:]) > 4.0            # reached the cap region
    assert len({round(d, 6) for d in delays}) == len(delays)  # jittered
    b.reset()
    assert b.next() <= 0.5


# -- error classification ----------------------------------------------------------------


class FakeRpcError(grpc.RpcError):
    def __init__(self, status: grpc.StatusCode, details: str, error_code: str = "") -> None:
        self._status, self._details, self._code = status, details, error_code

    def code(self) -> grpc.StatusCode:
        return self._status

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple:
        return (("error-code", self._code),) if self._code else ()


@pytest.mark.parametrize(("status", "code", "kind", "cause"), [
    (grpc.StatusCode.INVALID_ARGUMENT, perr.REPLAY_CORRUPTED, ReplayIdInvalidError, "replay_invalid"),
    (grpc.StatusCode.INVALID_ARGUMENT, perr.REPLAY_VALIDATION_FAILED, ReplayIdInvalidError,
     "replay_invalid"),
    (grpc.StatusCode.UNAUTHENTICATED, perr.AUTH_ERROR, SalesforceAuthError, "auth"),
    (grpc.StatusCode.UNAUTHENTICATED, "", SalesforceAuthError, "auth"),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, perr.LIMIT_EXCEEDED, SalesforceLimitError, "limit"),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, perr.CONCURRENT_CLIENTS, SalesforceLimitError,
     "concurrent_clients"),
    (grpc.StatusCode.UNAVAILABLE, "sfdc.platform.eventbus.grpc.service.unavailable",
     SalesforceError, "transient"),
    (grpc.StatusCode.INTERNAL, "", SalesforceError, "transient"),
    (grpc.StatusCode.NOT_FOUND, "sfdc.platform.eventbus.grpc.topic.not.found", SalesforceError,
     "refused"),
    (grpc.StatusCode.PERMISSION_DENIED, "", SalesforceError, "refused"),
    (grpc.StatusCode.INVALID_ARGUMENT, "", SalesforceError, "refused"),
])
def test_classify(status, code, kind, cause) -> None:
    err = perr.classify(FakeRpcError(status, "boom", code), limit_backoff_s=42)
    assert type(err) is kind
    assert err.cause == cause
    if kind is SalesforceLimitError:
        assert err.retry_after == 42
    if kind is SalesforceError:
        assert err.retryable


def test_classify_reads_code_from_details_when_trailer_missing() -> None:
    err = perr.classify(FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT,
                                     "replay id invalid " + perr.REPLAY_CORRUPTED))
    assert isinstance(err, ReplayIdInvalidError)


# -- record building ---------------------------------------------------------------------

WRITER = {
    "type": "record", "name": "OrderProvisionRequested__e", "namespace": "com.sforce.eventbus",
    "fields": [
        {"name": "CreatedDate", "type": "long"}, {"name": "CreatedById", "type": "string"},
        {"name": "OrderId__c", "type": ["null", "string"], "default": None},
        {"name": "IdemKey__c", "type": ["null", "string"], "default": None},
        {"name": "CorrelationId__c", "type": ["null", "string"], "default": None},
        {"name": "NewField__c", "type": ["null", "string"], "default": None},
    ],
}


def payload(record: dict, schema: dict = WRITER) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(schema), record)
    return buf.getvalue()


def consumer_event(payload_bytes: bytes, schema_id: str = "S1", uuid: str = "u-1",
                   replay: bytes = b"\x00\x01") -> pb.ConsumerEvent:
    return pb.ConsumerEvent(event=pb.ProducerEvent(id=uuid, schema_id=schema_id,
                                                   payload=payload_bytes), replay_id=replay)


def decoder(fetch=None) -> EventDecoder:
    fetch = fetch or (lambda sid: json.dumps(WRITER))
    return EventDecoder(SchemaCache(fetch), channel="/event/OrderProvisionRequested__e",
                        connector="c1")


def test_build_record_projects_writer_onto_our_schema() -> None:
    ev = consumer_event(payload({"CreatedDate": 1700000000000, "CreatedById": "005x",
                                 "OrderId__c": "801000000000001AAA", "IdemKey__c": "k",
                                 "CorrelationId__c": "corr", "NewField__c": "ignored"}))
    rec = decoder().build(ev, received_at_ms=1700000000500)
    assert not rec.dead_letter
    assert rec.key == b"801000000000001AAA"
    value = AvroSerde("provision_request").decode(rec.value)
    assert value["event_uuid"] == "u-1" and value["replay_id"] == b"\x00\x01"
    assert value["schema_id"] == "S1" and value["IdemKey__c"] == "k"
    assert value["Version__c"] is None
    headers = dict(rec.headers)
    assert headers["sfprov.schema"] == load_schema("provision_request")["name"].encode()
    assert headers["sfprov.replay_id"] == b"0001"
    assert headers["sfprov.correlation_id"] == b"corr"


def test_one_order_published_with_either_id_form_lands_on_one_key() -> None:
    """OrderId__c "801000000000001" (15 characters) and "801000000000001AAA" (its
    18-character form) are one Order: keyed as given they were two keys, two partitions
    (no longer one partition, one order per Order key), and the worker's tables, keyed by
    the value's OrderId__c and partitioned like the requests, need the value to be the key."""
    from sandbox.salesforce.ids import to18  # an independent checksum, as an oracle

    def build(order_id: str, uuid: str) -> Any:
        ev = consumer_event(payload({"CreatedDate": 1, "CreatedById": "005x",
                                     "OrderId__c": order_id, "IdemKey__c": "k",
                                     "CorrelationId__c": None, "NewField__c": None}), uuid=uuid)
        return decoder().build(ev)
    serde = AvroSerde("provision_request")
    for id15 in ("801000000000001", "801Ab00000Xy9Zq", "001A0000006Vm9r"):
        id18 = to18(id15)
        assert id18 is not None and len(id18) == 18
        forms = [id15, id18, id18.lower(), id18.upper()]  # 18 characters: case-insensitive
        records = [build(form, f"u-{i}") for i, form in enumerate(forms)]
        assert not any(r.dead_letter for r in records)
        assert {r.key for r in records} == {id18.encode()}, id15
        assert {serde.decode(r.value)["OrderId__c"] for r in records} == {id18}
        assert {r.order_id for r in records} == {id18}
    # an 18-character id whose checksum fits no casing of it: as given (Salesforce refuses it)
    assert build("801000000000001ZZZ", "u-x").key == b"801000000000001ZZZ"


def test_build_undecodable_payload_is_dead_letter_with_raw_bytes() -> None:
    ev = consumer_event(b"\xff\xff\xff\xff\xff\xff\xff", uuid="u-bad", replay=b"\x09")
    rec = decoder().build(ev)
    assert rec.dead_letter and rec.reason == "undecodable"
    assert rec.value == b"\xff\xff\xff\xff\xff\xff\xff"
    h = parse_headers(rec.headers)
    assert h["stage"] == "connector" and h["event_uuid"] == "u-bad"
    assert h["replay_id"] == "09" and h["schema_id"] == "S1" and h["reason"]


def test_build_payload_with_bytes_after_the_record_is_dead_letter() -> None:
    """A valid record followed by more bytes decoded without a word: the payload was written
    with another schema than the one its id names, and its first fields were read as ours."""
    whole = payload({"CreatedDate": 1, "CreatedById": "005x",
                     "OrderId__c": "801000000000001AAA", "IdemKey__c": "k",
                     "CorrelationId__c": None, "RequestedBy__c": None, "Version__c": 1.0})
    assert not decoder().build(consumer_event(whole)).dead_letter
    rec = decoder().build(consumer_event(whole + b"\x02\x00", uuid="u-long"))
    assert rec.dead_letter and rec.reason == "undecodable"
    assert rec.value == whole + b"\x02\x00"
    assert "2 byte(s) left after the record" in parse_headers(rec.headers)["reason"]


def test_build_missing_order_id_is_dead_letter() -> None:
    ev = consumer_event(payload({"CreatedDate": 1, "CreatedById": "005x", "OrderId__c": None,
                                 "IdemKey__c": None, "CorrelationId__c": None,
                                 "NewField__c": None}))
    rec = decoder().build(ev)
    assert rec.dead_letter and rec.reason == "missing_order_id"


@pytest.mark.parametrize("bad", ["   ", "801' OR Name != '", "801" + "9" * 49_997, "801x"])
def test_build_order_id_that_is_not_a_salesforce_id_is_dead_letter(bad: str) -> None:
    ev = consumer_event(payload({"CreatedDate": 1, "CreatedById": "005x", "OrderId__c": bad,
                                 "IdemKey__c": None, "CorrelationId__c": None,
                                 "NewField__c": None}))
    rec = decoder().build(ev)
    assert rec.dead_letter and rec.reason == "invalid_order_id"
    reason = parse_headers(rec.headers)["reason"]
    assert "not a 15- or 18-character Salesforce id" in reason and len(reason) < 200


def test_event_too_large_for_kafka_is_dead_letter_with_truncated_payload() -> None:
    # Salesforce allows 1 MB events; with the envelope such an event exceeds the producer's
    # message.max.bytes, and writing it would fail every transaction (a crash loop).
    big = payload({"CreatedDate": 1, "CreatedById": "005x", "OrderId__c": "801000000000001AAA",
                   "IdemKey__c": "k", "CorrelationId__c": "c" * 999_000, "NewField__c": None})
    rec = decoder().build(consumer_event(big, uuid="u-big"))
    assert rec.dead_letter and rec.reason == "oversized"
    assert len(rec.value) == TRUNCATED_PAYLOAD_BYTES and big.startswith(rec.value)
    h = parse_headers(rec.headers)
    assert h["error_class"] == "RecordTooLarge" and "too large" in h["reason"]
    assert h["payload_bytes"] == str(len(big)) and h["order_id"] == "801000000000001AAA"
    assert sum(len(k) + len(v) for k, v in rec.headers) + len(rec.key) + len(rec.value) \
        < KAFKA_MESSAGE_MAX_BYTES
    fits = payload({"CreatedDate": 1, "CreatedById": "005x", "OrderId__c": "801000000000001AAA",
                    "IdemKey__c": "k", "CorrelationId__c": "c" * 400_000, "NewField__c": None})
    assert not decoder().build(consumer_event(fits)).dead_letter


def test_an_unencodable_event_of_a_known_order_names_the_order(monkeypatch) -> None:
    """An event whose request cannot be encoded (non-retryable SerdeError) after its Order id
    was read: the dead letter carried no Order id (key: the event uuid), so `sfprov trace`
    and `dlq --order-id` said the Order had no dead letter."""
    from common.avro import SerdeError

    dec = decoder()

    def refuse(_record):
        raise SerdeError("value does not fit the schema", retryable=False)
    monkeypatch.setattr(dec.serde, "encode", refuse)
    ev = consumer_event(payload({"CreatedDate": 1, "CreatedById": "005x",
                                 "OrderId__c": "801000000000001AAA", "IdemKey__c": "k",
                                 "CorrelationId__c": None, "NewField__c": None}))
    rec = dec.build(ev)
    assert rec.dead_letter and rec.reason == "unencodable"
    assert parse_headers(rec.headers)["order_id"] == "801000000000001AAA"


def test_unknown_schema_is_dead_letter_and_cached_negatively() -> None:
    calls = []

    def fetch(sid: str) -> str:
        calls.append(sid)
        err = SalesforceError("no such schema", retryable=True)
        err.grpc_status = "NOT_FOUND"
        raise err

    dec = decoder(fetch)
    r1 = dec.build(consumer_event(b"\x00", schema_id="nope"))
    r2 = dec.build(consumer_event(b"\x00", schema_id="nope", uuid="u-2"))
    assert r1.dead_letter and r1.reason == "unknown_schema" and r2.dead_letter
    assert calls == ["nope"]


@pytest.mark.parametrize("text", [
    '{"type": "nope"}',
    "not json",
    '{"type":' * 3000 + '"string"' + "}" * 3000,  # RecursionError in the parser
], ids=["unknown-type", "not-json", "nested-3000"])
def test_a_schema_text_fastavro_cannot_parse_is_a_dead_letter_not_a_crash(text) -> None:
    dec = decoder(lambda sid: text)
    out = dec.build(consumer_event(b"\x00", schema_id="deep"))
    assert out.dead_letter and out.reason == "unknown_schema", out
    assert any(b"not valid Avro" in v for _, v in out.headers), out.headers


def test_transient_schema_failure_is_raised_not_dead_lettered() -> None:
    def fetch(sid: str) -> str:
        err = SalesforceError("unavailable", retryable=True)
        err.grpc_status = "UNAVAILABLE"
        raise err

    with pytest.raises(SalesforceError) as info:
        decoder(fetch).build(consumer_event(b"\x00"))
    assert not isinstance(info.value, UnknownSchemaError)


def test_schema_cache_fetches_once_per_id() -> None:
    calls = []
    cache = SchemaCache(lambda sid: calls.append(sid) or json.dumps(WRITER))
    for _ in range(5):
        cache.get("A")
    cache.get("B")
    assert calls == ["A", "B"]


# -- offsets, producer config ------------------------------------------------------------


def test_offset_and_gap_records_round_trip() -> None:
    codec = OffsetCodec("c1", "/event/X__e")
    assert codec.key == b"c1|/event/X__e"
    pos = Position(b"\x01\x02", EVENT, 1700000000123, "u-9")
    value, headers = codec.position_value(pos)
    assert codec.decode_position(value) == pos
    gap, _ = codec.gap_value(last_good=pos, policy="EARLIEST", error_code="x.corrupted",
                             error_message="too old", detected_at_ms=5)
    rec = codec.decode_gap(gap)
    assert rec["last_good_replay_id"] == b"\x01\x02" and rec["policy"] == "EARLIEST"


def test_producer_config_keeps_java_compatible_partitioner() -> None:
    from common.settings import KafkaSettings

    kafka = KafkaSettings.load({}, topic_prefix="p.")
    cfg = producer_config(kafka, transactional_id(kafka, "conn", "/event/X__e"))
    assert cfg["partitioner"] == "murmur2_random"
    assert cfg["acks"] == "all" and cfg["enable.idempotence"] is True
    assert cfg["transactional.id"] == "p.conn|event.X__e"


def test_transaction_timeout_setting_reaches_the_producer() -> None:
    from common.settings import ConnectorSettings, KafkaSettings

    kafka = KafkaSettings.load({})
    assert ConnectorSettings.load({}).transaction_timeout_s == 60.0
    cfg = producer_config(kafka, "t", ConnectorSettings.load(
        {"CONNECTOR_TRANSACTION_TIMEOUT_S": "2.5"}).transaction_timeout_s)
    assert cfg["transaction.timeout.ms"] == 2500
    # librdkafka refuses message.timeout.ms above the transaction timeout
    assert 0 < cfg["message.timeout.ms"] < cfg["transaction.timeout.ms"]
    assert producer_config(kafka, "t")["message.timeout.ms"] == 55_000
    for bad in ("0.5", "901", "x"):
        with pytest.raises(ConfigError, match="^CONNECTOR_TRANSACTION_TIMEOUT_S"):
            ConnectorSettings.load({"CONNECTOR_TRANSACTION_TIMEOUT_S": bad})


@pytest.mark.parametrize("code", [CKafkaError._FENCED, CKafkaError.PRODUCER_FENCED,
                                  CKafkaError.INVALID_PRODUCER_EPOCH])
def test_a_fence_is_told_from_a_transaction_timeout_by_the_transactions_age(code) -> None:
    exc = KafkaException(CKafkaError(code, "fenced by a newer instance", fatal=True))
    young = translate(exc, "transaction", "tid", age_s=1.9, timeout_s=2.0)
    assert type(young) is ProducerFencedError            # certainly a newer instance: exit 3
    old = translate(exc, "transaction", "tid", age_s=2.0, timeout_s=2.0)
    assert isinstance(old, TransactionTimedOutError)      # perhaps our own timeout: re-init
    assert isinstance(old, ProducerFencedError) and old.retryable and old.age_s == 2.0
    assert type(translate(exc, "init_transactions", "tid")) is ProducerFencedError
    other = translate(KafkaException(CKafkaError(CKafkaError._TIMED_OUT, "slow")), "t", "tid",
                      age_s=99, timeout_s=2)
    assert type(other) is KafkaError


class _FailingAbort:
    """A producer whose transaction fails abortably, and whose abort then fails fatally."""

    def __init__(self, abort_code: int, abort_fatal: bool) -> None:
        self.abort_code, self.abort_fatal = abort_code, abort_fatal

    def begin_transaction(self) -> None:
        pass

    def produce(self, *_args: Any, **_kwargs: Any) -> None:
        pass

    def commit_transaction(self, _timeout: float) -> None:
        raise KafkaException(CKafkaError(CKafkaError._MSG_TIMED_OUT, "3 message(s) timed out",
                                         txn_requires_abort=True))

    def abort_transaction(self, _timeout: float) -> None:
        raise KafkaException(CKafkaError(self.abort_code, "invalid state",
                                         fatal=self.abort_fatal))


def test_a_fatal_error_that_is_not_a_fence_asks_for_a_new_producer() -> None:
    fatal = KafkaException(CKafkaError(CKafkaError.INVALID_TXN_STATE, "invalid state",
                                       fatal=True))
    err = translate(fatal, "transaction", "tid", age_s=0.1, timeout_s=2.0)
    assert type(err) is ProducerFailedError and err.retryable
    assert not isinstance(err, ProducerFencedError)        # not exit 3: a new producer


@pytest.mark.parametrize("abort_fatal", [True, False])
def test_an_abort_that_fails_the_producer_is_raised_as_a_failed_producer(abort_fatal) -> None:
    """Fatal: the chaos run's case, only a new producer goes on. Not fatal (nor retriable):
    the transaction is not settled all the same — librdkafka's next ``begin_transaction``
    on this producer is refused (``_STATE``, see :class:`_Librdkafka`) — so a new producer
    too, whose ``init_transactions`` settles it. (This fake's ``begin_transaction`` always
    succeeds: the test once took that for a producer still usable.)"""
    from common.settings import KafkaSettings

    tw = TransactionalWriter(KafkaSettings.load({}), "tid")
    tw._producer = _FailingAbort(CKafkaError.INVALID_TXN_STATE, abort_fatal)  # type: ignore
    with pytest.raises(KafkaError) as raised:
        tw.write([("t", b"k", b"v", [])])
    assert type(raised.value) is ProducerFailedError and raised.value.retryable
    assert "abort_transaction" in str(raised.value)


@pytest.mark.parametrize("open_s", [13.0, 3.0])
def test_a_fenced_abort_is_told_by_the_transactions_age_too(monkeypatch, open_s) -> None:
    """A chaos run (a broker node killed under an open transaction): records timed out
    (abortable, an epoch bump needed) 13 s into a transaction with a 10 s timeout, and the
    abort failed with the fatal ``_FENCED`` — the broker had timed the transaction out. Like
    a failed commit, a fenced abort of an older transaction may be our own timeout (a new
    producer, in process); of a younger one it is a newer instance (exit 3)."""
    from common.settings import KafkaSettings
    from connectors import writer as w

    clock = [1000.0]
    monkeypatch.setattr(w.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(w, "lease_clock", lambda: clock[0])
    tw = TransactionalWriter(KafkaSettings.load({}), "tid", transaction_timeout_s=10.0)
    producer = _FailingAbort(CKafkaError._FENCED, abort_fatal=True)
    commit = producer.commit_transaction

    def slow_commit(timeout: float) -> None:
        clock[0] += open_s
        commit(timeout)
    producer.commit_transaction = slow_commit  # type: ignore[method-assign]
    tw._producer = producer  # type: ignore[assignment]
    with pytest.raises(ProducerFencedError) as raised:
        tw.write([("t", b"k", b"v", [])])
    if open_s >= 10.0:
        assert isinstance(raised.value, TransactionTimedOutError)
        assert raised.value.age_s == open_s and raised.value.retryable
    else:
        assert type(raised.value) is ProducerFencedError



def test_a_fence_after_a_host_suspend_is_the_brokers_timeout_not_another_instance(
        monkeypatch) -> None:
    """The host suspended (laptop lid, S3/S4) for 100 s while a transaction was open: the
    broker's clock ran on and it timed the transaction out (epoch bumped), so the commit is
    fenced. ``time.monotonic`` stops while suspended: on it the transaction looked 0 s old,
    the fence was blamed on "another connector instance" and the connector exited 3 (not
    restarted). The age is read on the lease clock (CLOCK_BOOTTIME), which counts the
    suspend: a timeout, retried with a new producer."""
    from common.settings import KafkaSettings
    from connectors import writer as w

    boot = [1000.0]                                         # CLOCK_BOOTTIME
    monkeypatch.setattr(w.time, "monotonic", lambda: 500.0)  # stopped while suspended
    monkeypatch.setattr(w, "lease_clock", lambda: boot[0])

    class _SuspendedThenFenced(_FailingAbort):
        def commit_transaction(self, _timeout: float) -> None:
            boot[0] += 100.0                                 # the host sleeps mid-commit
            raise KafkaException(CKafkaError(CKafkaError._FENCED, "fenced", fatal=True))

    tw = TransactionalWriter(KafkaSettings.load({}), "tid", transaction_timeout_s=60.0)
    tw._producer = _SuspendedThenFenced(CKafkaError._FENCED, abort_fatal=True)  # type: ignore
    with pytest.raises(ProducerFencedError) as raised:
        tw.write([("t", b"k", b"v", [])])
    assert isinstance(raised.value, TransactionTimedOutError), repr(raised.value)
    assert raised.value.age_s == 100.0 and raised.value.retryable


class _Librdkafka:
    """librdkafka's transaction states on the path of a broker cut off while events flow
    (rdkafka_txnmgr.c), the broker away until ``back_at`` (None: not back). Only
    ``begin_transaction`` in READY begins (else ``_STATE`` "Operation not valid in state
    …", neither retriable nor fatal; in FATAL the fatal error). The first ``failing``
    transactions' records time out: their commit fails abortably after ``commit_s`` (the
    message timeout). An abort while cut off times out retriably after its timeout and
    leaves ABORTING_TRANSACTION (calling it again resumes it); once the broker is back, the
    coordinator has timed out a transaction older than ``transaction_timeout_s`` and bumped
    the epoch: the resumed abort is fenced (fatal), a younger one is aborted. ``clock``:
    the fake ``time.monotonic`` it advances (None: real time, nothing advanced)."""

    def __init__(self, clock: list[float] | None = None, *, back_at: float | None = 0.0,
                 failing: int = 1, commit_s: float = 55.0,
                 transaction_timeout_s: float = 60.0) -> None:
        self.clock, self.back_at, self.failing = clock, back_at, failing
        self.commit_s, self.transaction_timeout_s = commit_s, transaction_timeout_s
        self.state = "READY"
        self.transactions = self.aborts = self.inits = 0
        self.begun_at = 0.0
        self.produced: list[tuple[str, bytes]] = []
        self.committed: list[list[tuple[str, bytes]]] = []

    def _now(self) -> float:
        import time
        return self.clock[0] if self.clock is not None else time.monotonic()

    def _pass(self, seconds: float) -> None:
        if self.clock is not None:
            self.clock[0] += seconds

    def _fenced(self) -> KafkaException:
        return KafkaException(CKafkaError(
            CKafkaError._FENCED, "Failed to end transaction: Local: This instance has been "
            "fenced by a newer instance", fatal=True))

    def init_transactions(self, _timeout: float) -> None:
        self.inits += 1
        self.state = "READY"

    def begin_transaction(self) -> None:
        if self.state == "FATAL":
            raise self._fenced()
        if self.state != "READY":
            raise KafkaException(CKafkaError(
                CKafkaError._STATE, f"Operation not valid in state {self.state}"))
        self.state, self.begun_at = "IN_TRANSACTION", self._now()
        self.transactions += 1
        self.produced = []

    def produce(self, topic: str, **kwargs: Any) -> None:
        self.produced.append((topic, kwargs.get("key")))

    def commit_transaction(self, _timeout: float) -> None:
        if self.transactions <= self.failing:
            self._pass(self.commit_s)
            self.state = "ABORTABLE_ERROR"
            raise KafkaException(CKafkaError(CKafkaError._MSG_TIMED_OUT,
                                             "1 message(s) timed out on t [0]",
                                             txn_requires_abort=True))
        self.committed.append(self.produced)
        self.state = "READY"

    def abort_transaction(self, timeout: float) -> None:
        self.aborts += 1
        if self.state == "FATAL":
            raise self._fenced()
        if self.back_at is None or self._now() < self.back_at:
            self._pass(timeout)
            self.state = "ABORTING_TRANSACTION"
            raise KafkaException(CKafkaError(CKafkaError._TIMED_OUT,
                                             "Transactional operation timed out",
                                             retriable=True))
        if self._now() - self.begun_at >= self.transaction_timeout_s:
            self.state = "FATAL"  # the coordinator timed it out: the epoch was bumped
            raise self._fenced()
        self.state = "READY"

    def poll(self, _timeout: float) -> int:
        return 0

    def flush(self, _timeout: float) -> int:
        return 0

    def purge(self, **_kwargs: Any) -> None:
        pass


@pytest.mark.parametrize("back_at", [70.0, 90.0, None],
                         ids=["back-while-aborting", "back-after-the-abort", "still-cut-off"])
def test_an_abort_cut_off_from_the_broker_asks_for_a_new_producer(monkeypatch, back_at):
    """Kafka cut off for longer than ~85 s while events flow (Salesforce reachable): the
    batch's records time out (the commit fails abortably at 55 s), and its abort times out
    too (librdkafka: retriable, the producer left in ABORTING_TRANSACTION). The abort was
    given up at once and the producer kept: the next write's ``begin_transaction`` was
    refused (``_STATE``, not retriable: exit 1), or — the broker back meanwhile — its
    resumed abort met the broker's fence of the *old* timed-out transaction, judged by the
    new write's age (~0 s): ``ProducerFencedError``, exit 3, another instance blamed.
    Either way only a new producer goes on: the abort is retried for the writer's timeout,
    then raised as a failed producer; a fence is judged by the age of the oldest
    transaction not settled."""
    from common.settings import KafkaSettings
    from connectors import writer as w

    clock = [1000.0]
    monkeypatch.setattr(w.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(w, "lease_clock", lambda: clock[0])
    tw = TransactionalWriter(KafkaSettings.load({}), "tid", transaction_timeout_s=60.0)
    producer = _Librdkafka(clock, back_at=None if back_at is None else 1000.0 + back_at)
    tw._producer = producer  # type: ignore[assignment]
    errors: list[KafkaError] = []
    for _write in range(2):  # the second: the batch redelivered, were the producer kept
        with pytest.raises(KafkaError) as raised:
            tw.write([("t", b"k", b"v", []), ("o", b"p", b"pos", [])])
        errors.append(raised.value)
        clock[0] += 2.0      # the resubscribe's backoff
    first, second = errors
    for err in (second, first):  # never exit 3 (not fenced) nor exit 1 (not fatal)
        assert isinstance(err, ProducerFailedError | TransactionTimedOutError), repr(err)
        assert err.retryable
    if back_at == 70.0:  # the abort resumed once the broker was back: fenced at 70 s
        assert isinstance(first, TransactionTimedOutError) and first.age_s == 70.0
        assert producer.aborts > 1
    else:                # no answer for the writer's 30 s: a new producer settles it
        assert type(first) is ProducerFailedError and "abort_transaction" in str(first)
        assert 1000.0 + 55.0 + 30.0 <= clock[0] - 2.0 <= 1000.0 + 55.0 + 36.0
    assert tw.transactions == 0 and not producer.committed


def test_a_failed_abort_is_written_once_by_a_new_producer_through_the_connector(
        monkeypatch) -> None:
    """Through the connector's loop, the broker cut off for the old producer: its abort
    never answers. The connector does not exit: a new producer (``init_transactions``
    settles the old transaction), the position read again, the batch fetched again and
    committed once, with its position, in one transaction."""
    from connectors import writer as w
    from connectors.decode import KafkaRecord
    from connectors.pubsub.client import StreamEnded
    from connectors.source import EXIT_OK
    from tests.connectors.test_source_loop import FakeSubscription, make

    stored = Position(b"\x00", EVENT, 1_700_000_000_000, "u-0")
    producers = [_Librdkafka(back_at=None), _Librdkafka(failing=0)]
    created: list[_Librdkafka] = []

    def new_producer(_config: Any) -> _Librdkafka:
        created.append(producers[len(created)])
        return created[-1]
    conn = make(backoff_initial_s=0.01, backoff_max_s=0.02)
    monkeypatch.setattr(w, "Producer", new_producer)
    conn.writer = TransactionalWriter(conn.kafka, "tid", timeout_s=0.3)
    loads: list[int] = []

    def load_position(*_a: Any, **_kw: Any) -> Position:
        loads.append(len(created))  # which producer had been started when it was read
        return stored
    monkeypatch.setattr("connectors.source.load_position", load_position)
    monkeypatch.setattr("connectors.source.load_last_gap", lambda *_a, **_kw: None)
    events = [KafkaRecord(key=b"801", value=b"v", headers=[], event_uuid=f"u-{i}",
                          replay_id=bytes([i]), order_id="801") for i in (1, 2)]
    subscribed: list[tuple[str, bytes | None]] = []

    def subscribe(preset: str, replay_id: bytes | None) -> FakeSubscription:
        subscribed.append((preset, replay_id))
        if len(subscribed) > 2:  # the batch went through: stop (the timeout only a bound)
            conn.request_stop()
            return FakeSubscription()
        return FakeSubscription([SimpleNamespace(events=events), StreamEnded(None)])
    conn.pubsub = SimpleNamespace(subscribe=subscribe)  # type: ignore[assignment]
    code = conn.run(timeout_s=30.0)
    assert code == EXIT_OK
    old, new = producers
    assert created == [old, new] and old.aborts >= 2 and new.inits == 1
    assert loads == [1, 2]  # the position read again after the new producer started
    assert subscribed[:2] == [("CUSTOM", b"\x00"), ("CUSTOM", b"\x00")]
    assert not old.committed and len(new.committed) == 1
    assert [key for _t, key in new.committed[0]] == [b"801", b"801", conn.codec.key]
    assert conn.position is not None and conn.position.replay_id == b"\x02"


class _ErroneousState:
    """A producer whose transaction fails abortably after its first record (the record
    timed out; or the broker refused the topic, an ACL missing): librdkafka then refuses
    every later ``produce()`` with the bare ``_STATE`` ("Erroneous state": neither
    retriable nor fatal, no abort asked for), and ``commit_transaction`` at once with the
    transaction's real error (both seen with librdkafka 2.16's mock cluster). Only the first
    ``failing`` transactions fail; the later ones commit, each kept in ``committed``."""

    def __init__(self, commit_error: CKafkaError, failing: int = 1) -> None:
        self.commit_error, self.failing = commit_error, failing
        self.transactions = self.commits = self.aborts = 0
        self.produced: list[Any] = []
        self.committed: list[list[Any]] = []

    def init_transactions(self, _timeout: float) -> None:
        pass

    def begin_transaction(self) -> None:
        self.transactions += 1
        self.produced = []

    def _failed(self) -> bool:
        return self.transactions <= self.failing

    def produce(self, topic: str, **kwargs: Any) -> None:
        if self._failed() and self.produced:
            raise KafkaException(CKafkaError(CKafkaError._STATE,
                                             "Unable to produce message: Local: Erroneous state"))
        self.produced.append((topic, kwargs.get("key")))

    def commit_transaction(self, _timeout: float) -> None:
        self.commits += 1
        if self._failed():
            raise KafkaException(self.commit_error)
        self.committed.append(self.produced)

    def abort_transaction(self, _timeout: float) -> None:
        self.aborts += 1

    def poll(self, _timeout: float) -> int:
        return 0

    def flush(self, _timeout: float) -> int:
        return 0


_TIMED_OUT_IN_TXN = CKafkaError(CKafkaError._TIMED_OUT, "1 message(s) timed out on t [0]",
                                txn_requires_abort=True)
_ACL_MISSING = CKafkaError(CKafkaError.TOPIC_AUTHORIZATION_FAILED,
                           "Failed to produce to t [0]: Broker: Topic authorization failed",
                           txn_requires_abort=True)


@pytest.mark.parametrize("commit_error", [_TIMED_OUT_IN_TXN, _ACL_MISSING],
                         ids=["record-timed-out", "acl-missing"])
def test_a_produce_refused_for_the_transactions_state_raises_the_transactions_error(
        commit_error) -> None:
    """A transaction that failed abortably makes every later produce() fail with
    ``_STATE``, which said nothing: translated as it was, the connector exited 1 ("fatal
    Kafka error") — under ``restart: on-failure`` a crash loop, and a missing ACL exited 1
    instead of 64 naming it. The transaction's own error (from its commit, refused at once)
    is raised instead, and the transaction aborted."""
    from common.errors import KafkaAccessError
    from common.settings import KafkaSettings

    tw = TransactionalWriter(KafkaSettings.load({}), "tid")
    producer = _ErroneousState(commit_error)
    tw._producer = producer  # type: ignore[assignment]
    with pytest.raises(KafkaError) as raised:
        tw.write([("t", b"k1", b"v1", []), ("t", b"k2", b"v2", []), ("o", b"p", b"pos", [])])
    if commit_error is _ACL_MISSING:   # exit 64, naming the ACL
        assert type(raised.value) is KafkaAccessError
        assert "TOPIC_AUTHORIZATION_FAILED" in str(raised.value) \
            or "authorization" in str(raised.value).lower()
    else:                              # a retryable error: resubscribe with this producer
        assert type(raised.value) is KafkaError and raised.value.retryable
        assert "timed out" in str(raised.value)
    assert producer.commits == 1 and producer.aborts == 1 and not producer.committed
    assert tw.transactions == 0


@pytest.mark.parametrize("commit_error", [_TIMED_OUT_IN_TXN, _ACL_MISSING],
                         ids=["record-timed-out", "acl-missing"])
def test_the_connector_goes_on_after_a_produce_refused_for_the_transactions_state(
        monkeypatch, commit_error) -> None:
    """Through the connector's loop: a record timed out in the transaction → the batch is
    written again after the resubscribe, in process (not exit 1); a missing ACL → exit 64."""
    from connectors.decode import KafkaRecord
    from connectors.pubsub.client import StreamEnded
    from connectors.source import EXIT_ACCESS_REFUSED, EXIT_OK
    from tests.connectors.test_source_loop import FakeSubscription, make

    conn = make(backoff_initial_s=0.01, backoff_max_s=0.02)
    conn.writer = TransactionalWriter(conn.kafka, "tid")
    producer = _ErroneousState(commit_error)
    conn.writer._producer = producer  # type: ignore[assignment]
    conn._latest_marked = True  # the LATEST marker committed earlier: the batch fails first
    monkeypatch.setattr("connectors.source.load_position", lambda *_a, **_kw: None)
    monkeypatch.setattr("connectors.source.load_last_gap", lambda *_a, **_kw: None)
    events = [KafkaRecord(key=b"801", value=b"v", headers=[], event_uuid=f"u-{i}",
                          replay_id=bytes([i]), order_id="801") for i in (1, 2)]
    presets: list[str] = []

    def subscribe(preset: str, _replay_id: bytes | None) -> FakeSubscription:
        presets.append(preset)
        if len(presets) > 2:
            return FakeSubscription()  # quiet until run()'s timeout
        return FakeSubscription([SimpleNamespace(events=events), StreamEnded(None)])
    conn.pubsub = SimpleNamespace(subscribe=subscribe)  # type: ignore[assignment]
    code = conn.run(timeout_s=1.0)
    if commit_error is _ACL_MISSING:
        assert code == EXIT_ACCESS_REFUSED and presets == [conn.settings.replay]
        assert not producer.committed
    else:
        assert code == EXIT_OK and len(presets) >= 2
        gap, batch = producer.committed[:2]  # LATEST again with no position: a gap first
        assert [topic for topic, _k in gap] == [conn.kafka.replay_gaps]
        assert [key for _t, key in batch] == [b"801", b"801", conn.codec.key]
        assert conn.position is not None and conn.position.replay_id == b"\x02"

def test_generated_stubs_match_reference_numbers() -> None:
    fr = pb.FetchRequest.DESCRIPTOR.fields_by_name
    assert {n: f.number for n, f in fr.items()} == {
        "topic_name": 1, "replay_preset": 2, "replay_id": 3, "num_requested": 4,
        "auth_refresh": 5}
    assert pb.ReplayPreset.Value("CUSTOM") == 2


class _InitTransactions:
    """A producer whose ``init_transactions`` times out (retriable) until call
    ``answers_at``; call ``stopped_in`` takes ``stopped_s`` longer (the process stopped)."""

    def __init__(self, clock: list[float], *, answers_at: int, stopped_in: int = 0,
                 stopped_s: float = 0.0, fatal_at: int = 0) -> None:
        self.clock, self.answers_at, self.fatal_at = clock, answers_at, fatal_at
        self.stopped_in, self.stopped_s = stopped_in, stopped_s
        self.calls = 0

    def init_transactions(self, timeout: float) -> None:
        self.calls += 1
        if self.calls == self.answers_at:
            return
        if self.calls == self.fatal_at:
            raise KafkaException(CKafkaError(CKafkaError._FENCED, "fenced", fatal=True))
        self.clock[0] += timeout + (self.stopped_s if self.calls == self.stopped_in else 0.0)
        raise KafkaException(CKafkaError(CKafkaError._TIMED_OUT, "Timed out waiting for "
                                         "operation to finish, retry call to resume",
                                         retriable=True))


@pytest.mark.parametrize("stopped_s", [0.0, 45.0])
def test_init_transactions_is_retried_for_its_timeout_of_running_time(monkeypatch, stopped_s):
    """A broker silent for the writer's whole timeout is an error; a connector stopped while
    it started is not given up on resuming, and the call that answers after it resumes.
    A fence is never retried."""
    from common.errors import KafkaError as OurKafkaError
    from common.errors import ProducerFencedError
    from common.settings import KafkaSettings
    from connectors import writer as w

    clock = [1000.0]
    monkeypatch.setattr(w.time, "monotonic", lambda: clock[0])
    tw = w.TransactionalWriter(KafkaSettings.load({"KAFKA_BOOTSTRAP_SERVERS": "k:1"}), "t-1",
                               timeout_s=30)
    tw._producer = _InitTransactions(clock, answers_at=10**6, stopped_in=3,  # type: ignore
                                     stopped_s=stopped_s)
    with pytest.raises(OurKafkaError, match="init_transactions: .*retry call to resume") \
            as info:
        tw.start()
    assert info.value.retryable
    ran = clock[0] - 1000.0 - max(0.0, stopped_s - PAUSE_SLACK_S)  # time not stopped
    assert 30 <= ran <= 36, ran
    clock[0] = 1000.0
    tw._producer = _InitTransactions(clock, answers_at=6, stopped_in=3,  # type: ignore
                                     stopped_s=45.0)
    tw.start()  # 45 s stopped in the third call of 5 s, answered by the sixth
    assert tw._producer.calls == 6  # type: ignore[attr-defined]
    tw._producer = _InitTransactions(clock, answers_at=10**6, fatal_at=2)  # type: ignore
    with pytest.raises(ProducerFencedError):
        tw.start()
    assert tw._producer.calls == 2  # type: ignore[attr-defined]


def test_the_channel_pings_as_a_default_grpc_server_allows():
    """A gRPC server's default policy accepts one HTTP/2 ping without data per 5 minutes
    and sends GOAWAY ``too_many_pings`` after two more: with 60 s pings a quiet Subscribe
    stream ended UNAVAILABLE at 240 s against a stock server, before the first keepalive
    (270 s) — on a fresh LATEST start, a spurious ``latest.resubscribed`` gap each time.
    The sandbox keeps gRPC's default policy, so it would end such a stream too."""
    import subprocess
    import sys

    from common.envparse import ROOT
    from common.settings import ConnectorSettings
    from connectors.pubsub.client import channel_options

    options = dict(channel_options(ConnectorSettings.load({}).grpc_keepalive_s))
    assert options["grpc.keepalive_time_ms"] > 300_000
    assert options["grpc.keepalive_permit_without_calls"] == 0
    # the sandbox's generated protos clash with the connector's in one process
    served = json.loads(subprocess.run(
        [sys.executable, "-c", "import json; from sandbox.salesforce.server import "
         "GRPC_OPTIONS; print(json.dumps([k for k, _v in GRPC_OPTIONS]))"],
        cwd=ROOT, capture_output=True, text=True, check=True).stdout)
    loosened = {"grpc.http2.min_recv_ping_interval_without_data_ms",
                "grpc.http2.max_ping_strikes", "grpc.keepalive_permit_without_calls"}
    assert not loosened & set(served)


@pytest.mark.parametrize("ago_s, level, words", [
    (300, logging.WARNING, "a keepalive confirmed it current 5 min ago"),
    (1200, logging.WARNING, "a keepalive confirmed it current 20 min ago"),  # a maintenance stop
    (73 * 3600, logging.ERROR, "it was last committed 73.0 h ago"),
])
def test_a_refused_keepalive_position_is_a_quiet_channel_until_the_retention(
        caplog, ago_s, level, words):
    """A keepalive may carry the last event's id: one committed less than 72 h before
    Salesforce refused it was refused for the channel's quiet, not for an outage — also
    after a stop of 20 minutes (it said at ERROR that events may be lost to the retention)."""
    import time
    import types

    from common.errors import ReplayIdInvalidError
    from connectors.offsets import KEEPALIVE, Position
    from connectors.source import Connector

    connector = Connector.__new__(Connector)
    connector.settings = types.SimpleNamespace(invalid_replay="EARLIEST")
    connector.kafka = types.SimpleNamespace(replay_gaps="gaps")
    connector.preset_override = None
    gaps: list[str] = []
    connector._record_gap = lambda policy, code, message: gaps.append(message)  # type: ignore[method-assign]
    connector.position = Position(b"\x00\x01", KEEPALIVE, int((time.time() - ago_s) * 1000))
    with caplog.at_level(logging.INFO, logger="connectors"):
        assert connector._replay_invalid(ReplayIdInvalidError(
            "replay id invalid", error_code="fetch.replayid.corrupted")) is None
    refused = [r for r in caplog.records if "refused by Salesforce" in r.getMessage()]
    assert len(refused) == 1 and refused[0].levelno == level, refused
    assert words in refused[0].getMessage() and words in gaps[0]


class _RefusedTimeout:
    calls = 0

    def init_transactions(self, timeout: float) -> None:
        self.calls += 1
        raise KafkaException(CKafkaError(CKafkaError.INVALID_TRANSACTION_TIMEOUT,
                                         "Broker: Invalid transaction timeout"))


def test_a_transaction_timeout_the_broker_refuses_is_a_setting_error_exit_64(monkeypatch):
    """CONNECTOR_TRANSACTION_TIMEOUT_S above the broker's transaction.max.timeout.ms: its
    init_transactions is refused at every start. It was 'cannot start', exit 1, restarted for
    ever without naming the setting; it is a configuration error (64, not restarted)."""
    from common.errors import ConfigError
    from common.settings import ConnectorSettings, KafkaSettings
    from connectors import source
    from connectors import writer as w

    kafka = KafkaSettings.load({"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9"})
    tw = w.TransactionalWriter(kafka, "t-1", transaction_timeout_s=600)
    tw._producer = _RefusedTimeout()  # type: ignore[assignment]
    with pytest.raises(ConfigError, match=r"CONNECTOR_TRANSACTION_TIMEOUT_S: .* 600 s"):
        tw.start()
    assert tw._producer.calls == 1  # type: ignore[attr-defined]  # not retried

    conn = source.Connector(kafka=kafka, salesforce=None,  # type: ignore[arg-type]
                            connector=ConnectorSettings.load({}, name="txn-timeout-test"),
                            auth=object(), pubsub=SimpleNamespace(get_schema=None))  # type: ignore[arg-type]
    conn.writer.close()
    conn.writer = tw
    assert conn.run(timeout_s=1) == source.EXIT_CONFIG == 64
    assert conn.health.state == "failed" and "CONNECTOR_TRANSACTION_TIMEOUT_S" in (
        conn.health.last_error or "")


def test_a_transaction_timeout_refused_at_a_new_producer_is_exit_64_too(monkeypatch):
    """The brokers reconfigured with a lower transaction.max.timeout.ms while the connector
    runs: its next new producer (after a transaction timeout or a failed producer) is refused.
    Taken for a failed subscription, it was retried for ever, blamed on Salesforce."""
    from common.errors import ConfigError
    from common.settings import ConnectorSettings, KafkaSettings
    from connectors import source

    reopened: list[int] = []

    def reopen() -> None:
        reopened.append(1)
        raise ConfigError("CONNECTOR_TRANSACTION_TIMEOUT_S: the broker refuses a transaction "
                          "timeout of 600 s")
    kafka = KafkaSettings.load({"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9"})
    conn = source.Connector(kafka=kafka, salesforce=None,  # type: ignore[arg-type]
                            connector=ConnectorSettings.load({}, name="txn-reopen-test"),
                            auth=object(), pubsub=SimpleNamespace(get_schema=None))  # type: ignore[arg-type]
    conn.writer.close()
    conn.writer = SimpleNamespace(start=lambda: None, reopen=reopen,  # type: ignore[assignment]
                                  close=lambda: None)
    monkeypatch.setattr(source, "load_position", lambda *a, **k: None)
    monkeypatch.setattr(conn, "_rearm_gap", lambda: None)
    conn._reopen_pending = True  # a transaction timed out, or the producer failed
    assert conn.run(timeout_s=2) == source.EXIT_CONFIG
    assert reopened == [1] and conn.health.state == "failed"
