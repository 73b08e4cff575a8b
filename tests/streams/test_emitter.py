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


def test_each_outcome_not_provisioned_and_each_dead_letter_is_in_the_workers_log(caplog):
    """An operator searching the worker's log by Order id, or by partition and offset after
    SfprovDeadLetters fired, found nothing: the worker logged neither its dead letters nor
    its Failed, Skipped and Duplicate outcomes (the connector and the sink log theirs)."""
    from streams.handler import DeadLetter, RawRecord

    sink = emitter()
    sink.dead_letters = "t.dead-letters"
    caplog.set_level("INFO", logger="streams.emitter")
    asyncio.run(sink.send_outcome(outcome(error_message="AddOrder: Client ID Not Found")))
    event = Event(order_id="801000000000002AAA", idem_key="k2", event_uuid="e2",
                  correlation_id=None, requested_at=None)
    asyncio.run(sink.send_outcome(outcome_record(event, "Provisioned", whmcs_order_id=7)))
    rec = RawRecord(topic="t.requests", partition=3, offset=41, key=b"k", value=b"\x01x",
                    headers=[])
    asyncio.run(sink.send_dead_letter(DeadLetter(rec, "cannot decode request: bad",
                                                 "SerdeError", "UNDECODABLE")))
    lines = [(r.levelname, r.getMessage(), getattr(r, "order_id", None),
              getattr(r, "partition", None), getattr(r, "offset", None)) for r in caplog.records]
    assert lines == [
        ("WARNING", "outcome Failed WHMCS_ERROR: AddOrder: Client ID Not Found",
         "801000000000001AAA", None, None),
        ("WARNING", "event dead-lettered (UNDECODABLE): cannot decode request: bad", None, 3,
         41)], lines
