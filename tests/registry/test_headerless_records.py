"""A record without headers: confluent-kafka's ``Message.headers()`` is None then, and the
worker writes its Confluent outcomes without headers when tracing is off. ``decode(value,
None)`` used to guess: a Confluent decode that failed — even on a schema id the registry
does not know — fell back to plain Avro, and the framed bytes could decode as garbage (the
reviewer's id 102913 did for every status: a Skipped or Duplicate outcome then completed
silently, lost, instead of the dead letter naming the id). None is no headers now: one rule."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from confluent_kafka import TopicPartition

from common.avro import AvroSerde, SchemaRegistry, SerdeError, encode_schemaless, frame
from common.settings import KafkaSettings, SinkSettings
from sinks.app import Sink
from sinks.batch import Tracked
from tests.sinks.fakes import FakeCollections
from tests.sinks.helpers import committed_everywhere

UNKNOWN_ID = 102913  # frames the reviewer's outcomes into values that decode as plain Avro
BASE = {"order_id": "801000000000001AAA", "opportunity_id": "006000000000001AAA",
        "idem_key": "801000000000001AAA-1700000000000",
        "correlation_id": "3f0e9a7c-1111-2222-3333-444455556666",
        "event_uuid": "9b2f8c1e-aaaa-bbbb-cccc-ddddeeeeffff", "status": "Provisioned",
        "whmcs_client_id": 17, "whmcs_order_id": 4242, "whmcs_service_ids": [77],
        "whmcs_addon_ids": [], "whmcs_invoice_id": None, "error_code": None,
        "error_message": None, "attempts": 1, "recovered": False,
        "requested_at": 1700000000000, "completed_at": 1700000001000,
        "duplicate_whmcs_order_ids": []}
STATUSES = ("Provisioned", "Failed", "Skipped", "Duplicate")


def registry() -> SchemaRegistry:
    """A registry that knows no schema id (40403, as Confluent's)."""
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, json={"error_code": 40403, "message": "Schema not found"})
    made = SchemaRegistry("http://registry.invalid")
    made._client = httpx.Client(base_url=made.url, transport=httpx.MockTransport(answer))
    return made


def forged(status: str) -> bytes:
    """An outcome framed with a schema id nobody registered."""
    plain = AvroSerde("provisioning_outcome")
    record = dict(BASE, status=status, **({} if status == "Provisioned" else
                                          {"error_code": "NOT_ACTIVATING",
                                           "error_message": "x"}))
    return frame(UNKNOWN_ID, encode_schemaless(plain.schema, record))


@pytest.mark.parametrize("status", STATUSES)
def test_an_unknown_schema_id_is_an_error_with_or_without_headers(status):
    serde = AvroSerde("provisioning_outcome", registry=registry())
    for headers in (None, []):
        with pytest.raises(SerdeError, match=f"unknown schema id {UNKNOWN_ID}") as info:
            serde.decode(forged(status), headers)
        assert not info.value.retryable


def test_plain_records_still_decode_without_headers():
    plain = AvroSerde("provisioning_outcome")
    value = plain.encode(BASE)
    for reader in (plain, AvroSerde("provisioning_outcome", registry=registry())):
        for headers in (None, [], plain.headers()):
            assert reader.decode(value, headers)["order_id"] == BASE["order_id"]


class Message:
    """A consumed record without headers, as confluent-kafka hands it out."""

    def __init__(self, value: bytes) -> None:
        self._value = value

    def error(self) -> None:
        return None

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return 5

    def key(self) -> bytes:
        return BASE["order_id"].encode()

    def value(self) -> bytes:
        return self._value

    def headers(self) -> None:
        return None


class Consumer:
    committed = staticmethod(committed_everywhere)

    def assign(self, partitions: list[TopicPartition]) -> None:
        pass

    def pause(self, partitions: list[TopicPartition]) -> None:
        pass

    def resume(self, partitions: list[TopicPartition]) -> None:
        pass

    def commit(self, offsets: list[TopicPartition], asynchronous: bool) -> None:
        pass


class DeadLetters:
    def __init__(self) -> None:
        self.sent: list[tuple[Tracked, str]] = []

    def send(self, tracked: Tracked, *, reason: str, **_: Any) -> None:
        self.sent.append((tracked, reason))


@pytest.mark.parametrize("status", STATUSES)
def test_the_sink_dead_letters_a_headerless_record_of_an_unknown_schema_id(status):
    kafka = KafkaSettings.load({"SCHEMA_REGISTRY_URL": "http://registry.invalid"},
                               bootstrap_servers="127.0.0.1:9")  # never reached
    sink = Sink(kafka, SinkSettings.load({}, http_port=0), FakeCollections())
    sink.serde = AvroSerde("provisioning_outcome", topic=kafka.outcomes, registry=registry())
    real = sink.consumer
    sink.consumer = Consumer()  # type: ignore[assignment]
    real.close()
    sink.dead_letters = letters = DeadLetters()  # type: ignore[assignment]
    sink._on_assign(sink.consumer, [TopicPartition(kafka.outcomes, 0)])  # type: ignore[arg-type]
    sink._handle(Message(forged(status)))  # type: ignore[arg-type]
    assert [reason for _t, reason in letters.sent] != [], \
        f"{status} outcome of unknown schema id {UNKNOWN_ID} not dead-lettered"
    assert f"unknown schema id {UNKNOWN_ID}" in letters.sent[0][1]
    assert len(sink.batcher) == 0  # no update of garbage for Salesforce
