"""Avro serde for every topic, from the schemas in ``schemas/`` (the contract).

Two wire formats:

* default — plain Avro binary (schemaless) with the schema's full name in the record header
  ``sfprov.schema`` so operators' tools can decode without guessing;
* with ``SCHEMA_REGISTRY_URL`` — the Confluent wire format (magic byte 0, 4-byte big-endian
  schema id, Avro binary), the schema registered under ``<topic>-value`` on first use
  (TopicNameStrategy). These records carry **no** ``sfprov.schema`` header.

Reading and writing are separate: ``SCHEMA_REGISTRY_URL`` gives the :class:`SchemaRegistry`
every reader needs for Confluent records; ``AVRO_WIRE_FORMAT=PLAIN`` makes it read-only
(``SchemaRegistry.write`` false): :meth:`AvroSerde.encode` then writes plain Avro while
:meth:`AvroSerde.decode` still reads the Confluent records already written — the way back
from a registry. Without a registry a Confluent record is a non-retryable error.

:meth:`AvroSerde.decode` reads both, so a topic may hold records from before and after the
switch. Which format a record is in is decided from its headers first, not from its first
byte alone (plain Avro can start with a 0 byte, e.g. an empty first string):

1. the ``sfprov.schema`` header is present → plain Avro (of the schema it names: a record
   of another schema is a non-retryable :class:`SerdeError` naming both);
2. otherwise a value of at least 5 bytes starting with the magic byte 0 → Confluent;
3. otherwise → plain Avro (records written by other tools without our header).

``headers=None`` means no headers (confluent-kafka's ``Message.headers()`` for a record
without any): the same rules, and a framed value is never re-read as plain Avro after its
Confluent decode failed (an unknown schema id would decode as garbage). A Confluent record
whose schema id the registry does not know raises a non-retryable :class:`SerdeError`
naming the id (the record becomes a dead letter), and so does an id no registry can hold
(outside :data:`SCHEMA_IDS`: garbage from another producer, never asked); a registry that
cannot be reached, or answers with anything but a schema text, raises a **retryable** one
(``exc.retryable``): the caller retries, it never dead-letters good data for that. A null
value (a tombstone) is a non-retryable :class:`SerdeError` too.

Evolution rule: add fields with defaults only; readers decode with the writer's schema and
project onto the reader's (fastavro resolution).

Versioned plain records (:data:`VERSIONED_SCHEMAS`: the connector's own topics, always plain
Avro) also carry the writer schema's fingerprint (:func:`fingerprint`, CRC-64-AVRO of its
Parsing Canonical Form) in the ``sfprov.schema_fingerprint`` header; every version of those
schemas, the current one included, is kept in ``schemas/history/<name>-<fingerprint>.avsc``,
and :meth:`AvroSerde.decode` reads a record with the version its header names as the writer
(a record without the header: :data:`UNVERSIONED`, the version from before the header).
"""

from __future__ import annotations

import datetime as dt
import io
import json
import ssl
import struct
import threading
import time
from collections.abc import Iterable, Mapping
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import fastavro
import httpx

from common.envparse import Secret
from common.errors import PipelineError
from common.log import redact
from common.settings import KafkaSettings

SCHEMAS_DIR = Path(__file__).resolve().parent.parent / "schemas"
SCHEMA_HEADER = "sfprov.schema"
FINGERPRINT_HEADER = "sfprov.schema_fingerprint"
#: schemas whose plain records name their writer's version (FINGERPRINT_HEADER), every
#: version kept in schemas/history/ (tests/foundation/test_schema_history.py holds the rule)
VERSIONED_SCHEMAS = ("connector_offset", "replay_gap")
#: the version a versioned schema's records without FINGERPRINT_HEADER were written with
#: (everything written before the header existed)
UNVERSIONED = {"connector_offset": "c0180d2c626c9493", "replay_gap": "2b26fe2faa5695e1"}
MAGIC = 0
CONFLUENT_PREFIX = struct.Struct(">bI")  # magic byte, schema id
REGISTRY_CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"
SCHEMA_NOT_FOUND = 40403  # Confluent error_code of GET /schemas/ids/{id} for an unknown id
#: the ids a registry can hold: Confluent's are Java ints counted from 1 (its REST API takes
#: ``/schemas/ids/{id}`` as an Integer: past 2^31-1 no route matches, a 404 without 40403)
SCHEMA_IDS = range(1, 2**31)
UNKNOWN_IDS_KEPT = 10_000  # unknown schema ids remembered at most (the oldest forgotten first)


