"""An Order whose text Avro cannot hold (a lone half of a UTF-16 surrogate pair, as
Salesforce's JSON can carry an emoji cut in half) still gets its one outcome: the outcome
is stored and sent with U+FFFD in its place. Before, the stored outcome could never be
encoded: every attempt and every redelivery re-sent it and failed, the event ended as a
WORKER_ERROR dead letter, the Order stayed Activating, and reconciliation re-requested it
for ever."""

from __future__ import annotations

import asyncio
import copy
import json

import streams.handler as handler_module
from common.avro import AvroSerde, utf8_text
from tests.streams.factories import item, order, product, request_value
from tests.streams.flowkit import Kit, records

OID = "801B00000000077AAA"
HALF_EMOJI = json.loads('"Fibre 1G \\ud83d"')


class OneOrder:
    def __init__(self, body: dict) -> None:
        self.body = body

    def query(self, soql: str) -> list[dict]:
        return [copy.deepcopy(self.body)] if f"'{self.body['Id']}'" in soql else []


def test_utf8_text_replaces_a_lone_half_and_joins_a_split_pair():
    assert utf8_text("plain") == "plain"
    assert utf8_text("Fibre ✓") == "Fibre ✓"
    assert utf8_text(HALF_EMOJI) == "Fibre 1G \ufffd"
    assert utf8_text("\ud83d\ude00") == "\U0001f600"


def test_every_encoder_writes_a_lone_surrogate_as_the_replacement_character():
    serde = AvroSerde("provisioning_outcome")
    from streams.decide import Event, outcome_record
    record = outcome_record(Event(order_id=OID, idem_key=f"{OID}-1", event_uuid="u"), "Failed",
                            error_code="X", error_message="ok")
    record["error_message"] = HALF_EMOJI  # past outcome_record: the serde itself copes
    assert serde.decode(serde.encode(record))["error_message"] == "Fibre 1G \ufffd"


def test_an_order_with_half_an_emoji_in_its_product_name_gets_its_failed_outcome(monkeypatch):
    monkeypatch.setattr(handler_module, "Backoff", lambda **kw: type(
        "NoWait", (), {"next_delay": lambda self: 0.0})())
    serde = AvroSerde("provisioning_outcome")
    kit = Kit(salesforce=OneOrder(order(item(product(HALF_EMOJI, pid=None)), order_id=OID)),
              whmcs_client=object())
    plain = kit.emitter.send_outcome

    async def encoding_send(outcome: dict) -> None:
        serde.encode(outcome)  # as streams.emitter.KafkaEmitter does before its send
        await plain(outcome)
    kit.emitter.send_outcome = encoding_send  # type: ignore[method-assign]
    kit.handler.emitter = kit.emitter
    asyncio.run(kit.process(records([request_value(OID)])))
    assert kit.emitter.letters == []
    assert [(o["status"], o["error_code"]) for o in kit.emitter.sent] == \
        [("Failed", "MISSING_PRODUCT_MAPPING")]
    message = kit.emitter.sent[0]["error_message"]
    assert "Fibre 1G \ufffd" in message
    entry = kit.tables.durable_idem[OID][kit.emitter.sent[0]["idem_key"]]
    assert entry["outcome"] == kit.emitter.sent[0]  # stored as sent (the kit checks it too)


