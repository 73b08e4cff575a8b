"""A write the broker refuses the worker's principal (an ACL) is final: one line naming the
operation and principal, the worker stops (exit 64: streams.__main__) — where the outcome
and dead-letter sends were retried forever, the lanes behind them blocked. The secured
broker's end-to-end check: tests/e2e/test_secure.py."""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from types import SimpleNamespace

import pytest
from aiokafka import errors as aiokafka_errors

from common.avro import AvroSerde
from common.connection import KafkaConnection, Refusal, aiokafka_refusal
from common.settings import KafkaSettings, WorkerSettings
from streams.app import Worker
from streams.decide import Event, outcome_record
from streams.emitter import KafkaEmitter
from streams.handler import DeadLetter, RawRecord
from streams.state import DurabilityError

CONN = KafkaConnection("127.0.0.1:9093", security_protocol="SASL_SSL",
                       sasl_mechanism="SCRAM-SHA-512", sasl_username="sfprov-worker")
OUTCOMES, DEAD_LETTERS = "t.provisioning.outcomes", "t.provisioning.dead-letters"


def refused(topic: str = OUTCOMES) -> Exception:
    return aiokafka_errors.TopicAuthorizationFailedError(topic)


class Writer:
    """The record writer: each send's result taken from ``results`` (an exception raised by
    ``send_soon``, set on the future, or None: acknowledged)."""

    def __init__(self, *results: tuple[str, BaseException] | None) -> None:
        self.results = list(results)
        self.sent: list[tuple[str, bytes | None]] = []

    def send_soon(self, topic, partition, key, value, headers=None):
        self.sent.append((topic, key))
        result = self.results.pop(0) if self.results else None
        if result is not None and result[0] == "raise":
            raise result[1]
        future = asyncio.get_running_loop().create_future()
        if result is None:
            future.set_result(None)
        else:
            future.set_exception(result[1])
        return future


def emitter(writer: Writer) -> tuple[KafkaEmitter, list[tuple[str, Refusal]]]:
    made = object.__new__(KafkaEmitter)  # no faust app: only what the sends use
    made.writer = writer  # type: ignore[assignment]
    made.outcomes, made.dead_letters = OUTCOMES, DEAD_LETTERS
    made.serde = AvroSerde("provisioning_outcome")
    made.headers = dict(made.serde.headers())
    made.outcome_headers = lambda _o: {}
    made.unacked, made.clock = {}, time.time
    calls: list[tuple[str, Refusal]] = []
    made.on_refused = lambda what, refusal: calls.append((what, refusal))
    return made, calls


def outcome():
    event = Event(order_id="801000000000001AAA", idem_key="k", event_uuid="e",
                  correlation_id=None, requested_at=None)
    return outcome_record(event, "Failed", error_code="WHMCS_ERROR")


async def parked(coro, wait: float = 1.0) -> bool:
    """True when ``coro`` is still waiting after ``wait`` seconds (then cancelled)."""
    task = asyncio.ensure_future(coro)
    done, _ = await asyncio.wait([task], timeout=wait)
    if done:
        task.result()
        return False
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    return True


@pytest.mark.parametrize("delivered", [
    ("future", refused()),  # the broker's produce answer, on the record's future
    ("raise", refused()),  # raised where the record is handed over
    ("future", copy.copy(refused())),  # the writer's copy for each record of a batch
    # the writer's drain cut short by the topic's metadata being refused (no cause kept)
    ("future", DurabilityError(f"record not sent: {refused()!r}")),
])
def test_a_refused_outcome_is_reported_once_and_never_retried(delivered, caplog):
    sink, calls = emitter(Writer(delivered))
    with caplog.at_level(logging.WARNING):
        assert asyncio.run(parked(sink.send_outcome(outcome())))
    assert len(sink.writer.sent) == 1  # not tried again
    assert [(what, str(r)) for what, r in calls] == [
        (f"write outcomes to {OUTCOMES}", "Topic authorization failed (TOPIC_AUTHORIZATION_FAILED)")]
    assert "retrying" not in caplog.text


def test_a_refused_dead_letter_is_reported_once_and_never_retried():
    sink, calls = emitter(Writer(("future", refused(DEAD_LETTERS))))
    letter = DeadLetter(RawRecord(b"k", b"\x00", "t.requests", 0, 7), "bad", "SerdeError")
    assert asyncio.run(parked(sink.send_dead_letter(letter)))
    assert len(sink.writer.sent) == 1
    assert [what for what, _r in calls] == [f"write dead letters to {DEAD_LETTERS}"]


