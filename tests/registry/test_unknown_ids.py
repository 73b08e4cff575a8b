"""The registry client remembers schema ids the registry does not know (one request per burst
of such records), but only so many: the memory grew with every distinct id, expired or not
(the reviewer's 50,000 ids of garbage: 16 MB, never given back)."""

from __future__ import annotations

import os

import httpx
import pytest

from common import avro
from common.avro import UNKNOWN_IDS_KEPT, AvroSerde, SchemaRegistry, SerdeError
from streams.handler import DeadLetter, RawRecord, decode


class Registry:
    """Knows no schema id (40403, as Confluent's); answers at once — thousands of ids here."""

    answer = httpx.Response(404, json={"error_code": 40403, "message": "Schema not found"})

    def request(self, method: str, path: str, **_: object) -> httpx.Response:
        return self.answer


def registry(*, negative_ttl_s: float = 30.0) -> SchemaRegistry:
    made = SchemaRegistry("http://registry.invalid", negative_ttl_s=negative_ttl_s)
    made._client = Registry()  # type: ignore[assignment]
    return made


def garbage(schema_id: int) -> bytes:
    return b"\x00" + schema_id.to_bytes(4, "big") + os.urandom(20)


def test_unknown_ids_remembered_are_capped_oldest_out():
    reg = registry()
    serde = AvroSerde("provision_request", topic="t", registry=reg)
    ids = range(1, 2 * UNKNOWN_IDS_KEPT + 1)
    for schema_id in ids:
        with pytest.raises(SerdeError, match="unknown schema id"):
            serde.decode(garbage(schema_id), [])
    assert len(reg._unknown) <= UNKNOWN_IDS_KEPT, f"{len(reg._unknown)} unknown ids kept"
    requests = reg.requests
    with pytest.raises(SerdeError):
        serde.decode(garbage(ids[-1]), [])  # the newest still remembered: no request
    assert reg.requests == requests
    with pytest.raises(SerdeError):
        serde.decode(garbage(ids[0]), [])  # the oldest went: asked again
    assert reg.requests == requests + 1


def test_expired_unknown_ids_go_on_the_next_refusal(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(avro.time, "monotonic", lambda: now[0])
    reg = registry(negative_ttl_s=30.0)
    serde = AvroSerde("provision_request", topic="t", registry=reg)
    for schema_id in range(1, 101):
        with pytest.raises(SerdeError):
            serde.decode(garbage(schema_id), [])
    now[0] += 31.0
    with pytest.raises(SerdeError):
        serde.decode(garbage(500), [])
    assert list(reg._unknown) == [500]


def answering(handler) -> SchemaRegistry:
    """A client whose registry is ``handler`` (request → response), through httpx itself."""
    made = SchemaRegistry("http://registry.invalid")
    made._client = httpx.Client(base_url=made.url, transport=httpx.MockTransport(handler))
    return made


def confluent_404(request: httpx.Request) -> httpx.Response:
    """Real Confluent: ``GET /schemas/ids/{id}`` takes an Integer path parameter, so an id past
    2^31-1 matches no route: 404 with error_code 404, not 40403 (ids it could hold: 40403)."""
    schema_id = int(request.url.path.rsplit("/", 1)[1])
    if schema_id > 2**31 - 1:
        return httpx.Response(404, json={"error_code": 404, "message": "HTTP 404 Not Found"})
    return httpx.Response(404, json={"error_code": 40403, "message": "Schema not found"})


@pytest.mark.parametrize("schema_id", [0x80000000, 0xFFFFFFFF, 0])
def test_an_id_no_registry_can_hold_is_a_dead_letter_without_a_request(schema_id):
    """A frame from another producer (``00 80..FF …``) named an id past Confluent's Integer
    range: the registry's 404/404 was retried for ever, the worker's intake stuck."""
    reg = answering(confluent_404)
    serde = AvroSerde("provision_request", topic="t", registry=reg)
    rec = RawRecord(b"k", garbage(schema_id), "t", 0, 1)
    for _ in range(2):
        out = decode(serde, rec)
        assert isinstance(out, DeadLetter), out
        assert f"schema id {schema_id}" in out.reason and out.error_code == "UNDECODABLE"
    assert reg.requests == 0


def test_a_404_that_is_not_schema_not_found_stays_retryable():
    """A 404 without 40403 for an id in range is a wrong URL (a path prefix missing), not an
    unknown id: dead-lettering every record for it would lose good data."""
    reg = answering(lambda request: httpx.Response(
        404, json={"error_code": 404, "message": "HTTP 404 Not Found"}))
    serde = AvroSerde("provision_request", topic="t", registry=reg)
    with pytest.raises(SerdeError) as raised:
        decode(serde, RawRecord(b"k", garbage(5), "t", 0, 1))
    assert raised.value.retryable


@pytest.mark.parametrize("answer", [
    httpx.Response(200, text="<html>maintenance</html>",
                   headers={"Content-Type": "text/html"}),
    httpx.Response(200, json={"message": "hello from a proxy"}),
    httpx.Response(200, json=["not", "an", "object"]),
    httpx.Response(200, json={"schema": 5}),
], ids=["html", "no-schema", "list", "schema-not-text"])
def test_a_200_that_is_not_the_registrys_answer_is_retryable(answer):
    """A proxy's page or a wrong URL answering 200 is not the record's fault: retried, never a
    dead letter of good records (as :meth:`SchemaRegistry.register` treats the same)."""
    reg = answering(lambda request: answer)
    serde = AvroSerde("provision_request", topic="t", registry=reg)
    for _ in range(2):
        with pytest.raises(SerdeError, match="schema id 5") as raised:
            serde.decode(garbage(5), [])
        assert raised.value.retryable, raised.value
    assert reg.requests == 2  # not remembered as unknown


def test_a_schema_text_that_is_not_avro_is_a_remembered_dead_letter():
    reg = answering(lambda request: httpx.Response(200, json={"schema": '{"type": "nope"}'}))
    serde = AvroSerde("provision_request", topic="t", registry=reg)
    for _ in range(2):
        out = decode(serde, RawRecord(b"k", garbage(5), "t", 0, 1))
        assert isinstance(out, DeadLetter) and "not valid Avro" in out.reason, out
    assert reg.requests == 1
