"""`sfprov reconcile` encodes its requests with one serde: each Order once built its own
AvroSerde and SchemaRegistry (an httpx.Client never closed) and registered the schema again.
No broker: the producer is a stand-in; the registry is the in-process emulator."""

from __future__ import annotations

from typing import Any

from common import avro
from common.avro import AvroSerde, SchemaRegistry, confluent_schema_id
from common.settings import KafkaSettings
from ops import cmd_orders
from sandbox.registry.harness import running_registry

ORDERS = ["801000000000001AAA", "801000000000002AAA", "801000000000003AAA"]


class _Msg:
    def __init__(self, topic: str) -> None:
        self._topic = topic

    def topic(self) -> str:
        return self._topic


class _Producer:
    """Takes every record (a delivery report each at flush)."""

    def __init__(self, _config: dict[str, Any]) -> None:
        self.records: list[dict[str, Any]] = []
        _Producer.last = self

    def produce(self, topic: str, *, on_delivery: Any, **kwargs: Any) -> None:
        self.records.append({"topic": topic, "on_delivery": on_delivery, **kwargs})

    def poll(self, _timeout: float) -> int:
        return 0

    def flush(self, _timeout: float) -> int:
        for record in self.records:
            record["on_delivery"](None, _Msg(record["topic"]))
        return 0


def test_send_requests_registers_the_schema_once_and_closes_its_registry_client(monkeypatch):
    registries: list[SchemaRegistry] = []
    init = SchemaRegistry.__init__

    def tracked(self: SchemaRegistry, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        registries.append(self)

    monkeypatch.setattr(avro.SchemaRegistry, "__init__", tracked)
    monkeypatch.setattr(cmd_orders, "Producer", _Producer)
    with running_registry() as reg:
        assert reg.store is not None
        posts: list[str] = []
        register = reg.store.register

        def counting(subject: str, schema: str) -> int:
            posts.append(subject)
            return register(subject, schema)

        monkeypatch.setattr(reg.store, "register", counting)
        settings = KafkaSettings.load({}, schema_registry_url=reg.url)
        sent = cmd_orders.send_requests(settings, ORDERS)
        assert (sent.delivered, sent.not_delivered) == (3, 0)
        assert posts == [f"{settings.requests}-value"]  # once, not once per Order
        assert len(registries) == 1 and registries[0]._client.is_closed
        values = [r["value"] for r in _Producer.last.records]
        assert all(confluent_schema_id(v) == 1 for v in values)
        reader = AvroSerde("provision_request", registry=SchemaRegistry(reg.url))
        assert [reader.decode(v, [])["OrderId__c"] for v in values] == ORDERS


def test_send_requests_without_a_registry_writes_plain_avro(monkeypatch):
    monkeypatch.setattr(cmd_orders, "Producer", _Producer)
    settings = KafkaSettings.load({}, schema_registry_url="")
    assert cmd_orders.send_requests(settings, ORDERS[:1]).delivered == 1
    [record] = _Producer.last.records
    assert AvroSerde("provision_request").decode(record["value"], record["headers"])[
        "OrderId__c"] == ORDERS[0]
