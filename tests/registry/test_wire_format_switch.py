"""AVRO_WIRE_FORMAT: reading through the registry is separate from writing with it.

The way back from a registry is ``AVRO_WIRE_FORMAT=PLAIN`` with ``SCHEMA_REGISTRY_URL`` kept:
the processes write plain Avro again and still read the Confluent records already in the
topics. Emptying ``SCHEMA_REGISTRY_URL`` instead leaves those records undecodable (the
worker dead-letters them) — the documented behaviour, kept. The registry is the emulator
over real HTTP.
"""

from __future__ import annotations

import pytest

from common.avro import SCHEMA_HEADER, AvroSerde, SchemaRegistry, SerdeError, registry_for
from common.errors import ConfigError
from common.settings import KafkaSettings
from sandbox.registry.harness import running_registry
from streams.handler import DeadLetter, RawRecord, decode

OUTCOMES = "t.provisioning.outcomes"
REQUESTS = "t.order-provision-requested"
ORDER = "801000000000001AAA"
OUTCOME = {"order_id": ORDER, "idem_key": f"{ORDER}-1", "status": "Provisioned",
           "whmcs_order_id": 7, "whmcs_service_ids": [70], "completed_at": 1700000000456}
REQUEST = {"event_uuid": "6a1f7c2e-1b7d-4c5e-9f00-0123456789ab", "replay_id": b"\x01",
           "schema_id": "s", "channel": "/event/OrderProvisionRequested__e",
           "received_at": 1700000000000, "CreatedDate": 1700000000000,
           "CreatedById": "005000000000001AAA", "OrderId__c": ORDER,
           "IdemKey__c": f"{ORDER}-1700000000000"}


@pytest.fixture
def reg():
    with running_registry() as r:
        yield r


def settings(**env: str) -> KafkaSettings:
    return KafkaSettings.load(env)


def test_plain_writes_with_the_registry_kept_still_read_confluent_records(reg):
    before = AvroSerde("provisioning_outcome", topic=OUTCOMES, registry=SchemaRegistry(reg.url))
    framed = before.encode(OUTCOME)
    assert framed[0] == 0 and before.headers() == []
    switched_back = settings(SCHEMA_REGISTRY_URL=reg.url, AVRO_WIRE_FORMAT="PLAIN")
    after = AvroSerde("provisioning_outcome", topic=OUTCOMES,
                      registry=registry_for(switched_back))
    # reads the Confluent record through the registry ...
    assert after.decode(framed, [])["whmcs_service_ids"] == [70]
    # ... and writes plain Avro with the sfprov.schema header, like a process without one
    plain = AvroSerde("provisioning_outcome", topic=OUTCOMES)
    value = after.encode(OUTCOME)
    assert after.headers() == [(SCHEMA_HEADER, b"sfprov.v1.ProvisioningOutcome")]
    assert value == plain.encode(OUTCOME)
    assert plain.decode(value, after.headers())["order_id"] == ORDER
    # a topic that holds both is read by it whole
    assert [after.decode(v, h)["order_id"] for v, h in
            ((framed, []), (value, after.headers()))] == [ORDER, ORDER]
    # nothing is registered for writing any more
    fresh = AvroSerde("provisioning_outcome", topic="t.other", registry=registry_for(switched_back))
    fresh.encode(OUTCOME)
    assert "t.other-value" not in reg.subjects()


def test_the_worker_after_switching_back_decodes_its_confluent_backlog(reg):
    """The reviewer's switch-back case: the connector wrote Confluent records; the worker
    restarted with plain writes decodes them instead of dead-lettering them; with
    ``SCHEMA_REGISTRY_URL`` emptied it still dead-letters them, as documented."""
    connector = AvroSerde("provision_request", topic=REQUESTS, registry=SchemaRegistry(reg.url))
    record = RawRecord(ORDER.encode(), connector.encode(REQUEST), REQUESTS, 0, 5,
                       headers=[("sfprov.event_uuid", b"6a1f"), ("sfprov.connector", b"c")])
    switched_back = settings(SCHEMA_REGISTRY_URL=reg.url, AVRO_WIRE_FORMAT="PLAIN")
    worker = AvroSerde("provision_request", topic=REQUESTS, registry=registry_for(switched_back))
    event = decode(worker, record)
    assert not isinstance(event, DeadLetter) and event.order_id == ORDER
    # the connector restarted with the same settings writes plain records behind them
    connector = AvroSerde("provision_request", topic=REQUESTS, registry=registry_for(switched_back))
    value = connector.encode(REQUEST)
    assert connector.headers() == [(SCHEMA_HEADER, b"sfprov.v1.ProvisionRequest")]
    assert AvroSerde("provision_request").decode(value, connector.headers())["OrderId__c"] == ORDER
    url_emptied = settings(SCHEMA_REGISTRY_URL="")
    assert registry_for(url_emptied) is None
    dead = decode(AvroSerde("provision_request", topic=REQUESTS,
                            registry=registry_for(url_emptied)), record)
    assert isinstance(dead, DeadLetter) and dead.error_code == "UNDECODABLE"
    assert "SCHEMA_REGISTRY_URL is not set" in dead.reason


def test_without_a_registry_a_confluent_record_is_a_non_retryable_error(reg):
    framed = AvroSerde("provisioning_outcome", topic=OUTCOMES,
                       registry=SchemaRegistry(reg.url)).encode(OUTCOME)
    with pytest.raises(SerdeError, match="SCHEMA_REGISTRY_URL is not set") as info:
        AvroSerde("provisioning_outcome", registry=registry_for(settings())).decode(framed, [])
    assert not info.value.retryable
    assert "AVRO_WIRE_FORMAT=PLAIN" in str(info.value)  # it says how to switch back


def test_avro_wire_format_setting():
    url = "http://127.0.0.1:8081"
    assert not settings().writes_confluent and registry_for(settings()) is None
    assert settings(SCHEMA_REGISTRY_URL=url).writes_confluent  # AUTO: as before
    writing = registry_for(settings(SCHEMA_REGISTRY_URL=url))
    assert writing is not None and writing.write
    assert settings(SCHEMA_REGISTRY_URL=url, AVRO_WIRE_FORMAT="confluent").writes_confluent
    read_only = settings(SCHEMA_REGISTRY_URL=url, AVRO_WIRE_FORMAT="PLAIN")
    assert not read_only.writes_confluent
    registry = registry_for(read_only)
    assert registry is not None and not registry.write
    assert AvroSerde("provision_request", registry=registry).headers() == \
        AvroSerde("provision_request").headers()
    assert not settings(AVRO_WIRE_FORMAT="PLAIN").writes_confluent
    with pytest.raises(ConfigError, match="SCHEMA_REGISTRY_URL: required with "
                                          "AVRO_WIRE_FORMAT=CONFLUENT"):
        settings(AVRO_WIRE_FORMAT="CONFLUENT")
    with pytest.raises(ConfigError, match="AVRO_WIRE_FORMAT"):
        settings(AVRO_WIRE_FORMAT="BOTH")
