"""The worker's periodic sweep (``Worker._sweep``): a table change it could not make durable
stops the worker, as it does on an event's path (streams.app); any other failure is logged
and looked at again at the next sweep."""

from __future__ import annotations

import asyncio
import gc
import logging
import weakref

import pytest

from common.settings import CommonSettings, KafkaSettings, WhmcsSettings, WorkerSettings
from streams.state import DurabilityError

WHMCS = {"WHMCS_API_URL": "http://127.0.0.1:9/includes/api.php",
         "WHMCS_API_IDENTIFIER": "id", "WHMCS_API_SECRET": "secret"}


async def _nothing() -> None:
    return None


@pytest.mark.broker  # the Worker's own clients connect as it is built
@pytest.mark.parametrize(("where", "kind", "stops"), [
    ("sweep", DurabilityError, True), ("flush", DurabilityError, True),
    ("sweep", RuntimeError, False), ("flush", RuntimeError, False)])
def test_a_sweep_whose_table_change_is_not_durable_stops_the_worker(
        tmp_path, kafka_bootstrap, where, kind, stops, monkeypatch):
    from streams.app import Worker

    # the failure's log line keeps its traceback, whose frames keep the worker: not
    # captured, so the worker and its Kafka clients go with the test
    quiet = logging.getLogger("streams.app")
    monkeypatch.setattr(quiet, "propagate", False)
    monkeypatch.setattr(quiet, "handlers", [logging.NullHandler()])
    error = kind("changelog write not acknowledged")
    worker = Worker(kafka=KafkaSettings.load({}, bootstrap_servers=kafka_bootstrap,
                                             topic_prefix="sweep."),
                    worker=WorkerSettings.load({}), whmcs=WhmcsSettings.load(WHMCS),
                    sf_client=None,  # type: ignore[arg-type]
                    common=CommonSettings.load({}, state_dir=tmp_path))
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
