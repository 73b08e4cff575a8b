"""Platform-event schemas and Avro encoding, as the Pub/Sub API serves them.

The event schema comes from the repository's ``schemas/OrderProvisionRequested__e.avsc``.
Its ``schema_id`` is a fingerprint: the base64url (unpadded) MD5 of the schema's Avro
Parsing Canonical Form — stable across runs and machines, opaque to clients, and
changing whenever the schema changes. Payloads are schemaless Avro binary.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
from pathlib import Path

import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form

TOPIC = "/event/OrderProvisionRequested__e"
SCHEMA_PATH = Path(__file__).resolve().parents[2] / "schemas" / "OrderProvisionRequested__e.avsc"


class EventSchema:
    def __init__(self, schema_json: str) -> None:
        self.schema_json = schema_json
        self.parsed = fastavro.parse_schema(json.loads(schema_json))
        digest = bytes.fromhex(fingerprint(to_parsing_canonical_form(self.parsed), "MD5"))
        self.schema_id = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def encode(self, record: dict) -> bytes:
        out = io.BytesIO()
        fastavro.schemaless_writer(out, self.parsed, record)
        return out.getvalue()

    def decode(self, payload: bytes) -> dict:
        record = fastavro.schemaless_reader(io.BytesIO(payload), self.parsed)
        assert isinstance(record, dict)  # the schema is a record
        return record


PROVISION_SCHEMA = EventSchema(SCHEMA_PATH.read_text())
#: topic name -> schema of its events
TOPICS: dict[str, EventSchema] = {TOPIC: PROVISION_SCHEMA}
#: schema id -> schema
SCHEMAS: dict[str, EventSchema] = {PROVISION_SCHEMA.schema_id: PROVISION_SCHEMA}
#: schema id -> schema JSON registered through the admin API for injected events (any text,
#: even invalid Avro); served by GetSchema only, forgotten on restart
EXTRA_SCHEMA_JSON: dict[str, str] = {}


def register_extra_schema(schema_json: str) -> tuple[str, EventSchema | None]:
    """Serve ``schema_json`` from GetSchema; returns its schema id and, when it is valid
    Avro, the parsed schema (to encode payloads with)."""
    try:
        schema: EventSchema | None = EventSchema(schema_json)
    except Exception:  # noqa: BLE001 - invalid schemas are served as they are, on purpose
        schema = None
    if schema is not None:
        schema_id = schema.schema_id
    else:
        digest = hashlib.md5(schema_json.encode()).digest()  # noqa: S324 - an id, not security
        schema_id = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    EXTRA_SCHEMA_JSON[schema_id] = schema_json
    return schema_id, schema