class SerdeError(PipelineError):
    """A value could not be encoded or decoded.

    Not retryable (the default): the record is bad — it goes to a dead letter.
    Retryable: the schema registry could not be reached — try again later.
    """


@cache
def schema_json(name: str) -> str:
    """Raw JSON of ``schemas/<name>.avsc``."""
    return (SCHEMAS_DIR / f"{name}.avsc").read_text()


@cache
def load_schema(name: str) -> Any:
    return fastavro.parse_schema(json.loads(schema_json(name)))


def fingerprint(schema: Any) -> str:
    """CRC-64-AVRO (Rabin) fingerprint of a parsed schema's Parsing Canonical Form, as 16
    hex digits: what changes when the binary encoding changes (not docs or defaults)."""
    canonical = fastavro.schema.to_parsing_canonical_form(schema)
    return str(fastavro.schema.fingerprint(canonical, "CRC-64-AVRO"))


def history_dir() -> Path:
    return SCHEMAS_DIR / "history"


@cache
def schema_history(name: str) -> dict[str, Any]:
    """fingerprint -> parsed schema of every archived version of ``name``
    (``schemas/history/<name>-<fingerprint>.avsc``)."""
    out: dict[str, Any] = {}
    for path in sorted(history_dir().glob(f"{name}-*.avsc")):
        stem_name, _, fp = path.stem.rpartition("-")
        if stem_name == name:
            out[fp] = fastavro.parse_schema(json.loads(path.read_text()))
    return out


def utf8_text(text: str) -> str:
    """``text`` as UTF-8 can hold it: a lone half of a UTF-16 surrogate pair (Salesforce's
    JSON can carry one, ``"\\ud83d"``: an emoji cut in half) becomes U+FFFD; a pair split in
    two code points is joined. Avro strings are UTF-8: the lone half made an outcome that
    could never be encoded."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


def _utf8_strings(value: Any) -> Any:
    """``value`` with every string in it made :func:`utf8_text`."""
    if isinstance(value, str):
        return utf8_text(value)
    if isinstance(value, dict):
        return {k: _utf8_strings(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_utf8_strings(v) for v in value]
    return value


def encode_schemaless(schema: Any, record: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    try:
        try:
            fastavro.schemaless_writer(buf, schema, record)
        except UnicodeEncodeError:  # a lone surrogate in a string: written as U+FFFD
            buf = io.BytesIO()
            fastavro.schemaless_writer(buf, schema, _utf8_strings(record))
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise SerdeError(f"cannot encode record as {schema.get('name')}: {exc}") from exc
    return buf.getvalue()


def decode_schemaless(writer: Any, payload: bytes | None,
                      reader: Any | None = None) -> dict[str, Any]:
    if payload is None:
        raise SerdeError("tombstone (no value)")
    stream = io.BytesIO(payload)
    try:
        out = fastavro.schemaless_reader(stream, writer, reader)
    except Exception as exc:  # noqa: BLE001 - fastavro raises many kinds on garbage
        raise SerdeError(f"cannot decode payload ({len(payload)} bytes): "
                         f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(out, dict):
        raise SerdeError("payload did not decode to a record")
    if stream.tell() != len(payload):
        # bytes the schema does not account for: written with another schema than the one
        # its id names (a record of that schema read as a prefix decodes "fine")
        raise SerdeError(f"cannot decode payload ({len(payload)} bytes): "
                         f"{len(payload) - stream.tell()} byte(s) left after the record")
    return out


def confluent_schema_id(value: bytes | None) -> int | None:
    """The schema id of a value framed in the Confluent wire format, else None."""
    if value is None or len(value) < CONFLUENT_PREFIX.size or value[0] != MAGIC:
        return None
    return int(CONFLUENT_PREFIX.unpack_from(value)[1])


def frame(schema_id: int, payload: bytes) -> bytes:
    """Confluent wire format: magic byte 0, 4-byte big-endian schema id, Avro binary."""
    return CONFLUENT_PREFIX.pack(MAGIC, schema_id) + payload


def _aliases(schema: dict[str, Any]) -> list[str]:
    """A named schema's aliases as full names (one without a dot is in its namespace)."""
    name = schema.get("name", "")
    space = schema.get("namespace") or (name.rpartition(".")[0] if "." in name else "")
    return [a if "." in a or not space else f"{space}.{a}" for a in schema.get("aliases", [])]


