"""The registry client remembers schema ids the registry does not know (one request per burst
of such records), but only so many: the memory grew with every distinct id, expired or not
(the reviewer's 50,000 ids of garbage: 16 MB, never given back)."""

from __future__ import annotations

import os

import httpx
import pytest

from common import avro
from common.avro import UNKNOWN_IDS_KEPT, AvroSerde, SchemaRegistry, SerdeError


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
