"""make bench's and make chaos's figures without a pipeline: the duplicates a run counts,
the backlog queued before the worker starts, a phase that does not finish, the quiet wait."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest

import bench.chaos_faults as chaos_faults
import bench.pipeline as bench_pipeline
from bench.harness import Pipeline


class _Clock:
    """time.monotonic and time.sleep for a module under test: a sleep moves the clock."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class _Whmcs:
    def __init__(self, counters: dict[str, Any]) -> None:
        self._counters = counters

    def counters(self) -> dict[str, Any]:
        return self._counters

    def active_orders_by_marker(self) -> dict[str, set[int]]:
        return {}

    def active_services_by_marker(self) -> dict[str, dict[int, set[int]]]:
        return {}

    def orders_for(self, oid: str) -> list[dict[str, Any]]:
        return []


def test_duplicates_count_only_this_runs_orders_under_either_id_form() -> None:
    """side_by_side runs compare() eight times on one WHMCS sandbox: a duplicate of an
    earlier column's Order must not be counted again in the later columns."""
    ours = "801000000000001AAA"  # one WHMCS order
    earlier = "801000000000002AAA"  # an earlier run's, duplicated
    twice = "801000000000003AAA"  # ours, once under its 15-character id and once under 18
    by_marker = {ours: 1, earlier: 2, twice: 1, twice[:15]: 1}
    p = object.__new__(Pipeline)
    p.whmcs = _Whmcs({"orders_by_marker": by_marker, "duplicates": {earlier: 2}})
    p.kills = []
    p.sf_orders = lambda ids: {oid: {"Activation_Status__c": "Failed"} for oid in ids}
    p.provisionable = lambda ids: []
    report = p.invariants([ours])
    assert report["duplicates"] == 0 and report["duplicate_orders"] == []
    report = p.invariants([ours, twice])
    assert report["duplicates"] == 1 and report["duplicate_orders"] == [twice]
    assert report["whmcs_orders"] == 3
    assert p.invariants([earlier])["duplicates"] == 1


def queued_consumer(queued: Callable[[], int]) -> type:
    """A stand-in for confluent's ``Consumer`` as ``phase_backlog`` uses it: one partition of
    the requests topic, whose end offset is ``queued()`` (the events the connector wrote)."""
    class Consumer:
        def __init__(self, config: dict[str, Any]) -> None:
            pass

        def list_topics(self, topic: str, timeout: float) -> Any:
            return SimpleNamespace(topics={topic: SimpleNamespace(partitions={0: None})})

        def get_watermark_offsets(self, tp: Any, timeout: float) -> tuple[int, int]:
            return 0, queued()

        def close(self) -> None:
            pass
    return Consumer


class _Started(Exception):
    pass


def _backlog_pipeline(monkeypatch: pytest.MonkeyPatch, n: int, *, already: int,
                      per_poll: int, outcomes: int | None = None,
                      stop_at_start: bool = False) -> dict[str, Any]:
    """phase_backlog against stubs: the requests topic holds ``already`` offsets from the
    earlier phases; once approved, the connector writes ``per_poll`` events a poll, with a
    transaction marker per 10 events. The worker writes ``outcomes`` (default n) outcomes."""
    state: dict[str, Any] = {"approved": False, "written": 0, "at_start": None,
                             "started": False}

    def queued() -> int:
        if state["approved"]:
            state["written"] = min(n, state["written"] + per_poll)
        return already + state["written"] + state["written"] // 10

    Consumer = queued_consumer(queued)

    class Counter:
        def __init__(self, p: Any) -> None:
            pass

        def count(self) -> int:
            return 1000 + (n if outcomes is None else outcomes) * state["started"]

        def close(self) -> None:
            pass

    class Meter:
        def __init__(self, pids: Any) -> None:
            pass

        def start(self) -> Meter:
            return self

        def track(self, name: str, pid: int) -> None:
            pass

        def stop(self) -> dict[str, float]:
            return {"worker": 1.0}

    class P:
        kafka = SimpleNamespace(requests="requests", outcomes="outcomes")
        procs = {"worker": SimpleNamespace(pid=1)}
        process_env: dict[str, dict[str, str]] = {}

        def client_config(self, **extra: Any) -> dict[str, Any]:
            return {}

        def stop(self, name: str) -> None:
            pass

        def start(self, name: str) -> None:
            state["at_start"], state["started"] = state["written"], True
            if stop_at_start:
                raise _Started

        def approve(self, k: int) -> list[str]:
            state["approved"] = True
            return [f"801{i:015d}" for i in range(k)]

        def wait_settled(self, ids: list[str], timeout: float, poll: float) -> dict[str, Any]:
            return {oid: {"Activation_Status__c": "Provisioned"} for oid in ids}

    p = P()
    p.sf = SimpleNamespace(approve=p.approve)  # type: ignore[attr-defined]
    monkeypatch.setattr(bench_pipeline, "time", _Clock())
    monkeypatch.setattr(bench_pipeline, "Consumer", Consumer)
    monkeypatch.setattr(bench_pipeline, "_OutcomeCounter", Counter)
    monkeypatch.setattr(bench_pipeline, "CpuMeter", Meter)
    monkeypatch.setattr(bench_pipeline, "cpu_pids", lambda p: {})
    state["p"] = p
    return state


