"""Transactional writes to Kafka: events, dead letters and the position, all or nothing.

One confluent-kafka producer with a fixed ``transactional.id`` (derived from the topic
prefix, the connector name and the channel). ``start()`` calls ``init_transactions``, which
bumps the producer epoch: an older instance with the same id is **fenced** — its open
transaction is aborted and its next write fails with ``ProducerFencedError``. Two
connectors with one name therefore never both write.

Order of a batch (the commit-after-effect rule): produce every record of the batch, then
the position record, then ``commit_transaction``. Only after the commit returns does the
caller move its in-memory position and ask Salesforce for more. A failed commit is retried
when librdkafka says it is retriable, otherwise the transaction is aborted and the caller
resubscribes from the last committed position (the aborted records are invisible to
``read_committed`` readers).

Partitioner ``murmur2_random``: Java/aiokafka-compatible key hashing, so the Faust worker's
tables keyed by order id live in the same partition numbers as the requests. Do not change.
"""

from __future__ import annotations

import logging
from typing import Any

from confluent_kafka import KafkaError as CKafkaError
from confluent_kafka import KafkaException, Producer

from common.connection import is_refusal, kafka_config, refusal_message
from common.errors import KafkaAccessError, KafkaError, ProducerFencedError
from common.settings import KafkaSettings

log = logging.getLogger(__name__)

Record = tuple[str, bytes, bytes, list[tuple[str, bytes]]]  # topic, key, value, headers

_FENCED_CODES = {CKafkaError._FENCED, CKafkaError.PRODUCER_FENCED,
                 CKafkaError.INVALID_PRODUCER_EPOCH}


def transactional_id(kafka: KafkaSettings, connector: str, channel: str) -> str:
    return f"{kafka.topic_prefix}{connector}|{channel.strip('/').replace('/', '.')}"


def producer_config(kafka: KafkaSettings, txn_id: str) -> dict[str, Any]:
    return kafka_config(kafka, **{
        "transactional.id": txn_id,
        "enable.idempotence": True,
        "acks": "all",
        "partitioner": "murmur2_random",
        "linger.ms": 5,
        "compression.type": "lz4",
        "transaction.timeout.ms": 60_000,
        "message.timeout.ms": 55_000,
    })


def translate(exc: KafkaException, what: str, txn_id: str) -> KafkaError:
    err = exc.args[0] if exc.args else None
    if isinstance(err, CKafkaError):
        if err.code() in _FENCED_CODES:
            return ProducerFencedError(
                f"fenced: another connector instance with transactional.id {txn_id!r} "
                f"took over ({err.str()})")
        if is_refusal(err):
            return KafkaAccessError(refusal_message(
                "the connector's principal", f"{what} (transactional.id {txn_id!r})", err))
        retryable = not err.fatal() and (err.retriable() or err.txn_requires_abort())
        return KafkaError(f"{what}: {err.str()}", retryable=retryable)
    return KafkaError(f"{what}: {exc}", retryable=False)


class TransactionalWriter:
    def __init__(self, kafka: KafkaSettings, txn_id: str, *, timeout_s: float = 30.0,
                 extra_config: dict[str, Any] | None = None) -> None:
        self.txn_id = txn_id
        self.timeout_s = timeout_s
        self._producer = Producer({**producer_config(kafka, txn_id), **(extra_config or {})})
        self.transactions = 0

    def start(self) -> None:
        """init_transactions: fences any older instance with this transactional.id."""
        try:
            self._producer.init_transactions(self.timeout_s)
        except KafkaException as exc:
            raise translate(exc, "init_transactions", self.txn_id) from exc

    def write(self, records: list[Record]) -> None:
        """Write ``records`` in one transaction; raises KafkaError/ProducerFencedError."""
        p = self._producer
        try:
            p.begin_transaction()
            for topic, key, value, headers in records:
                self._produce(topic, key, value, headers)
            self._commit()
        except KafkaException as exc:
            err = translate(exc, "transaction", self.txn_id)
            if not isinstance(err, ProducerFencedError):
                self._abort()
            raise err from exc
        self.transactions += 1

    def _produce(self, topic: str, key: bytes, value: bytes,
                 headers: list[tuple[str, bytes]]) -> None:
        while True:
            try:
                self._producer.produce(topic, value=value, key=key,
                                       headers=headers)  # type: ignore[arg-type] # list invariance
                return
            except BufferError:
                self._producer.poll(0.05)

    def _commit(self) -> None:
        for _attempt in range(5):
            try:
                self._producer.commit_transaction(self.timeout_s)
                return
            except KafkaException as exc:
                err = exc.args[0] if exc.args else None
                if isinstance(err, CKafkaError) and err.retriable() and not err.fatal() \
                        and not err.txn_requires_abort():
                    log.warning("commit_transaction retriable error, retrying: %s", err.str())
                    continue
                raise
        raise KafkaException(CKafkaError(CKafkaError._TIMED_OUT, "commit_transaction retries "
                                         "exhausted"))

    def _abort(self) -> None:
        try:
            self._producer.abort_transaction(self.timeout_s)
        except KafkaException as exc:
            log.warning("abort_transaction failed: %s", exc)

    def close(self) -> None:
        self._producer.flush(5)
