"""common.avro with a registry: both wire formats, mixed topics, unknown ids, outages.

The registry is the emulator over real HTTP (no mocks); the worker's decode step is
exercised through ``streams.handler.decode``.
"""

from __future__ import annotations

import asyncio
import struct
import time

import pytest

from common.avro import (
    SCHEMA_HEADER,
    AvroSerde,
    SchemaRegistry,
    SerdeError,
    confluent_schema_id,
)
from common.backoff import retry_forever
from sandbox.registry.harness import running_registry
from streams.handler import DeadLetter, RawRecord, decode

TOPIC = "t.provisioning.outcomes"


def outcome(order_id: str = "801000000000001AAA", **extra: object) -> dict:
    return {"order_id": order_id, "idem_key": f"{order_id}-1", "status": "Provisioned",
            "whmcs_order_id": 7, "whmcs_service_ids": [70],
            "completed_at": int(time.time() * 1000), **extra}


def request(order_id: str = "801000000000001AAA", event_uuid: str = "uuid-1") -> dict:
    now = int(time.time() * 1000)
    return {"event_uuid": event_uuid, "replay_id": b"\x01", "schema_id": "s",
            "channel": "/event/OrderProvisionRequested__e", "received_at": now,
            "CreatedDate": now, "CreatedById": "005000000000001AAA", "OrderId__c": order_id,
            "IdemKey__c": f"{order_id}-{now}", "CorrelationId__c": None,
            "RequestedBy__c": None, "Version__c": 1.0}


@pytest.fixture
def reg():
    with running_registry() as r:
        yield r


def test_plain_round_trip_keeps_the_header_format():
    serde = AvroSerde("provisioning_outcome", topic=TOPIC)
    value = serde.encode(outcome())
    assert serde.headers() == [(SCHEMA_HEADER, b"sfprov.v1.ProvisioningOutcome")]
    assert serde.decode(value, serde.headers())["whmcs_order_id"] == 7
    assert serde.decode(value)["whmcs_order_id"] == 7


def test_a_tombstone_is_a_non_retryable_serde_error():
    """A null value (a tombstone) was a TypeError from the error message's ``len(None)``:
    ``sfprov tail`` / ``trace`` crashed on one."""
    serde = AvroSerde("provision_request", topic="t")
    for headers in (None, [], serde.headers()):
        with pytest.raises(SerdeError, match="tombstone") as info:
            serde.decode(None, headers)  # type: ignore[arg-type]
        assert not info.value.retryable
    out = decode(serde, RawRecord(b"k", None, "t", 0, 1))
    assert isinstance(out, DeadLetter) and "tombstone" in out.reason


def test_a_plain_record_of_another_schema_is_refused_naming_both():
    """The ``sfprov.schema`` header names the writer's schema: a plain outcome on the requests
    topic decoded as a request silently (garbage fields) instead of becoming a dead letter."""
    outcomes = AvroSerde("provisioning_outcome", topic=TOPIC)
    value = outcomes.encode(outcome())
    requests = AvroSerde("provision_request", topic="t.requests")
    with pytest.raises(SerdeError) as info:
        requests.decode(value, outcomes.headers())
    assert not info.value.retryable
    assert "sfprov.v1.ProvisioningOutcome" in str(info.value)
    assert "sfprov.v1.ProvisionRequest" in str(info.value)
    out = decode(requests, RawRecord(b"k", value, "t.requests", 0, 1,
                                     headers=outcomes.headers()))
    assert isinstance(out, DeadLetter) and "ProvisioningOutcome" in out.reason
    # the versioned ones too (the offsets' serde meeting a replay gap)
    gaps = AvroSerde("replay_gap")
    gap = gaps.encode({"connector": "c", "channel": "/event/X", "last_good_replay_id": None,
                       "last_good_at": None, "policy": "FAIL", "error_code": "E",
                       "error_message": "m", "detected_at": 1})
    with pytest.raises(SerdeError, match="sfprov.v1.ReplayGap"):
        AvroSerde("connector_offset").decode(gap, gaps.headers())
    # its own name (bytes or text), and no header at all, decode as before
    assert requests.decode(requests.encode(request()), requests.headers())["OrderId__c"]
    assert requests.decode(requests.encode(request()),
                           {SCHEMA_HEADER: "sfprov.v1.ProvisionRequest"})["OrderId__c"]
    assert outcomes.decode(value)["whmcs_order_id"] == 7


def test_a_record_with_bytes_after_it_is_refused():
    """Bytes left after the record (another schema's record read as a prefix of ours)
    decoded as a record; the worker took its first fields for a request."""
    requests = AvroSerde("provision_request", topic="t.requests")
    value = requests.encode(request())
    assert requests.decode(value)["OrderId__c"] == "801000000000001AAA"
    with pytest.raises(SerdeError, match="1 byte.s. left after the record") as info:
        requests.decode(value + b"\x00")
    assert not info.value.retryable
    out = decode(requests, RawRecord(b"k", value + b"\x00", "t.requests", 0, 1))
    assert isinstance(out, DeadLetter) and "left after the record" in out.reason