def test_other_send_failures_are_still_retried(monkeypatch):
    monkeypatch.setattr("common.backoff.Backoff.next_delay", lambda self: 0.0)
    sink, calls = emitter(Writer(("future", aiokafka_errors.KafkaTimeoutError()),
                                 ("future", aiokafka_errors.NotEnoughReplicasError()), None))
    asyncio.run(asyncio.wait_for(sink.send_outcome(outcome()), timeout=5))
    assert len(sink.writer.sent) == 3 and calls == []


@pytest.mark.parametrize(("error", "refusal"), [
    (aiokafka_errors.TopicAuthorizationFailedError("t"), Refusal(29, "t")),
    (aiokafka_errors.GroupAuthorizationFailedError("g"), Refusal(30, "g")),
    (aiokafka_errors.ClusterAuthorizationFailedError(), Refusal(31)),
    (aiokafka_errors.TransactionalIdAuthorizationFailed(), Refusal(53)),
    (aiokafka_errors.KafkaTimeoutError(), None),
    (aiokafka_errors.NotEnoughReplicasError(), None),
    (OSError(29, "Illegal seek"), None),  # an errno, but not aiokafka's
    (RuntimeError("something else"), None),
])
def test_aiokafkas_authorization_errors_are_refusals(error, refusal):
    assert aiokafka_refusal(error) == refusal
    try:  # and when wrapped, as a table's flush wraps its changelog writes' failure
        raise DurabilityError("changelog write not acknowledged") from error
    except DurabilityError as wrapped:
        assert aiokafka_refusal(wrapped) == refusal


def bare_worker() -> tuple[Worker, list[str], list[BaseException]]:
    made = object.__new__(Worker)  # no faust app: only what refuse and _crash use
    stops: list[str] = []
    crashes: list[BaseException] = []

    async def crash(exc: BaseException) -> None:
        crashes.append(exc)
    made.connection, made.refused = CONN, None
    made.kafka, made.settings = KafkaSettings.load({}, topic_prefix="t."), WorkerSettings.load({})
    made.stop = lambda: stops.append("stop")
    made.app = SimpleNamespace(crash=crash)  # type: ignore[assignment]
    return made, stops, crashes


def test_the_worker_says_a_refusal_once_and_stops(caplog):
    worker, stops, _crashes = bare_worker()
    with caplog.at_level(logging.ERROR, logger="streams.app"):
        worker.refuse(f"write outcomes to {OUTCOMES}", Refusal(29, OUTCOMES))
        worker.refuse(f"write dead letters to {DEAD_LETTERS}", Refusal(29, DEAD_LETTERS))
    lines = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert lines == [worker.refused] and stops == ["stop"]
    assert lines[0].startswith(f"the broker refused User:sfprov-worker to write outcomes to "
                               f"{OUTCOMES}: Topic authorization failed")
    assert "(see `sfprov acls`); not retrying; stopping the worker" in lines[0]


def test_a_refused_changelog_write_crashes_the_worker_with_the_refusal_line(caplog):
    worker, stops, crashes = bare_worker()
    changelog = "t.sfprov-worker-idem-changelog"
    try:
        raise DurabilityError("table idem: changelog write not acknowledged") \
            from refused(changelog)
    except DurabilityError as exc:
        error = exc

    async def go() -> None:
        worker._crash(error)
        await asyncio.sleep(0)
    with caplog.at_level(logging.INFO, logger="streams.app"):
        asyncio.run(go())
    assert crashes == [error] and stops == []  # stopped without committing, as before
    assert worker.refused is not None
    assert f"refused User:sfprov-worker to write to {changelog}: Topic authorization" \
        in worker.refused
    assert [r.levelname for r in caplog.records] == ["ERROR"]
    assert "not durable" not in caplog.text


def test_a_changelog_write_that_was_not_refused_crashes_as_before(caplog):
    worker, _stops, crashes = bare_worker()

    async def go() -> None:
        worker._crash(DurabilityError("changelog write not acknowledged within 60s"))
        await asyncio.sleep(0)
    with caplog.at_level(logging.INFO, logger="streams.app"):
        asyncio.run(go())
    assert len(crashes) == 1 and worker.refused is None
    assert "table changelog not durable" in caplog.text