def has_schema_header(headers: Iterable[tuple[str, Any]] | Mapping[str, Any] | None) -> bool:
    if not headers:
        return False
    keys = headers.keys() if isinstance(headers, Mapping) else (k for k, _v in headers)
    return any((k.decode() if isinstance(k, bytes) else k) == SCHEMA_HEADER for k in keys)


def header_text(headers: Iterable[tuple[str, Any]] | Mapping[str, Any] | None,
                name: str) -> str | None:
    """The last value of header ``name`` as text, or None."""
    if not headers:
        return None
    items = headers.items() if isinstance(headers, Mapping) else headers
    found: str | None = None
    for key, value in items:
        if (key.decode() if isinstance(key, bytes) else key) == name:
            found = (value.decode(errors="replace") if isinstance(value, bytes)
                     else None if value is None else str(value))
    return found


def _safe_url(url: str) -> tuple[str, tuple[str, str] | None]:
    """Split ``user:secret@`` out of the URL: the secret never appears in errors or logs."""
    parts = urlsplit(url.rstrip("/"))
    if parts.username is None:
        return urlunsplit(parts), None
    # the host and port as written: an IPv6 literal keeps its brackets (and zone)
    netloc = parts.netloc.rpartition("@")[2]
    # percent-decoded, as a URL carries them (a '/' in a secret is written %2F)
    return urlunsplit(parts._replace(netloc=netloc)), (unquote(parts.username),
                                                       unquote(parts.password or ""))


