"""From a Pub/Sub ``ConsumerEvent`` to a Kafka record — or to a dead letter (pure).

Decoding: the payload is schemaless Avro written with the schema ``GetSchema`` returns for
the event's ``schema_id`` (cached by id, :class:`SchemaCache`). It is read with that writer
schema and *projected* onto ``schemas/OrderProvisionRequested__e.avsc`` (fastavro schema
resolution: fields the writer added are dropped, missing optional ones take defaults, int →
double promotion). Resolution matches records by full name, so the reader schema is
renamed to the writer's name first — Salesforce's naming is not ours to rely on.

Order ids: ``OrderId__c`` is accepted in either of Salesforce's forms (15 case-sensitive
characters, or 18 with the case checksum) and written in the 18-character one
(:func:`order_id18`), as the record's key *and* in its value: one Order published once with
each form must land on one key, hence one partition — and the worker's tables, keyed by the
value's ``OrderId__c`` and partitioned by its hash, rely on the key being that same string
(the reconciler's re-requests carry the 18-character ids Salesforce's queries return, too).

Bad events are data, not crashes: an undecodable payload, a schema id ``GetSchema`` does
not know, or an event without ``OrderId__c`` becomes a :class:`DeadLetter` (raw payload
bytes, ``common.deadletter`` headers with the reason, schema id, replay id and event uuid).
Transient ``GetSchema`` failures (unavailable, auth) are *raised* instead: they end the
subscription and the event is fetched again after resubscribing. So is a schema registry
that cannot be reached while encoding in the Confluent format (``SCHEMA_REGISTRY_URL``): a
retryable :class:`~common.avro.SerdeError`, never a dead letter.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import fastavro

from common.avro import AvroSerde, SerdeError, decode_schemaless, schema_json
from common.deadletter import dead_letter_headers
from common.errors import SalesforceError
from common.ids import describe_bad_id, is_salesforce_id

EVENT_SCHEMA = "OrderProvisionRequested__e"
HEADER_PREFIX = "sfprov."
# GetSchema answers that mean "this id does not exist" rather than "try again later".
PERMANENT_SCHEMA_STATUSES = {"NOT_FOUND", "INVALID_ARGUMENT", "FAILED_PRECONDITION"}
# The largest record the producer accepts (librdkafka's ``message.max.bytes`` default, which
# the writer keeps), key, value and headers together. Salesforce allows events of up to 1 MB,
# so an event near its limit cannot be written as it is: it is dead-lettered instead — the
# write would fail the whole transaction on every retry and stop the connector for good.
KAFKA_MESSAGE_MAX_BYTES = 1_000_000
RECORD_OVERHEAD_BYTES = 1_024  # record and batch framing, generously
# An oversized event's dead letter keeps this much of the payload (headers say it was cut).
TRUNCATED_PAYLOAD_BYTES = 64 * 1024


class UnknownSchemaError(SerdeError):
    """GetSchema refused the schema id for good."""


#: the reasons the connector dead-letters an event with (``dlq.error_code``; the label of
#: ``sfprov_connector_dead_letters_total``, primed at zero from the start)
DEAD_LETTER_CODES = ("unknown_schema", "undecodable", "missing_order_id", "invalid_order_id",
                     "unencodable", "oversized")


@dataclass(frozen=True)
class KafkaRecord:
    """A record for the requests topic (or, with ``dead_letter``, the dead-letter topic)."""

    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]
    event_uuid: str
    replay_id: bytes
    order_id: str | None
    correlation_id: str | None = None
    dead_letter: bool = False
    reason: str = ""


class SchemaCache:
    """Writer schemas by schema id; ``fetch(schema_id) -> schema JSON`` fills it.

    Permanent refusals are remembered for ``negative_ttl_s`` so a burst of events with an
    unknown id costs one GetSchema call, not one per event.
    """

    def __init__(self, fetch: Callable[[str], str], *, negative_ttl_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._fetch = fetch
        self._schemas: dict[str, Any] = {}
        self._unknown: dict[str, tuple[float, str]] = {}
        self._negative_ttl_s = negative_ttl_s
        self._clock = clock
        self.fetches = 0

    def get(self, schema_id: str) -> Any:
        schema = self._schemas.get(schema_id)
        if schema is not None:
            return schema
        refused = self._unknown.get(schema_id)
        if refused and self._clock() - refused[0] < self._negative_ttl_s:
            raise UnknownSchemaError(refused[1])
        self.fetches += 1
        try:
            text = self._fetch(schema_id)
        except SalesforceError as exc:
            if getattr(exc, "grpc_status", "") in PERMANENT_SCHEMA_STATUSES:
                reason = f"unknown schema id {schema_id}: {exc}"
                self._unknown[schema_id] = (self._clock(), reason)
                raise UnknownSchemaError(reason) from exc
            raise
        try:
            schema = fastavro.parse_schema(json.loads(text))
        except Exception as exc:  # any text that fastavro cannot parse (a
            # RecursionError for a deeply nested one) is the schema's fault, never a crash
            # loop on the same event at every restart
            reason = f"schema {schema_id} from GetSchema is not valid Avro: {exc!r:.300}"
            self._unknown[schema_id] = (self._clock(), reason)
            raise UnknownSchemaError(reason) from exc
        self._schemas[schema_id] = schema
        return schema


_READERS: dict[str, Any] = {}


def reader_schema_for(writer: Any) -> Any:
    """Our event schema, renamed to the writer's full name so fastavro resolves them."""
    full_name = writer.get("name", EVENT_SCHEMA) if isinstance(writer, dict) else EVENT_SCHEMA
    reader = _READERS.get(full_name)
    if reader is None:
        raw = copy.deepcopy(json.loads(schema_json(EVENT_SCHEMA)))
        raw.pop("namespace", None)
        raw["name"] = full_name
        reader = _READERS[full_name] = fastavro.parse_schema(raw)
    return reader


