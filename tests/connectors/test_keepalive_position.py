"""A keepalive's replay id becomes the committed position only after every event delivered
before it is in Kafka (the connector's exactly-once contract, :mod:`connectors.source`)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from common.errors import KafkaError
from common.settings import ConnectorSettings, KafkaSettings
from connectors.decode import KafkaRecord
from connectors.offsets import EVENT, KEEPALIVE
from connectors.source import Connector


def event(i: int) -> KafkaRecord:
    return KafkaRecord(key=b"801", value=b"v", headers=[], event_uuid=f"uuid-{i}",
                       replay_id=bytes([i]), order_id="801")


class Writes:
    """The connector's transactional writer, refusing the requests topic while ``down``."""

    def __init__(self, kafka: KafkaSettings) -> None:
        self.kafka, self.down, self.committed = kafka, False, []

    def write(self, records: list[tuple[str, Any, Any, Any]]) -> None:
        if self.down and any(topic == self.kafka.requests for topic, *_ in records):
            raise KafkaError("requests partition: leader not available", retryable=True)
        self.committed.append([topic for topic, *_ in records])


@pytest.fixture
def connector() -> Any:
    kafka = KafkaSettings.load({}, bootstrap_servers="127.0.0.1:9")  # never reached
    conn = Connector(kafka=kafka, salesforce=None,  # type: ignore[arg-type]
                     connector=ConnectorSettings.load({}, name="keepalive-test"), auth=object(),
                     pubsub=SimpleNamespace(get_schema=lambda _schema_id: None))
    conn.writer.close()
    conn.writer = Writes(kafka)  # type: ignore[assignment]
    conn.decoder = SimpleNamespace(build=lambda ev: ev)  # type: ignore[assignment]
    return conn


def test_a_keepalive_behind_events_not_written_is_not_committed(connector: Any) -> None:
    sub = SimpleNamespace(flow=SimpleNamespace(buffered=0), consumed=lambda _n: None)
    events = SimpleNamespace(events=[event(1), event(2), event(3)])
    keepalive = SimpleNamespace(events=[], latest_replay_id=bytes([9]), pending_num_requested=100)
    writes = connector.writer
    writes.down = True  # the events' transaction fails; the offsets topic is still writable
    with pytest.raises(KafkaError):
        connector._handle(sub, [events, keepalive])  # one poll took both
    connector._last_keepalive_commit = 0.0  # the keepalive interval has passed
    connector._maybe_commit_keepalive()
    assert writes.committed == []  # a position past events 1-3 would skip them after a restart
    assert connector.position is None

    writes.down = False  # the redelivered events are written, then the keepalive counts
    connector._handle(sub, [events, keepalive])
    assert connector.position.source == EVENT and connector.position.replay_id == bytes([3])
    connector._last_keepalive_commit = 0.0
    connector._maybe_commit_keepalive()
    assert connector.position.source == KEEPALIVE and connector.position.replay_id == bytes([9])
    assert writes.committed[-1] == [connector.kafka.connector_offsets]
