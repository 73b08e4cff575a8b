"""The worker's periodic sweep (``Worker._sweep``): a table change it could not make durable
stops the worker, as it does on an event's path (streams.app); any other failure is logged
and looked at again at the next sweep."""

from __future__ import annotations

import asyncio
import gc
import logging
import weakref

import pytest
from confluent_kafka import KafkaError, KafkaException

from common.settings import CommonSettings, KafkaSettings, WhmcsSettings, WorkerSettings
from streams.state import DurabilityError

WHMCS = {"WHMCS_API_URL": "http://127.0.0.1:9/includes/api.php",
         "WHMCS_API_IDENTIFIER": "id", "WHMCS_API_SECRET": "secret"}


async def _nothing() -> None:
    return None


def _worker(tmp_path, kafka_bootstrap):
    from streams.app import Worker

    return Worker(kafka=KafkaSettings.load({}, bootstrap_servers=kafka_bootstrap,
                                           topic_prefix="sweep."),
                  worker=WorkerSettings.load({}), whmcs=WhmcsSettings.load(WHMCS),
                  sf_client=None,  # type: ignore[arg-type]
                  common=CommonSettings.load({}, state_dir=tmp_path))


@pytest.mark.broker  # the Worker's own clients connect as it is built
@pytest.mark.parametrize(("where", "kind", "stops"), [
    ("sweep", DurabilityError, True), ("flush", DurabilityError, True),
    ("sweep", RuntimeError, False), ("flush", RuntimeError, False)])
def test_a_sweep_whose_table_change_is_not_durable_stops_the_worker(
        tmp_path, kafka_bootstrap, where, kind, stops, monkeypatch):
    # the failure's log line keeps its traceback, whose frames keep the worker: not
    # captured, so the worker and its Kafka clients go with the test
    quiet = logging.getLogger("streams.app")
    monkeypatch.setattr(quiet, "propagate", False)
    monkeypatch.setattr(quiet, "handlers", [logging.NullHandler()])
    error = kind("changelog write not acknowledged")
    worker = _worker(tmp_path, kafka_bootstrap)
    crashed: list[BaseException] = []
    looked: list[int] = []

    async def fail() -> None:
        raise error

    async def check_idle(*_args) -> int:
        looked.append(1)
        return 0
    worker._crash = crashed.append  # type: ignore[method-assign]
    worker.sweeper.run_once = fail if where == "sweep" else _nothing  # type: ignore[method-assign]
    worker.durable = fail if where == "flush" else _nothing  # type: ignore[assignment]
    worker.repair.check_idle = check_idle  # type: ignore[method-assign]
    asyncio.run(worker._sweep())
    assert crashed == ([error] if stops else [])
    error.__traceback__ = None  # its frames hold the worker
    crashed.clear()
    gone = weakref.ref(worker)
    del worker, check_idle, fail
    gc.collect()  # its Kafka clients with it, not at the end of the session
    assert gone() is None
    # the late records' look follows a sweep that failed without stopping the worker, and
    # needs the tables' writes durable first
    assert looked == ([1] if where == "sweep" and not stops else [])


@pytest.mark.broker
@pytest.mark.parametrize(("error", "level", "traceback"), [
    (KafkaException(KafkaError(KafkaError._TIMED_OUT, "Failed to get watermark offsets")),
     logging.WARNING, False),
    (KafkaException(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED)), logging.ERROR, True),
    (RuntimeError("a bug"), logging.ERROR, True)])
def test_a_late_records_look_the_brokers_do_not_answer_is_a_warning_not_a_traceback(
        tmp_path, kafka_bootstrap, error, level, traceback, monkeypatch):
    """A broker failing over times the look's watermark read out (a chaos run): one line at
    WARNING, looked at again at the next sweep; anything else keeps its traceback."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)
    app_log = logging.getLogger("streams.app")
    monkeypatch.setattr(app_log, "propagate", False)
    monkeypatch.setattr(app_log, "handlers", [Keep()])
    monkeypatch.setattr(app_log, "level", logging.INFO)
    worker = _worker(tmp_path, kafka_bootstrap)

    async def check_idle(*_args) -> int:
        raise error
    worker._crash = lambda exc: pytest.fail(f"crashed on {exc!r}")  # type: ignore[method-assign]
    worker.sweeper.run_once = _nothing  # type: ignore[method-assign]
    worker.durable = _nothing  # type: ignore[assignment]
    worker.repair.check_idle = check_idle  # type: ignore[method-assign]
    asyncio.run(worker._sweep())
    looks = [r for r in records if "late changelog records" in r.getMessage()]
    assert [(r.levelno, r.exc_info is not None) for r in looks] == [(level, traceback)]
    error.__traceback__ = None
    records.clear()
    looks.clear()
    gone = weakref.ref(worker)
    del worker, check_idle
    gc.collect()
    assert gone() is None