def test_confluent_round_trip_registers_under_topic_value(reg):
    serde = AvroSerde("provisioning_outcome", topic=TOPIC, registry=SchemaRegistry(reg.url))
    value = serde.encode(outcome())
    schema_id = confluent_schema_id(value)
    assert value[0] == 0 and schema_id == reg.latest(f"{TOPIC}-value")["id"]
    assert struct.unpack(">I", value[1:5])[0] == schema_id
    assert serde.headers() == []  # Confluent records carry no sfprov.schema header
    assert reg.subjects() == [f"{TOPIC}-value"]
    # a fresh reader (empty cache) fetches the writer schema by id
    reader = AvroSerde("provisioning_outcome", registry=SchemaRegistry(reg.url))
    assert reader.decode(value, [])["whmcs_service_ids"] == [70]
    assert reader.decode(value)["whmcs_service_ids"] == [70]
    # the payload after the 5-byte prefix is plain Avro (what the README's snippet relies on)
    assert AvroSerde("provisioning_outcome").decode(value[5:], [])["order_id"] == \
        outcome()["order_id"]


def test_a_topic_in_both_formats_reads_back(reg):
    registry = SchemaRegistry(reg.url)
    plain = AvroSerde("provisioning_outcome", topic=TOPIC)
    confluent = AvroSerde("provisioning_outcome", topic=TOPIC, registry=registry)
    # a plain record that starts with a 0 byte (empty order id): the header decides, not
    # the first byte — with and without a registry configured on the reader
    zero = plain.encode(outcome(order_id=""))
    assert zero[0] == 0
    topic = [(plain.encode(outcome("A")), plain.headers()),
             (confluent.encode(outcome("B")), confluent.headers()),
             (zero, plain.headers()),
             (plain.encode(outcome("D")), []),  # another tool's plain record, no header
             (confluent.encode(outcome("E")), [("other", b"x")])]
    for reader in (AvroSerde("provisioning_outcome", registry=SchemaRegistry(reg.url)),
                   confluent):
        assert [reader.decode(v, h)["order_id"] for v, h in topic] == ["A", "B", "", "D", "E"]
    # the plain reader reads its own format; a Confluent record is a clear error
    no_registry = AvroSerde("provisioning_outcome")
    assert no_registry.decode(zero, plain.headers())["order_id"] == ""
    with pytest.raises(SerdeError, match="SCHEMA_REGISTRY_URL is not set") as info:
        no_registry.decode(topic[1][0], [])
    assert not info.value.retryable


def test_unknown_schema_id_is_a_non_retryable_error_naming_the_id(reg):
    serde = AvroSerde("provisioning_outcome", topic=TOPIC, registry=SchemaRegistry(reg.url))
    good = serde.encode(outcome())
    forged = struct.pack(">bI", 0, 4242) + good[5:]
    for headers in ([], None):
        with pytest.raises(SerdeError, match="unknown schema id 4242") as info:
            serde.decode(forged, headers)
        assert not info.value.retryable
    requests_before = serde.registry.requests
    with pytest.raises(SerdeError, match="4242"):
        serde.decode(forged, [])
    assert serde.registry.requests == requests_before  # remembered: no second request


def test_registry_down_is_retryable_on_encode_and_decode(reg):
    registry = SchemaRegistry(reg.url, timeout=2)
    serde = AvroSerde("provisioning_outcome", topic=TOPIC, registry=registry)
    reg.stop()
    with pytest.raises(SerdeError, match="unavailable") as info:
        serde.encode(outcome())
    assert info.value.retryable
    reg.start()
    value = serde.encode(outcome())
    reg.stop()
    cold = AvroSerde("provisioning_outcome", registry=SchemaRegistry(reg.url, timeout=2))
    with pytest.raises(SerdeError) as info:
        cold.decode(value, [])
    assert info.value.retryable
    assert serde.decode(value, [])["order_id"]  # the writer knows its own id: no request
    reg.start()
    assert cold.decode(value, [])["status"] == "Provisioned"


def test_registry_credentials_never_appear_in_errors(reg):
    url = reg.url.replace("http://", "http://analyst:s3cr3t-pw@")
    registry = SchemaRegistry(url, timeout=2)
    serde = AvroSerde("provisioning_outcome", topic=TOPIC, registry=registry)
    assert serde.decode(serde.encode(outcome()), [])["order_id"]  # credentials sent, works
    reg.stop()
    cold = AvroSerde("provisioning_outcome", registry=SchemaRegistry(url, timeout=2))
    with pytest.raises(SerdeError) as info:
        cold.decode(serde.encode(outcome()), [])
    assert "s3cr3t-pw" not in str(info.value) and "analyst" not in str(info.value)


