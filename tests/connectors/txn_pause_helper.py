"""The connector's transactional writer in a process of its own, stopped at a known point.

``python -m tests.connectors.txn_pause_helper MODE`` (Kafka settings from the environment,
``CONNECTOR_TRANSACTION_TIMEOUT_S`` for the timeout) writes events ``1..9`` to the requests
topic the way the connector does — each batch in one transaction with the position record
covering it — and talks to the test on stdin/stdout (one JSON object a line):

* ``in-txn``: batch 1–3 committed; batch 4–6 produced and flushed (in the log, uncommitted),
  then ``{"state": "paused_in_txn"}`` and wait for a line on stdin before committing. The
  test SIGSTOPs the process there, lets the broker abort the transaction, SIGCONTs it.
* ``mid-batch``: the same, but the pause falls between two records of batch 4–6, and after
  it the next record is flushed (its delivery fails: the producer is fenced), so the last
  one's ``produce()`` raises librdkafka's bare ``_FATAL``.
* ``between``: batch 1–3 committed, ``{"state": "paused_between"}``, wait, then batch 4–6.

After the wait it reports ``{"error": class, "message", "age_s", "code": librdkafka's error
name, "first": the error before it, if any}`` for a failed write (or ``{"committed": "4-6"}``); on ``TransactionTimedOutError`` it recovers as the
connector does — ``reopen()`` (init_transactions), the position read again, the events after
it written again — and writes batch 7–9, then ``{"state": "done", "position": N}``. On a
plain fence it stops there (the connector would exit 3). Never used by the product.
"""

from __future__ import annotations

import contextlib
import json
import sys
from typing import Any

from confluent_kafka import KafkaError as CKafkaError
from confluent_kafka import KafkaException

from common.errors import ProducerFencedError, TransactionTimedOutError
from common.settings import ConnectorSettings, KafkaSettings
from connectors.offsets import EVENT, OffsetCodec, Position, load_position
from connectors.writer import Record, TransactionalWriter, transactional_id

CHANNEL = "/event/PauseTest__e"


def _code(exc: BaseException | None) -> str | None:
    err = exc.args[0] if isinstance(exc, KafkaException) and exc.args else None
    return err.name() if isinstance(err, CKafkaError) else None


def say(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


def batch(kafka: KafkaSettings, codec: OffsetCodec, events: range) -> list[Record]:
    records: list[Record] = [(kafka.requests, f"order-{i}".encode(), f"event-{i}".encode(), [])
                             for i in events]
    value, headers = codec.position_value(Position(bytes([events[-1]]), EVENT, 0, f"u{events[-1]}"))
    return [*records, (kafka.connector_offsets, codec.key, value, headers)]


class PausingWriter(TransactionalWriter):
    """Stops to wait for the test at ``pause`` ('commit' or 'produce:N'), once."""

    pause: str | None = None
    produced = 0

    def _wait(self, state: str) -> None:
        self._producer.flush(30)  # what was produced is in the log, uncommitted
        say(state=state)
        sys.stdin.readline()      # the test SIGSTOPs us here, and SIGCONTs us later
        say(state="resumed")

    def _produce(self, topic: str, key: bytes, value: bytes,
                 headers: list[tuple[str, bytes]]) -> None:
        self.produced += 1
        if self.pause == f"produce:{self.produced}":
            self._wait("paused_in_txn")
            super()._produce(topic, key, value, headers)
            # Delivering it fails: the producer is fenced from here on. flush() raises that
            # fatal error itself; what matters here is the next produce() of the batch.
            with contextlib.suppress(KafkaException):
                self._producer.flush(30)
            self.pause = "after"
            return
        super()._produce(topic, key, value, headers)

    def _commit(self) -> None:
        if self.pause == "commit":
            self.pause = None
            self._wait("paused_in_txn")
        super()._commit()


def main(mode: str) -> int:
    kafka = KafkaSettings.load()
    timeout_s = ConnectorSettings.load().transaction_timeout_s
    codec = OffsetCodec("pause-test", CHANNEL)
    writer = PausingWriter(kafka, transactional_id(kafka, "pause-test", CHANNEL),
                           transaction_timeout_s=timeout_s)
    writer.start()
    writer.write(batch(kafka, codec, range(1, 4)))
    if mode == "between":
        writer._wait("paused_between")
    else:
        writer.pause, writer.produced = ("commit" if mode == "in-txn" else "produce:2"), 0
    try:
        writer.write(batch(kafka, codec, range(4, 7)))
        say(committed="4-6")
    except ProducerFencedError as exc:
        cause = exc.__cause__        # librdkafka's error, and for produce()'s bare _FATAL
        first = cause.__context__ if cause is not None else None  # the error before it
        say(error=type(exc).__name__, message=str(exc), age_s=getattr(exc, "age_s", None),
            code=_code(cause), first=_code(first))
        if not isinstance(exc, TransactionTimedOutError):
            return 3
        writer.pause = None
        writer.reopen()
        position = load_position(kafka.bootstrap_servers, kafka.connector_offsets, codec)
        after = position.replay_id[0] if position else 0
        writer.write(batch(kafka, codec, range(after + 1, 7)))
    writer.write(batch(kafka, codec, range(7, 10)))
    position = load_position(kafka.bootstrap_servers, kafka.connector_offsets, codec)
    say(state="done", position=position.replay_id[0] if position else None)
    writer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
