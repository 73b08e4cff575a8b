"""The agent waiting for the schema registry is not a stall.

A chunk whose decode needs a writer's schema waits in ``retry_forever`` while the registry
is unreachable: no event reaches the lanes (``lanes.in_flight`` stays 0), so without a sign
of life the stall watchdog saw records waiting on owned partitions, re-sought at half of
``WORKER_STALL_TIMEOUT_S`` and exited 75 at the whole — and the restarted worker, its schema
cache empty, did the same for as long as the registry was away, rebalancing the group each
time. The README promises the worker retries the decode until the registry answers."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

import common.backoff
from common.avro import SerdeError
from streams.app import Worker
from streams.watchdog import Progress, StallWatchdog
from tests.streams.test_worker_revoke import _Intake, _message, _worker

TIMEOUT_S, LOOK_S = 120.0, 10.0


def test_a_decode_waiting_for_the_schema_registry_never_makes_the_watchdog_exit(monkeypatch):
    real_backoff = common.backoff.Backoff
    monkeypatch.setattr(common.backoff, "Backoff",
                        lambda *_a, **_kw: real_backoff(0.001, 0.001, jitter=False))
    clock = [1000.0]
    looks: list[str | None] = []

    async def go() -> tuple[int, Worker]:
        worker = _worker(7)
        worker.progress = Progress(lambda: clock[0])
        worker.progress.busy = lambda: worker.lanes.in_flight > 0  # as Worker.__init__
        worker.serde = SimpleNamespace(offline=lambda value, headers: False)
        dog = StallWatchdog(lag=lambda: [(0, 100, 140)], owned=lambda: {0},
                            progress=worker.progress, timeout_s=TIMEOUT_S,
                            interval_s=LOOK_S, reseek=lambda: None,
                            on_stall=lambda reason: None)
        attempts: list[int] = []

        def unreachable(records: list[Any]) -> list[Any]:
            attempts.append(len(records))
            raise SerdeError("schema registry unreachable: ConnectError", retryable=True)
        worker._decode = unreachable  # type: ignore[method-assign]
        messages = [_message(worker, offset, 7) for offset in range(3)]
        agent = asyncio.ensure_future(
            Worker._agent(worker, _Intake([SimpleNamespace(message=m) for m in messages])))
        seen = 0
        for _ in range(2000):  # one look of the watchdog per retry: 10 s each, 300 s in all
            if len(looks) >= 30:
                break
            await asyncio.sleep(0.005)
            if len(attempts) > seen:
                seen = len(attempts)
                clock[0] += LOOK_S
                looks.append(dog.check_once())
        agent.cancel()
        return len(attempts), worker
    tried, worker = asyncio.run(go())
    assert tried >= 30 and len(looks) >= 30
    assert "exit" not in looks and "reseek" not in looks, looks
    # /readyz says why nothing moves (Worker.details)
    assert worker.registry_unavailable_since is not None
    assert "schema registry unreachable" in (worker.registry_last_error or "")


@pytest.mark.parametrize("waited_s", [TIMEOUT_S + 10])
def test_without_a_retry_the_records_still_make_it_exit(waited_s):
    """The control: a worker taking nothing for the whole timeout while records wait still
    exits (the decode's retries are the only new sign of life)."""
    clock = [1000.0]
    progress = Progress(lambda: clock[0])
    exits: list[str] = []
    dog = StallWatchdog(lag=lambda: [(0, 100, 140)], owned=lambda: {0}, progress=progress,
                        timeout_s=TIMEOUT_S, interval_s=LOOK_S, reseek=lambda: None,
                        on_stall=exits.append)
    looks = []
    while clock[0] < 1000.0 + waited_s:
        clock[0] += LOOK_S
        looks.append(dog.check_once())
    assert "exit" in looks and exits


def test_a_registry_away_for_the_grace_makes_the_worker_not_ready_saying_why(tmp_path):
    """The decode's wait is progress for the watchdog, but no work is done meanwhile:
    ``/readyz`` says so once it lasted ``WORKER_READY_GRACE_S``, as for Salesforce."""
    import time

    from tests.foundation.test_ready_after_start import worker as built_worker

    built = built_worker(tmp_path)
    built.ops.start_up.done = True
    assert built.ops.ready()[0] is True
    built._registry_failed(SerdeError("schema registry at http://127.0.0.1:9 unreachable"))
    assert built.ops.ready()[0] is True  # within the grace: a retry, not a reason
    built.registry_unavailable_since = time.time() - built.settings.ready_grace_s - 1
    ok, details = built.ops.ready()
    assert ok is False
    assert any(r.startswith("schema_registry: waiting for the schema registry: SerdeError")
               for r in details["reasons"]), details["reasons"]


def test_the_registry_wait_is_cleared_once_the_decode_ends(monkeypatch):
    """Two failed decodes, then the chunk given up (revoked): the wait is over, and
    /readyz must not go on saying it waits for the registry."""
    real = common.backoff.Backoff
    monkeypatch.setattr(common.backoff, "Backoff", lambda *_a, **_kw: real(0.001, 0.001, jitter=False))
    fails = [2]

    async def go():
        worker = _worker(7)
        worker.serde = SimpleNamespace(offline=lambda value, headers: False)

        async def decode(records):
            if fails[0]:
                fails[0] -= 1
                raise SerdeError("schema registry unreachable", retryable=True)
            return None  # the chunk's generation revoked: given up
        worker._decode_unless_revoked = decode
        msgs = [_message(worker, 0, 7)]
        intake = _Intake([SimpleNamespace(message=m) for m in msgs])
        agent = asyncio.ensure_future(Worker._agent(worker, intake))
        await asyncio.wait_for(intake.asked_again.wait(), 5)
        agent.cancel()
        return worker
    w = asyncio.run(go())
    assert fails[0] == 0
    assert w.registry_unavailable_since is None and w.registry_last_error is None


def test_a_wedged_event_loop_makes_the_worker_not_ready(tmp_path):
    """/livez alone said so: /healthz — what compose's health check and make up read — said
    ready while the loop was blocked, and events in flight kept the stall watchdog quiet
    (monitoring review)."""
    from tests.foundation.test_ready_after_start import worker as built_worker

    built = built_worker(tmp_path)
    built.ops.start_up.done = True
    built.ops.heartbeat.beat()
    assert built.ops.ready()[0] is True
    built.ops.heartbeat.last_beat -= 600
    ok, details = built.ops.ready()
    assert ok is False
    assert any(r.startswith("loop: event loop silent for 6") for r in details["reasons"]), \
        details["reasons"]
    assert built.ops.live()[0] is False