@pytest.mark.parametrize("url, plain", [
    ("http://u:p%2Fw@[::1]:8081/", "http://[::1]:8081"),
    ("https://u:pw@[fe80::1%25eth0]:8443", "https://[fe80::1%25eth0]:8443"),
    ("http://u:pw@registry.example.com", "http://registry.example.com"),
    ("http://u:pw@registry.example.com:8081", "http://registry.example.com:8081"),
])
def test_credentials_come_out_of_the_url_and_its_host_stays_as_written(url, plain):
    """An IPv6 literal keeps its brackets (and zone) once ``user:secret@`` is taken out:
    without them the address is not a URL and every process failed at start-up."""
    from common.avro import _safe_url
    safe, auth = _safe_url(url)
    assert safe == plain
    assert auth is not None and auth[0] == "u"
    SchemaRegistry(url, timeout=2)  # a client can be made of it


ORDER_A, ORDER_B, ORDER_C = "801000000000001AAA", "801000000000002AAA", "801000000000003AAA"


class _Worker:
    """The worker's decode step: each record → its event or its dead letter."""

    def __init__(self, serde: AvroSerde) -> None:
        self.serde = serde

    def decode(self, records: list[RawRecord]) -> tuple[list, list[DeadLetter]]:
        items = [decode(self.serde, r) for r in records]
        return ([(i, r) for i, r in zip(items, records, strict=True)
                 if not isinstance(i, DeadLetter)],
                [i for i in items if isinstance(i, DeadLetter)])


def _processor(serde: AvroSerde) -> _Worker:
    return _Worker(serde)


def test_worker_decode_mixed_formats_and_dead_letters_an_unknown_id(reg):
    registry = SchemaRegistry(reg.url)
    confluent = AvroSerde("provision_request", topic="t.requests", registry=registry)
    plain = AvroSerde("provision_request", topic="t.requests")
    forged = struct.pack(">bI", 0, 31337) + plain.encode(request(ORDER_C))
    records = [RawRecord(b"A", plain.encode(request(ORDER_A)), "t.requests", 0, 0,
                         headers=plain.headers()),
               RawRecord(b"B", confluent.encode(request(ORDER_B)), "t.requests", 0, 1, headers=[]),
               RawRecord(b"C", forged, "t.requests", 0, 2, headers=[])]
    worker = _processor(AvroSerde("provision_request", topic="t.requests",
                                  registry=SchemaRegistry(reg.url)))
    events, dead = worker.decode(records)
    assert [e.order_id for e, _r in events] == [ORDER_A, ORDER_B]
    assert len(dead) == 1 and dead[0].record.offset == 2
    assert "unknown schema id 31337" in dead[0].reason and dead[0].error_code == "UNDECODABLE"


def test_worker_waits_for_the_registry_instead_of_dead_lettering(reg):
    confluent = AvroSerde("provision_request", topic="t.requests",
                          registry=SchemaRegistry(reg.url))
    records = [RawRecord(b"B", confluent.encode(request(ORDER_B)), "t.requests", 0, 0, headers=[])]
    worker = _processor(AvroSerde("provision_request", topic="t.requests",
                                  registry=SchemaRegistry(reg.url, timeout=1)))
    reg.stop()
    with pytest.raises(SerdeError) as info:
        worker.decode(records)  # raised, not turned into a dead letter
    assert info.value.retryable

    async def decode_while_it_comes_back():
        sleeps = []

        async def sleep(delay):
            sleeps.append(delay)
            if len(sleeps) == 2:
                reg.start()
            await asyncio.sleep(0)

        result = await retry_forever("decoding", lambda: asyncio.to_thread(worker.decode,
                                                                           records),
                                     sleep=sleep)
        return result, sleeps

    (events, dead), sleeps = asyncio.run(decode_while_it_comes_back())
    assert len(sleeps) == 2 and dead == [] and [e.order_id for e, _ in events] == [ORDER_B]


def test_offline_says_when_a_decode_makes_no_registry_call(reg):
    """The worker decodes on its event loop only what needs no registry call (a cached
    writer's schema, plain Avro); anything else goes to a thread."""
    registry = SchemaRegistry(reg.url, timeout=2)
    writer = AvroSerde("provisioning_outcome", topic=TOPIC, registry=registry)
    framed = writer.encode(outcome())
    plain = AvroSerde("provisioning_outcome", topic=TOPIC)
    plain_value = plain.encode(outcome())
    cold = AvroSerde("provisioning_outcome", registry=SchemaRegistry(reg.url, timeout=2))
    assert plain.offline(framed, [])  # no registry configured: nothing to call
    assert cold.offline(plain_value, plain.headers())
    assert not cold.offline(framed, [])  # its writer's schema is not cached yet
    assert not cold.offline(framed, None)
    before = cold.registry.requests
    cold.decode(framed, [])
    assert cold.registry.requests == before + 1
    assert cold.offline(framed, [])  # cached now
    cold.decode(framed, [])
    assert cold.registry.requests == before + 1
    forged = struct.pack(">bI", 0, 4242) + b"\x00"
    assert not cold.offline(forged, [])  # an unknown id is never decoded on the loop