class EventDecoder:
    """Builds the requests-topic record (or a dead letter) for each delivered event."""

    def __init__(self, schemas: SchemaCache, *, channel: str, connector: str,
                 serde: AvroSerde | None = None) -> None:
        self.schemas = schemas
        self.channel = channel
        self.connector = connector
        self.serde = serde or AvroSerde("provision_request")
        self._schema_headers = self.serde.headers()

    def build(self, event: Any, received_at_ms: int | None = None) -> KafkaRecord:
        """``event`` is a ``ConsumerEvent``. Raises only transient SalesforceErrors."""
        received_at_ms = received_at_ms or int(time.time() * 1000)
        pe = event.event
        replay_id = bytes(event.replay_id)
        try:
            writer = self.schemas.get(pe.schema_id)
        except UnknownSchemaError as exc:
            return self.dead_letter(event, "unknown_schema", str(exc), "UnknownSchemaError")
        try:
            fields = decode_schemaless(writer, bytes(pe.payload), reader_schema_for(writer))
        except SerdeError as exc:
            return self.dead_letter(event, "undecodable", str(exc), "SerdeError")
        order_id = fields.get("OrderId__c")
        if not order_id:
            return self.dead_letter(event, "missing_order_id",
                                    "event has no OrderId__c", "MissingOrderId")
        if not is_salesforce_id(order_id):
            return self.dead_letter(event, "invalid_order_id",
                                    f"OrderId__c {describe_bad_id(order_id)} is not a 15- or "
                                    "18-character Salesforce id", "InvalidOrderId")
        order_id = order_id18(order_id)
        record = {
            "event_uuid": pe.id, "replay_id": replay_id, "schema_id": pe.schema_id,
            "channel": self.channel, "received_at": received_at_ms,
            "CreatedDate": fields["CreatedDate"], "CreatedById": fields["CreatedById"],
            "OrderId__c": order_id, "IdemKey__c": fields.get("IdemKey__c"),
            "CorrelationId__c": fields.get("CorrelationId__c"),
            "RequestedBy__c": fields.get("RequestedBy__c"), "Version__c": fields.get("Version__c"),
        }
        try:
            value = self.serde.encode(record)
        except SerdeError as exc:
            if exc.retryable:  # schema registry unreachable: resubscribe and try again
                raise
            # its Order is known: `sfprov trace` and `dlq --order-id` find it by the header
            return self.dead_letter(event, "unencodable", str(exc), "SerdeError",
                                    order_id=order_id)
        correlation_id = fields.get("CorrelationId__c")
        headers = [*self._schema_headers,
                   (HEADER_PREFIX + "event_uuid", pe.id.encode()),
                   (HEADER_PREFIX + "replay_id", replay_id.hex().encode()),
                   (HEADER_PREFIX + "schema_id", pe.schema_id.encode()),
                   (HEADER_PREFIX + "channel", self.channel.encode()),
                   (HEADER_PREFIX + "connector", self.connector.encode())]
        if correlation_id:
            headers.append((HEADER_PREFIX + "correlation_id", correlation_id.encode()))
        size = record_size(order_id.encode(), value, headers)
        if size > KAFKA_MESSAGE_MAX_BYTES - RECORD_OVERHEAD_BYTES:
            return self.dead_letter(
                event, "oversized", f"event too large for Kafka: its record would be {size} "
                f"bytes, the limit is {KAFKA_MESSAGE_MAX_BYTES - RECORD_OVERHEAD_BYTES}",
                "RecordTooLarge", order_id=order_id[:100])
        return KafkaRecord(order_id.encode(), value, headers, pe.id, replay_id, order_id,
                           correlation_id)

    def dead_letter(self, event: Any, error_code: str, reason: str,
                    error_class: str, **context: Any) -> KafkaRecord:
        """The event's raw payload with the reason in headers; a payload too large for Kafka
        is cut to ``TRUNCATED_PAYLOAD_BYTES`` (``dlq.payload_bytes`` keeps its size)."""
        pe = event.event
        replay_id = bytes(event.replay_id)
        payload = bytes(pe.payload)
        if len(payload) > KAFKA_MESSAGE_MAX_BYTES // 2:
            context.update(payload_bytes=len(payload), payload_truncated="true")
            payload = payload[:TRUNCATED_PAYLOAD_BYTES]
        headers = dead_letter_headers(stage="connector", reason=reason, error_class=error_class,
                                      error_code=error_code, event_uuid=pe.id or None,
                                      replay_id=replay_id, schema_id=pe.schema_id or None,
                                      channel=self.channel, connector=self.connector, **context)
        key = (pe.id or replay_id.hex()).encode()
        return KafkaRecord(key, payload, headers, pe.id, replay_id, None,
                           dead_letter=True, reason=error_code)