class SchemaRegistry:
    """Tiny client of a Confluent-compatible schema registry (register + fetch by id).

    Every failure is a :class:`SerdeError`: retryable when the registry is unreachable,
    answers 5xx or anything but its own answer (a 200 without a schema text: a proxy's page,
    a wrong URL; and for any refused registration — our schemas are fine, the registry's
    configuration is not), not retryable only for a schema id the registry says it does
    not know (``40403``), an id outside :data:`SCHEMA_IDS` (never asked: no registry holds
    one) and a schema text that is not Avro. Those ids are remembered for
    ``negative_ttl_s`` so a burst of such records costs one request (at most
    :data:`UNKNOWN_IDS_KEPT` of them: a topic of garbage must not grow the memory).
    """

    def __init__(self, url: str, *, timeout: float = 5.0, negative_ttl_s: float = 30.0,
                 username: str = "", password: Secret | None = None,
                 ca_location: str = "", write: bool = True) -> None:
        #: serdes with this registry write the Confluent format; False (``AVRO_WIRE_FORMAT=
        #: PLAIN``): they write plain Avro and only read Confluent records through it
        self.write = write
        self.url, auth = _safe_url(url)
        if username:  # the settings win over credentials in the URL
            auth = (username, password.reveal() if password else "")
        self._client = httpx.Client(base_url=self.url, timeout=timeout, auth=auth,
                                    verify=(ssl.create_default_context(cafile=ca_location)
                                            if ca_location else True),
                                    headers={"Accept": REGISTRY_CONTENT_TYPE})
        self._ids: dict[tuple[str, str], int] = {}
        self._by_id: dict[int, Any] = {}
        self._unknown: dict[int, tuple[float, str]] = {}  # in the order refused: oldest first
        self._negative_ttl_s = negative_ttl_s
        self._lock = threading.Lock()
        self.requests = 0

    def _call(self, method: str, path: str, what: str, **kw: Any) -> httpx.Response:
        self.requests += 1
        try:
            return self._client.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise SerdeError(f"schema registry {self.url} unavailable ({what}): "
                             f"{type(exc).__name__}: {exc}", retryable=True) from exc

    @staticmethod
    def _error(resp: httpx.Response) -> tuple[int | None, str]:
        try:
            body = resp.json()
            return body.get("error_code"), str(body.get("message", ""))
        except (ValueError, AttributeError):
            return None, redact(resp.text)[:200]

    def register(self, subject: str, schema: str) -> int:
        key = (subject, schema)
        with self._lock:
            if key in self._ids:
                return self._ids[key]
        resp = self._call("POST", f"/subjects/{quote(subject, safe='')}/versions",
                          f"registering {subject}", json={"schema": schema},
                          headers={"Content-Type": REGISTRY_CONTENT_TYPE})
        if resp.status_code != 200:
            code, message = self._error(resp)
            raise SerdeError(f"schema registry {self.url} refused to register {subject}: "
                             f"HTTP {resp.status_code} error_code {code}: {message}",
                             retryable=True)
        try:
            schema_id = int(resp.json()["id"])
        except (ValueError, KeyError, TypeError) as exc:
            raise SerdeError(f"schema registry {self.url}: unexpected answer registering "
                             f"{subject}: {redact(resp.text)[:200]}", retryable=True) from exc
        with self._lock:
            self._ids[key] = schema_id
            self._by_id[schema_id] = fastavro.parse_schema(json.loads(schema))
        return schema_id

    def known(self, schema_id: int) -> bool:
        """The schema is cached: :meth:`schema` returns it without a call."""
        with self._lock:
            return schema_id in self._by_id

    def schema(self, schema_id: int) -> Any:
        with self._lock:
            if schema_id in self._by_id:
                return self._by_id[schema_id]
            refused = self._unknown.get(schema_id)
            if refused and time.monotonic() - refused[0] < self._negative_ttl_s:
                raise SerdeError(refused[1])
        if schema_id not in SCHEMA_IDS:
            # not asked: Confluent answers such an id with a 404 that is not 40403 (no route
            # for it), the answer a wrong URL gets too, which must stay retryable
            reason = (f"unknown schema id {schema_id}: no schema registry holds it (ids are "
                      f"{SCHEMA_IDS.start}..{SCHEMA_IDS.stop - 1}): not a Confluent record")
            self._refused(schema_id, reason)
            raise SerdeError(reason)
        resp = self._call("GET", f"/schemas/ids/{schema_id}", f"fetching schema id {schema_id}")
        if resp.status_code != 200:
            code, message = self._error(resp)
            if resp.status_code == 404 and code == SCHEMA_NOT_FOUND:
                reason = (f"unknown schema id {schema_id}: the schema registry {self.url} "
                          f"does not know it ({code} {message})")
                self._refused(schema_id, reason)
                raise SerdeError(reason)
            raise SerdeError(f"schema registry {self.url}: cannot fetch schema id {schema_id}: "
                             f"HTTP {resp.status_code} error_code {code}: {message}",
                             retryable=True)
        try:
            text = resp.json()["schema"]
        except (ValueError, KeyError, TypeError):
            text = None
        if not isinstance(text, str):
            # not the registry's answer (a proxy's page, a wrong URL): not the record's fault
            raise SerdeError(f"schema registry {self.url}: unexpected answer fetching schema "
                             f"id {schema_id}: HTTP {resp.status_code} "
                             f"{resp.headers.get('Content-Type', '')}: {redact(resp.text)[:200]}",
                             retryable=True)
        try:
            parsed = fastavro.parse_schema(json.loads(text))
        except Exception as exc:  # noqa: BLE001 - any bad schema text
            reason = f"schema id {schema_id} from the registry is not valid Avro: {exc}"
            self._refused(schema_id, reason)
            raise SerdeError(reason) from exc
        with self._lock:
            self._by_id[schema_id] = parsed
        return parsed

    def _refused(self, schema_id: int, reason: str) -> None:
        """Remember an unknown id; the expired and those past :data:`UNKNOWN_IDS_KEPT` go
        (from the front: the dict is in the order refused)."""
        now = time.monotonic()
        with self._lock:
            self._unknown.pop(schema_id, None)
            while self._unknown:
                oldest, (at, _reason) = next(iter(self._unknown.items()))
                if now - at < self._negative_ttl_s and len(self._unknown) < UNKNOWN_IDS_KEPT:
                    break
                del self._unknown[oldest]
            self._unknown[schema_id] = (now, reason)

    def close(self) -> None:
        self._client.close()


