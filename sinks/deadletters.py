"""Dead letters of the sink: the original outcome record (key and bytes, untouched) with
the reason in the shared ``dlq.*`` headers (:mod:`common.deadletter`).

Two kinds: an undecodable record (``error_class`` SerdeError/KeyError...), and an outcome
Salesforce refused per record (``error_class`` SalesforceRecordError, ``error_code`` the
first Salesforce ``statusCode``, plus ``dlq.sf_errors`` — JSON list of ``{sobject, id,
statusCode, message, fields}`` — and ``dlq.sf_fields``).

Contract with the commit: :meth:`DeadLetters.settle` must return True (every dead letter
on the broker) before the offsets they stand for are committed. A crash in between
produces the dead letter again on redelivery: the topic is at-least-once.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from confluent_kafka import Producer

from common.avro import header_text
from common.connection import KafkaConnection, is_refusal, refusal_message
from common.deadletter import dead_letter_headers
from common.errors import KafkaAccessError, KafkaError
from common.log import redact
from common.settings import KafkaSettings
from sinks import metrics as m
from sinks.batch import Tracked

log = logging.getLogger(__name__)


class DeadLetters:
    def __init__(self, kafka: KafkaSettings, connection: KafkaConnection | None = None) -> None:
        self.kafka = kafka
        self.connection = connection or KafkaConnection.from_settings(kafka)
        self.producer = Producer(self.connection.librdkafka(**{
            "enable.idempotence": True, "acks": "all", "linger.ms": 5}))
        self.failure: str | None = None
        self.refused: str | None = None  # the broker's ACLs refused the write
        self.sent = 0

    def record_errors(self, tracked: Tracked) -> None:
        """Dead-letter an outcome with the Salesforce errors it collected."""
        detail = [{"sobject": e.key.sobject, "id": e.key.record_id, "statusCode": e.code,
                   "message": redact(e.message), "fields": list(e.fields)}
                  for e in tracked.errors]
        reason = "; ".join(f"{e.key}: {e.code}: {e.message}" for e in tracked.errors)
        self.send(tracked, reason=f"Salesforce refused the write-back: {reason}",
                  error_class="SalesforceRecordError", error_code=tracked.errors[0].code,
                  sf_errors=json.dumps(detail),
                  sf_fields=",".join(f for e in tracked.errors for f in e.fields))

    def send(self, tracked: Tracked, *, reason: str, error_class: str, error_code: str = "",
             **context: Any) -> None:
        outcome = tracked.outcome or {}
        headers = dead_letter_headers(
            stage="sink", reason=reason, error_class=error_class, error_code=error_code,
            source_topic=self.kafka.outcomes, source_partition=tracked.partition,
            source_offset=tracked.offset, order_id=outcome.get("order_id"),
            idem_key=outcome.get("idem_key"), correlation_id=outcome.get("correlation_id"),
            # a copy `sfprov dlq requeue` sent (its sfprov.requeued_from header): the dead
            # letter it came from
            requeued_from=header_text(tracked.headers, "sfprov.requeued_from"),
            **context)
        self.producer.produce(self.kafka.dead_letters, key=tracked.key, value=tracked.value,
                              headers=list(headers), on_delivery=self._delivered)
        self.producer.poll(0)
        self.sent += 1
        m.DEAD_LETTERS.labels(error_code or error_class).inc()
        log.warning("dead-lettered outcome: %s", redact(reason)[:500],
                    extra={"order_id": outcome.get("order_id"), "partition": tracked.partition,
                           "offset": tracked.offset, "error_code": error_code or error_class})

    def _delivered(self, err: Any, _msg: Any) -> None:
        if err is not None:
            self.failure = str(err)
            if is_refusal(err):
                self.refused = refusal_message(
                    self.connection, f"write dead letters to {self.kafka.dead_letters}", err)

    def settle(self, timeout: float = 30.0) -> bool:
        """True when every dead letter is on the broker; raises when one was lost."""
        if len(self.producer) and self.producer.flush(timeout) > 0:
            log.warning("dead letters not yet delivered; commit postponed")
            return False
        if self.refused:
            raise KafkaAccessError(f"{self.refused}; exiting without committing past it")
        if self.failure:
            raise KafkaError(f"dead letter could not be delivered: {self.failure}; "
                             "exiting without committing past it")
        return True

    def close(self) -> None:
        self.producer.flush(10)