_CHECKSUM_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"


def _checksum(id15: str) -> str:
    """Salesforce's 3-character case checksum of a 15-character id: per 5-character chunk,
    one character whose bits say which of the chunk's characters are upper-case letters."""
    return "".join(_CHECKSUM_CHARS[sum(1 << i for i, ch in enumerate(id15[c:c + 5])
                                       if "A" <= ch <= "Z")] for c in (0, 5, 10))


def order_id18(order_id: str) -> str:
    """The 18-character form of a Salesforce id that :func:`is_salesforce_id` accepted.

    A 15-character id gets its checksum. An 18-character one is case-insensitive, as
    Salesforce reads it: its letters take the case its checksum gives (an id that went
    through a case-folding system comes back as Salesforce's). One whose checksum does not
    fit its characters (typed by hand) is returned as given: Salesforce refuses it with an
    error of its own, which is not this function's to hide."""
    if len(order_id) == 15:
        return order_id + _checksum(order_id)
    suffix = order_id[15:].upper()
    if any(ch not in _CHECKSUM_CHARS for ch in suffix):
        return order_id
    flags = [_CHECKSUM_CHARS.index(ch) for ch in suffix]
    id15 = "".join(ch.upper() if flags[i // 5] >> (i % 5) & 1 else ch.lower()
                   for i, ch in enumerate(order_id[:15]))
    return id15 + suffix if _checksum(id15) == suffix else order_id


def record_size(key: bytes, value: bytes, headers: list[tuple[str, bytes]]) -> int:
    return len(key) + len(value) + sum(len(k) + len(v) for k, v in headers)
