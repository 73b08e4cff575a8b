"""A commit that keeps failing is not retried once a stop is asked (stop-bounds review).

Each ``commit_transaction`` attempt may take the writer's call timeout (30 s), and the loop
made five: a SIGTERM while Kafka was slow kept the connector 150 s and more, far past the
supervisor's grace (SIGKILL). Now the attempt under way ends the stop's wait: the
transaction is left open — settled by the next start's ``init_transactions``, its events
fetched again from the committed position."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from confluent_kafka import KafkaError as CKafkaError
from confluent_kafka import KafkaException

from common.kafka import Stopped, stop_waits
from common.settings import KafkaSettings
from connectors.writer import TransactionalWriter


class SlowProducer:
    def __init__(self) -> None:
        self.commits = self.aborts = 0

    def begin_transaction(self) -> None:
        pass

    def produce(self, *_a: object, **_kw: object) -> None:
        pass

    def commit_transaction(self, timeout: float) -> None:
        self.commits += 1
        time.sleep(timeout)  # the broker does not answer within the attempt's timeout
        raise KafkaException(CKafkaError(CKafkaError._TIMED_OUT,
                                         "Timed out: retry call to resume", retriable=True))

    def abort_transaction(self, timeout: float) -> None:
        self.aborts += 1

    def flush(self, _timeout: float) -> int:
        return 0


@pytest.fixture
def stopping() -> Iterator[None]:
    stop_waits()  # SIGTERM came (common.process.Startup._on_signal)
    yield
    stop_waits(False)


def writer() -> tuple[TransactionalWriter, SlowProducer]:
    w = TransactionalWriter(KafkaSettings.load({}), "t|x", timeout_s=0.05)
    producer = SlowProducer()
    w._producer = producer  # type: ignore[assignment]
    return w, producer


def test_a_failing_commit_is_not_retried_once_stopping(stopping: None) -> None:
    w, producer = writer()
    with pytest.raises(Stopped):
        w.write([("requests", b"k", b"v", [])])
    assert producer.commits == 1 and producer.aborts == 0  # left to init_transactions


def test_without_a_stop_it_is_retried_as_before() -> None:
    w, producer = writer()
    with pytest.raises(Exception, match="still failing after 5 attempts"):
        w.write([("requests", b"k", b"v", [])])
    assert producer.commits == 5
