"""The connector, made to freeze inside one of its transactions — for the timeout tests.

``python -m tests.connectors.pausing_connector run ...`` is ``python -m connectors run ...``
except that the ``PAUSE_AT_BATCH``-th transaction that carries events is flushed (its records
are in the log, uncommitted) and then the process sends itself SIGSTOP right before
``commit_transaction``: every thread stops, as in a frozen VM or a long GC, at a known point
(a test cannot land an outside SIGSTOP inside a transaction that lasts milliseconds). The
test SIGCONTs it; from there on it is the real connector. It logs ``PAUSING in transaction``
first.

With ``FAIL_AT_BATCH`` instead, that transaction's producer *fails* as one did in a chaos run
with two of three broker nodes paused: its records are flushed (in the log, uncommitted),
``commit_transaction`` raises the abortable "message(s) timed out", and from then on that
producer answers every transactional call with librdkafka's fatal ``INVALID_TXN_STATE``
(the abort first). The real producer underneath keeps its transaction open, for a new
producer's ``init_transactions`` to abort. It logs ``FAILING in transaction`` first. Never
used by the product.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from typing import Any

from confluent_kafka import KafkaError as CKafkaError
from confluent_kafka import KafkaException

from common.settings import KafkaSettings
from connectors import writer as writer_module
from connectors.__main__ import main

log = logging.getLogger("pausing_connector")


def _arm_at(requests_topic: str, at_batch: int) -> dict[str, Any]:
    """Count the transactions that carry events; ``armed`` while the ``at_batch``-th is
    being written (its commit is the one to disturb)."""
    cls = writer_module.TransactionalWriter
    original_write = cls.write
    state: dict[str, Any] = {"batches": 0, "armed": False}

    def write(self: writer_module.TransactionalWriter, records: list[writer_module.Record]) -> None:
        if any(topic == requests_topic for topic, *_ in records):
            state["batches"] += 1
            state["armed"] = state["batches"] == at_batch
        original_write(self, records)

    cls.write = write  # type: ignore[method-assign]
    return state


def _install_pause(requests_topic: str, at_batch: int) -> None:
    cls = writer_module.TransactionalWriter
    original_commit = cls._commit
    state = _arm_at(requests_topic, at_batch)

    def commit(self: writer_module.TransactionalWriter) -> None:
        if state["armed"]:
            state["armed"] = False
            self._producer.flush(30)
            log.warning("PAUSING in transaction %d (SIGSTOP to self)", state["batches"])
            os.kill(os.getpid(), signal.SIGSTOP)
            log.warning("RESUMED in transaction %d", state["batches"])
        original_commit(self)

    cls._commit = commit  # type: ignore[method-assign]


class _FailedProducer:
    """A producer in librdkafka's fatal state (not fenced): every transactional call and
    every produce fails with ``INVALID_TXN_STATE``, as the chaos run's did."""

    def __init__(self, real: Any) -> None:
        self._real = real

    def _fail(self, *_args: Any, **_kwargs: Any) -> None:
        raise KafkaException(CKafkaError(
            CKafkaError.INVALID_TXN_STATE, "Failed to end transaction: Broker: Producer "
            "attempted a transactional operation in an invalid state", fatal=True))

    abort_transaction = begin_transaction = commit_transaction = produce = _fail
    init_transactions = send_offsets_to_transaction = _fail

    def __getattr__(self, name: str) -> Any:  # poll, flush, purge: the real producer's
        return getattr(self._real, name)


def _install_failure(requests_topic: str, at_batch: int) -> None:
    cls = writer_module.TransactionalWriter
    original_commit = cls._commit
    state = _arm_at(requests_topic, at_batch)

    def commit(self: writer_module.TransactionalWriter) -> None:
        if not state["armed"]:
            original_commit(self)
            return
        state["armed"] = False
        self._producer.flush(30)  # the batch is in the log, its transaction open
        log.warning("FAILING in transaction %d", state["batches"])
        self._producer = _FailedProducer(self._producer)
        raise KafkaException(CKafkaError(CKafkaError._MSG_TIMED_OUT,
                                         "3 message(s) timed out", txn_requires_abort=True))

    cls._commit = commit  # type: ignore[method-assign]


if __name__ == "__main__":
    requests = KafkaSettings.load().requests
    if os.environ.get("FAIL_AT_BATCH"):
        _install_failure(requests, int(os.environ["FAIL_AT_BATCH"]))
    else:
        _install_pause(requests, int(os.environ.get("PAUSE_AT_BATCH", "2")))
    sys.exit(main(sys.argv[1:] or ["run"]))
