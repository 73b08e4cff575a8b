"""make bench's per-process figures without a pipeline: peak RSS across the worker's restart
and of a process without a reading, the restarted worker's CPU per Order without its
start-up, and bench_worker's exit status when outcomes are missing."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import bench.cpu as bench_cpu
import bench.pipeline as bench_pipeline
from tests.foundation.test_bench_harness import _Clock, queued_consumer


def _backlog(monkeypatch: pytest.MonkeyPatch, n: int, *, per_poll: int,
             worker_cpu: Any = None) -> SimpleNamespace:
    """phase_backlog against stubs: the connector queues the n events at once; the worker
    (pid 100 before its restart, 200 after) writes ``per_poll`` outcomes per count."""
    state = SimpleNamespace(approved=False, started=False, outcomes=0)

    Consumer = queued_consumer(lambda: n if state.approved else 0)

    class Counter:
        def __init__(self, p: Any) -> None:
            pass

        def count(self) -> int:
            if state.started:
                state.outcomes = min(n, state.outcomes + per_poll)
            return 5000 + state.outcomes

        def close(self) -> None:
            pass

    class P:
        kafka = SimpleNamespace(requests="requests", outcomes="outcomes")

        def __init__(self) -> None:
            self.procs = {"worker": SimpleNamespace(pid=100)}
            self.process_env: dict[str, dict[str, str]] = {}
            self.sf = SimpleNamespace(approve=self.approve)
            # one WHMCS order per approved Order (the backlog checks each has exactly one)
            self.whmcs = SimpleNamespace(counters=lambda: {
                "orders_by_marker": dict.fromkeys(self.approved, 1)})
            self.approved: list[str] = []

        def client_config(self, **extra: Any) -> dict[str, Any]:
            return {}

        def stop(self, name: str) -> None:
            self.procs.pop(name)

        def start(self, name: str) -> None:
            state.started = True
            self.procs[name] = SimpleNamespace(pid=200)

        def approve(self, k: int) -> list[str]:
            state.approved = True
            self.approved = [f"801{i:015d}" for i in range(k)]
            return self.approved

        def wait_settled(self, ids: list[str], timeout: float, poll: float) -> dict[str, Any]:
            return {oid: {"Activation_Status__c": "Provisioned"} for oid in ids}

    monkeypatch.setattr(bench_pipeline, "time", _Clock())
    monkeypatch.setattr(bench_pipeline, "Consumer", Consumer)
    monkeypatch.setattr(bench_pipeline, "_OutcomeCounter", Counter)
    monkeypatch.setattr(bench_pipeline, "cpu_pids", lambda p: {})
    if worker_cpu is not None:
        monkeypatch.setattr(bench_cpu, "cpu_seconds", lambda pid: worker_cpu(pid, state))
    state.p = P()
    return state


def test_the_restarted_workers_cpu_per_order_leaves_out_its_start_up(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker restarted for the backlog spends 3 s of CPU starting (interpreter,
    imports, RocksDB, group join, table recovery), then 1 ms per Order: its CPU per Order is
    1 ms, and the start-up is reported apart — not 4 ms for 1,000 Orders."""
    def worker_cpu(pid: int, state: Any) -> float | None:
        return 3.0 + 0.001 * state.outcomes if pid == 200 and state.started else None

    n = 1000
    state = _backlog(monkeypatch, n, per_poll=100, worker_cpu=worker_cpu)
    monkeypatch.setattr(bench_pipeline, "peak_rss_mb", lambda p, earlier=None: {})
    result = bench_pipeline.phase_backlog(state.p, n)
    assert result["cpu_ms_per_order"]["worker"] == pytest.approx(1.0)
    assert result["worker_startup_cpu_s"] == pytest.approx(3.1)  # up to its first outcomes


def test_cpu_meter_counts_a_tracked_process_from_the_track() -> None:
    """CpuMeter.track: the restarted process's CPU counts from then, not from its start."""
    readings = {7: 2.0}
    meter = bench_cpu.CpuMeter({})
    original = bench_cpu.cpu_seconds
    try:
        bench_cpu.cpu_seconds = lambda pid: readings.get(pid)
        meter.start()
        assert meter.track("worker", 7) == 2.0
        readings[7] = 2.5
        assert meter.stop() == {"worker": pytest.approx(0.5)}
    finally:
        bench_cpu.cpu_seconds = original


