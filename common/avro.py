"""Avro serde for every topic, from the schemas in ``schemas/`` (the contract).

Two wire formats:

* default — plain Avro binary (schemaless) with the schema's full name in the record header
  ``sfprov.schema`` so operators' tools can decode without guessing;
* with ``SCHEMA_REGISTRY_URL`` — the Confluent wire format (magic byte 0, 4-byte schema id,
  Avro binary), the schema registered under ``<topic>-value`` on first use.

:meth:`AvroSerde.decode` reads both. Evolution rule: add fields with defaults only; readers
decode with the writer's schema and project onto the reader's (fastavro resolution).
"""

from __future__ import annotations

import io
import json
import struct
import threading
from functools import cache
from pathlib import Path
from typing import Any

import fastavro
import httpx

from common.errors import PipelineError

SCHEMAS_DIR = Path(__file__).resolve().parent.parent / "schemas"
SCHEMA_HEADER = "sfprov.schema"
MAGIC = 0


class SerdeError(PipelineError):
    """A value could not be encoded or decoded (the record goes to a dead letter)."""


@cache
def schema_json(name: str) -> str:
    """Raw JSON of ``schemas/<name>.avsc``."""
    return (SCHEMAS_DIR / f"{name}.avsc").read_text()


@cache
def load_schema(name: str) -> Any:
    return fastavro.parse_schema(json.loads(schema_json(name)))


def encode_schemaless(schema: Any, record: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    try:
        fastavro.schemaless_writer(buf, schema, record)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise SerdeError(f"cannot encode record as {schema.get('name')}: {exc}") from exc
    return buf.getvalue()


def decode_schemaless(writer: Any, payload: bytes, reader: Any | None = None) -> dict[str, Any]:
    try:
        out = fastavro.schemaless_reader(io.BytesIO(payload), writer, reader)
    except Exception as exc:  # noqa: BLE001 - fastavro raises many kinds on garbage
        raise SerdeError(f"cannot decode payload ({len(payload)} bytes): "
                         f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(out, dict):
        raise SerdeError("payload did not decode to a record")
    return out


class SchemaRegistry:
    """Tiny client of a Confluent-compatible schema registry (register + fetch by id)."""

    def __init__(self, url: str, *, timeout: float = 10.0) -> None:
        self._client = httpx.Client(base_url=url.rstrip("/"), timeout=timeout)
        self._ids: dict[tuple[str, str], int] = {}
        self._by_id: dict[int, Any] = {}
        self._lock = threading.Lock()

    def register(self, subject: str, schema: str) -> int:
        key = (subject, schema)
        with self._lock:
            if key in self._ids:
                return self._ids[key]
        try:
            resp = self._client.post(f"/subjects/{subject}/versions",
                                     json={"schema": schema},
                                     headers={"Content-Type":
                                              "application/vnd.schemaregistry.v1+json"})
            resp.raise_for_status()
        except httpx.HTTPError as exc:
            raise SerdeError(f"schema registry: cannot register {subject}: {exc}",
                             retryable=True) from exc
        schema_id = int(resp.json()["id"])
        with self._lock:
            self._ids[key] = schema_id
            self._by_id[schema_id] = fastavro.parse_schema(json.loads(schema))
        return schema_id

    def schema(self, schema_id: int) -> Any:
        with self._lock:
            if schema_id in self._by_id:
                return self._by_id[schema_id]
        try:
            resp = self._client.get(f"/schemas/ids/{schema_id}")
            resp.raise_for_status()
        except httpx.HTTPError as exc:
            raise SerdeError(f"schema registry: unknown schema id {schema_id}: {exc}") from exc
        parsed = fastavro.parse_schema(json.loads(resp.json()["schema"]))
        with self._lock:
            self._by_id[schema_id] = parsed
        return parsed


class AvroSerde:
    """Encode/decode one topic's values with one schema from ``schemas/``."""

    def __init__(self, schema_name: str, *, topic: str = "",
                 registry: SchemaRegistry | None = None) -> None:
        self.schema_name = schema_name
        self.schema = load_schema(schema_name)
        self.full_name: str = self.schema["name"]
        self.topic = topic
        self.registry = registry
        self._schema_id: int | None = None

    def headers(self) -> list[tuple[str, bytes]]:
        return [(SCHEMA_HEADER, self.full_name.encode())]

    def encode(self, record: dict[str, Any]) -> bytes:
        payload = encode_schemaless(self.schema, record)
        if self.registry is None:
            return payload
        if self._schema_id is None:
            self._schema_id = self.registry.register(f"{self.topic}-value",
                                                     schema_json(self.schema_name))
        return struct.pack(">bI", MAGIC, self._schema_id) + payload

    def decode(self, value: bytes) -> dict[str, Any]:
        if self.registry is not None and len(value) > 5 and value[0] == MAGIC:
            (schema_id,) = struct.unpack(">I", value[1:5])
            return decode_schemaless(self.registry.schema(schema_id), value[5:], self.schema)
        return decode_schemaless(self.schema, value)


def registry_from_url(url: str) -> SchemaRegistry | None:
    return SchemaRegistry(url) if url else None