def test_the_backlog_worker_starts_only_once_the_whole_backlog_is_queued(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The requests topic already holds more offsets than the backlog from the earlier
    phases, and transaction markers count among the offsets: neither may start the worker
    while the connector is still writing the backlog."""
    n = 50_000
    state = _backlog_pipeline(monkeypatch, n, already=10_500, per_poll=2_500,
                              stop_at_start=True)
    with pytest.raises(_Started):
        bench_pipeline.phase_backlog(state["p"], n)
    assert state["at_start"] == n


def test_a_backlog_that_does_not_drain_fails_the_phase(monkeypatch: pytest.MonkeyPatch) -> None:
    n = 50_000
    state = _backlog_pipeline(monkeypatch, n, already=0, per_poll=n, outcomes=n - 1000)
    with pytest.raises(RuntimeError, match=r"backlog: 49000 of 50000"):
        bench_pipeline.phase_backlog(state["p"], n)


def test_a_burst_whose_orders_do_not_all_settle_fails_the_phase(
        monkeypatch: pytest.MonkeyPatch) -> None:
    counters = {"calls": {}, "api_used": 0}

    def wait_settled(ids: list[str], timeout: float, poll: float) -> dict[str, Any]:
        return {oid: {"Activation_Status__c": "Activating" if i == 0 else "Provisioned"}
                for i, oid in enumerate(ids)}

    p = SimpleNamespace(
        sf=SimpleNamespace(counters=lambda: counters,
                           approve=lambda k: [f"801{i:015d}" for i in range(k)]),
        whmcs=SimpleNamespace(counters=lambda: counters), wait_settled=wait_settled)
    with pytest.raises(RuntimeError, match=r"burst: 999 of 1000"):
        bench_pipeline.phase_burst(p, 1000)  # type: ignore[arg-type]


def test_settle_is_not_settled_when_whmcs_never_goes_quiet(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chaos_faults, "time", _Clock())
    monkeypatch.setattr(chaos_faults, "_ends", lambda reader, topic: {0: 5})
    monkeypatch.setattr(chaos_faults, "Consumer", lambda config: SimpleNamespace(
        close=lambda: None))
    never_quiet = itertools.count()
    p = SimpleNamespace(procs={}, whmcs=SimpleNamespace(
        calls=lambda: {"AddOrder": next(never_quiet)}),
        wait_settled=lambda ids, timeout, poll: {
            oid: {"Activation_Status__c": "Provisioned"} for oid in ids},
        kafka=SimpleNamespace(outcomes="outcomes"), client_config=lambda **extra: {},
        env=lambda name: {"WORKER_SWEEP_INTERVAL_S": "10"})
    _restarts, settled = chaos_faults.settle(p, ["801A"], (), 0.0, timeout=30)  # type: ignore[arg-type]
    assert settled is False
    p.whmcs = SimpleNamespace(calls=lambda: {"AddOrder": 7})  # quiet: settled
    _restarts, settled = chaos_faults.settle(p, ["801A"], (), 0.0, timeout=30)  # type: ignore[arg-type]
    assert settled is True


def _stages_pipeline(statuses: dict[str, str]) -> Any:
    """bench.stages's view of a pipeline: approvals, the Orders' write-back, and the five
    timestamps (approved 12:00:00.000, requested .050, decided .250, outcome .300)."""
    import datetime as dt

    t = dt.datetime(2026, 12, 3, 12, 0, 0, tzinfo=dt.UTC)
    ids = list(statuses)
    approved: list[str] = []

    def approve(k: int) -> list[str]:
        got = ids[len(approved):len(approved) + k]
        approved.extend(got)
        return got

    def records(topic: str, _schema: str) -> list[Any]:
        if topic == "req":
            return [SimpleNamespace(key=k, value={"CreatedDate": t},
                                    timestamp_ms=t.timestamp() * 1000 + 50) for k in ids]
        return [SimpleNamespace(key=k, value={"completed_at": t + dt.timedelta(seconds=0.25)},
                                timestamp_ms=t.timestamp() * 1000 + 300) for k in ids]

    def fields(order_ids: list[str], wanted: str) -> dict[str, dict[str, Any]]:
        # the written-back Orders were modified at .400; an unsettled one last at .010
        # (the Flow setting it Activating): no write-back to time
        out = {}
        for oid in order_ids:
            row = {"LastModifiedDate": "2026-12-03T12:00:00.400+0000"
                   if statuses[oid] in ("Provisioned", "Failed")
                   else "2026-12-03T12:00:00.010+0000"}
            if "Activation_Status__c" in wanted:
                row["Activation_Status__c"] = statuses[oid]
            out[oid] = row
        return out

    return SimpleNamespace(
        sf=SimpleNamespace(approve=approve), kafka=SimpleNamespace(requests="req",
                                                                   outcomes="out"),
        records=records, sf_orders_fields=fields,
        wait_settled=lambda order_ids, timeout, poll: {
            oid: {"Activation_Status__c": statuses[oid]} for oid in order_ids})


def test_a_steady_phase_whose_orders_do_not_all_settle_fails_the_stages(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """bench.stages times each Order to its write-back: an Order its wait left unsettled has
    none (its LastModifiedDate is the approval's), so the phase fails rather than report
    negative or understated latencies."""
    from bench import stages

    monkeypatch.setattr(stages, "time", _Clock())
    p = _stages_pipeline({"801A": "Provisioned", "801B": "Activating"})
    with pytest.raises(bench_pipeline.PhaseIncomplete, match=r"steady: 1 of 2"):
        stages.steady(p, rate=2.0, seconds=1.5)
    p = _stages_pipeline({"801A": "Provisioned", "801B": "Provisioned"})
    assert stages.steady(p, rate=2.0, seconds=1.5) == ["801A", "801B"]
    # the bench seeds no Order meant to fail: a Failed one is a regression, not a latency
    p = _stages_pipeline({"801A": "Provisioned", "801B": "Failed"})
    with pytest.raises(bench_pipeline.PhaseIncomplete, match=r"steady: 1 of 2 Orders Failed"):
        stages.steady(p, rate=2.0, seconds=1.5)


def test_stages_time_only_orders_that_were_written_back() -> None:
    from bench import stages

    p = _stages_pipeline({"801A": "Provisioned", "801B": "Activating"})
    rows = stages.stamps(p, ["801A", "801B"])  # type: ignore[arg-type]
    assert list(rows) == ["801A"]
    assert rows["801A"]["written"] - rows["801A"]["outcome"] == 100


def test_the_progress_file_never_reads_as_0_once_a_count_was_written(tmp_path: Any) -> None:
    """bench.group_offsets's reader counts its reads into a file the parent reads while it
    is rewritten: a read must never meet it empty (0 reads before the faults, a negative
    count after them)."""
    import threading

    from bench import group_offsets

    progress = tmp_path / "progress"
    group_offsets._write_progress(progress, 1)
    stop = threading.Event()

    def writer() -> None:
        n = 1
        while not stop.is_set():
            n += 1
            group_offsets._write_progress(progress, n)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        seen = [group_offsets._reads(progress) for _ in range(2000)]
    finally:
        stop.set()
        thread.join()
    assert min(seen) >= 1, f"{seen.count(0)} of 2,000 reads returned 0"
    assert seen == sorted(seen)
    assert not list(tmp_path.glob("*.tmp"))  # no temporary file left behind