def test_peak_rss_keeps_the_workers_peak_from_before_its_restart(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker that ran phases 1–3 (VmHWM 180 MB) is stopped for the backlog and a new
    one (90 MB) drains it: the worker's peak is 180, not the restarted process's 90."""
    hwm = {100: 180.0, 200: 90.0}
    monkeypatch.setattr(bench_pipeline, "_vm_hwm_mb", lambda pid: hwm.get(pid), raising=False)
    state = _backlog(monkeypatch, 1000, per_poll=500)
    monkeypatch.setattr(bench_pipeline, "CpuMeter", lambda pids: SimpleNamespace(
        start=lambda: SimpleNamespace(track=lambda name, pid: None, stop=lambda: {})))
    result = bench_pipeline.phase_backlog(state.p, 1000)
    rss = bench_pipeline.peak_rss_mb(state.p, result["rss_mb_before_restart"])
    assert rss["worker"] == 180.0


def test_a_process_without_a_peak_rss_reading_is_reported_as_such() -> None:
    """A gone process (reaped) and a zombie (no VmHWM in its status) are in the figures as
    missing, not left out of the max as if they had used nothing."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        for _ in range(500):  # until it has exited, unreaped
            if _state(zombie.pid) == "Z":
                break
            time.sleep(0.01)
        live = SimpleNamespace(pid=os.getpid())
        p = SimpleNamespace(procs={"connector": live, "worker": gone, "sink": zombie})
        rss = bench_pipeline.peak_rss_mb(p)  # type: ignore[arg-type]
        assert rss["connector"] and rss["connector"] > 0
        assert "worker" in rss and rss["worker"] is None
        assert "sink" in rss and rss["sink"] is None
    finally:
        zombie.wait()


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return ""


# -- bench/bench_worker.py ---------------------------------------------------------------


def test_bench_worker_fails_when_outcomes_are_missing(monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path: Path) -> None:
    """10 events, 6 outcomes when the wait ended (a timeout, or the worker died): no
    throughput over the 6, and exit status 1."""
    import bench.bench_worker as bw

    at = dt.datetime(2026, 12, 3, 12, 0, tzinfo=dt.UTC)

    class Reader:
        def __init__(self, bootstrap: str, topic: str) -> None:
            self.records: list[Any] = []

        def poll_until(self, done: Any, timeout: float, alive: Any) -> list[Any]:
            self.records = [object()] * 6
            return self.records

    @contextmanager
    def worker_process(env: dict[str, str], log: Path) -> Any:
        yield SimpleNamespace(poll=lambda: None)

    class Response:
        def read(self) -> bytes:
            return b'{"guard_queries": 3}'

    monkeypatch.setattr(bw, "ensure_topics", lambda kafka: None)
    monkeypatch.setattr(bw, "Reader", Reader)
    monkeypatch.setattr(bw, "worker_process", worker_process)
    monkeypatch.setattr(bw, "wait_for_log", lambda *a: True)
    monkeypatch.setattr(bw, "produce", lambda *a: None)
    monkeypatch.setattr(bw, "outcomes", lambda records: [
        {"status": "Provisioned", "completed_at": at, "requested_at": at} for _ in records])
    monkeypatch.setattr(bw, "time", SimpleNamespace(sleep=lambda s: None, time=lambda: 0.0))
    monkeypatch.setattr(bw.urllib.request, "urlopen", lambda *a, **k: Response())
    sf = SimpleNamespace(
        seed=lambda **k: {"orders": [{"order_id": f"801{i:015d}"} for i in range(10)]},
        approve=lambda ids: ids, env=lambda: {}, counters=lambda: {"calls": {}})
    wh = SimpleNamespace(env=lambda: {}, reset_counters=lambda: None, duplicates=lambda: [],
                         counters=lambda: {"calls": {"AddOrder": 6, "AcceptOrder": 6}})
    args = SimpleNamespace(orders=10, max_in_flight=10, partitions=1, whmcs_latency_ms=0.0,
                           parallelism=4)
    assert bw.run(args, tmp_path, "127.0.0.1:1", sf, wh) == 1  # type: ignore[arg-type]
