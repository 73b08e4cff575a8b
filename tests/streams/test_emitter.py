"""The worker's outcome emitter: an outcome that cannot be encoded is the event's error (the
handler retries it, then dead-letters it), never a send retried forever."""

from __future__ import annotations

import asyncio
import time

import pytest

from common.avro import AvroSerde, SerdeError
from streams.decide import Event, outcome_record
from streams.emitter import KafkaEmitter


class Writer:
    def __init__(self) -> None:
        self.sent: list[tuple] = []

    async def send_soon(self, topic, partition, key, value, headers) -> None:
        self.sent.append((topic, key, value))


def emitter() -> KafkaEmitter:
    made = object.__new__(KafkaEmitter)  # no faust app: only what send_outcome uses
    made.writer = Writer()  # type: ignore[assignment]
    made.outcomes = "t.provisioning.outcomes"
    made.serde = AvroSerde("provisioning_outcome")
    made.headers = dict(made.serde.headers())
    made.outcome_headers = lambda _o: {}
    made.unacked, made.clock = {}, time.time
    return made


def outcome(**fields):
    event = Event(order_id="801000000000001AAA", idem_key="k", event_uuid="e",
                  correlation_id=None, requested_at=None)
    return outcome_record(event, "Failed", error_code="WHMCS_ERROR", **fields)


def test_an_outcome_that_does_not_fit_its_schema_fails_at_once():
    """A WHMCS client id past Avro's long (mapping refuses such ids now; this is the second
    line): the send was retried forever, the partition's commits held behind it."""
    sink = emitter()

    async def go():
        await asyncio.wait_for(sink.send_outcome(outcome(whmcs_client_id=10**20)), timeout=5)
    with pytest.raises(SerdeError):
        asyncio.run(go())
    assert sink.writer.sent == []
    asyncio.run(sink.send_outcome(outcome(whmcs_client_id=1010)))
    assert len(sink.writer.sent) == 1