class AvroSerde:
    """Encode/decode one topic's values with one schema from ``schemas/``.

    With a ``registry`` for writing (``registry.write``), :meth:`encode` writes the
    Confluent wire format (registering the schema under ``<topic>-value`` on first use) and
    :meth:`headers` is empty; otherwise — no registry, or a read-only one — plain Avro with
    the ``sfprov.schema`` header (and, for :data:`VERSIONED_SCHEMAS`, the fingerprint
    header). :meth:`decode` reads both formats either way (a Confluent record needs the
    registry, read-only or not; without one it is a non-retryable error).
    """

    def __init__(self, schema_name: str, *, topic: str = "",
                 registry: SchemaRegistry | None = None) -> None:
        self.schema_name = schema_name
        self.schema = load_schema(schema_name)
        self.full_name: str = self.schema["name"]
        #: the writer schema names a plain record's ``sfprov.schema`` header may carry
        self.names = frozenset({self.full_name, *_aliases(json.loads(schema_json(schema_name)))})
        self.fingerprint = fingerprint(self.schema)
        self.versioned = schema_name in VERSIONED_SCHEMAS
        self.topic = topic
        self.registry = registry
        self._schema_id: int | None = None

    @property
    def subject(self) -> str:
        return f"{self.topic}-value"

    @property
    def writes_confluent(self) -> bool:
        """:meth:`encode` writes the Confluent wire format (a registry for writing)."""
        return self.registry is not None and self.registry.write

    def headers(self) -> list[tuple[str, bytes]]:
        """Headers to write with each encoded value (none in the Confluent format)."""
        if self.writes_confluent:
            return []
        if self.versioned:
            return [(SCHEMA_HEADER, self.full_name.encode()),
                    (FINGERPRINT_HEADER, self.fingerprint.encode())]
        return [(SCHEMA_HEADER, self.full_name.encode())]

    def schema_id(self) -> int:
        """Register the schema (once) and return its id; retryable SerdeError when the
        registry is down."""
        if self.registry is None:
            raise SerdeError("no schema registry configured")
        if self._schema_id is None:
            if not self.topic:
                raise SerdeError(f"{self.schema_name}: a topic is needed to register "
                                 "under <topic>-value")
            self._schema_id = self.registry.register(self.subject, schema_json(self.schema_name))
        return self._schema_id

    def encodes_offline(self) -> bool:
        """:meth:`encode` makes no call to the schema registry: it writes plain Avro, or the
        schema's id is cached (after the first successful registration)."""
        return not self.writes_confluent or self._schema_id is not None

    def encode(self, record: dict[str, Any]) -> bytes:
        payload = encode_schemaless(self.schema, record)
        if not self.writes_confluent:
            return payload
        return frame(self.schema_id(), payload)

    def decode(self, value: bytes | None,
               headers: Iterable[tuple[str, Any]] | Mapping[str, Any] | None = None
               ) -> dict[str, Any]:
        """Decode a value in either format (the module's rules). ``headers``: the record's
        headers, None the same as none: a plain record without the ``sfprov.schema`` header
        that starts with a 0 byte is read as a Confluent one either way. A null value (a
        tombstone) is a non-retryable :class:`SerdeError`."""
        if value is None:
            raise SerdeError("tombstone (no value)")
        if headers is not None and has_schema_header(headers):
            return self._decode_plain(value, headers)
        schema_id = confluent_schema_id(value)
        if schema_id is None:
            return decode_schemaless(self.schema, value)
        return self._decode_confluent(schema_id, value)

    def offline(self, value: bytes | None,
                headers: Iterable[tuple[str, Any]] | Mapping[str, Any] | None = None) -> bool:
        """:meth:`decode` of this value makes no call to the schema registry: it is plain
        Avro, or its writer's schema is cached (or there is no registry to call)."""
        if self.registry is None or (headers is not None and has_schema_header(headers)):
            return True
        schema_id = confluent_schema_id(value)
        return schema_id is None or self.registry.known(schema_id)

    def _decode_plain(self, value: bytes,
                      headers: Iterable[tuple[str, Any]] | Mapping[str, Any]) -> dict[str, Any]:
        """A plain record with the ``sfprov.schema`` header, read with the writer's version
        its fingerprint header names (none: :data:`UNVERSIONED`, or this schema). A header
        naming another schema (neither this one's full name nor one of its aliases) is a
        non-retryable error: its bytes would decode as garbage, or not at all."""
        named = header_text(headers, SCHEMA_HEADER)
        if named and named not in self.names:
            raise SerdeError(f"record of schema {named} (its {SCHEMA_HEADER} header), not "
                             f"{self.full_name}: written to the wrong topic?")
        fp = header_text(headers, FINGERPRINT_HEADER) or UNVERSIONED.get(self.schema_name)
        if fp is None or fp == self.fingerprint:
            return decode_schemaless(self.schema, value)
        writer = schema_history(self.schema_name).get(fp)
        if writer is None:
            raise SerdeError(f"{self.full_name} record written with schema version {fp}, which "
                             f"this release does not have (schemas/history/"
                             f"{self.schema_name}-{fp}.avsc): written by a newer release?")
        try:
            return decode_schemaless(writer, value, self.schema)
        except SerdeError as exc:
            raise SerdeError(f"schema version {fp}: {exc}") from exc

    def _decode_confluent(self, schema_id: int, value: bytes) -> dict[str, Any]:
        if self.registry is None:
            raise SerdeError(f"record is in the Confluent wire format (schema id {schema_id}) "
                             "but SCHEMA_REGISTRY_URL is not set (to write plain Avro again, "
                             "keep it and set AVRO_WIRE_FORMAT=PLAIN until no Confluent "
                             "record is left)")
        writer = self.registry.schema(schema_id)
        try:
            return decode_schemaless(writer, value[CONFLUENT_PREFIX.size:], self.schema)
        except SerdeError as exc:
            raise SerdeError(f"schema id {schema_id}: {exc}") from exc


def registry_from_url(url: str) -> SchemaRegistry | None:
    return SchemaRegistry(url) if url else None


def registry_for(kafka: KafkaSettings) -> SchemaRegistry | None:
    """The registry client of ``SCHEMA_REGISTRY_URL`` with its basic auth and CA (None when
    no registry is configured: plain Avro, and Confluent records cannot be read); read-only
    (plain Avro written, Confluent records still read) with ``AVRO_WIRE_FORMAT=PLAIN``."""
    if not kafka.schema_registry_url:
        return None
    return SchemaRegistry(kafka.schema_registry_url, username=kafka.schema_registry_username,
                          password=kafka.schema_registry_password,
                          ca_location=kafka.schema_registry_ca_location,
                          write=kafka.writes_confluent)


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def epoch_ms(value: dt.datetime | int | float) -> int:
    """A ``timestamp-millis`` field in epoch milliseconds: fastavro's aware datetime (naive:
    UTC) or the raw number. Integer arithmetic: ``int(value.timestamp() * 1000)`` is 1 ms
    low for many instants from 2038 on (the float lands just under the millisecond)."""
    if not isinstance(value, dt.datetime):
        return int(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    delta = value - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000
