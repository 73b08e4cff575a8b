"""How ``make bench`` and ``bench.stages`` measure, without a pipeline: the backlog worker's
sweep kept out of the figures, py-spy on the worker from its first outcome, the start-up
CPU read within a short poll of that outcome, and ``--burst``'s rate on the Salesforce
clock."""

from __future__ import annotations

import contextlib
import subprocess
from types import SimpleNamespace
from typing import Any

import pytest

import bench.harness as harness
import bench.pipeline as bench_pipeline
import bench.side_by_side as sbs
from common.settings import WorkerSettings
from tests.foundation.test_bench_harness import _Clock, queued_consumer
from tests.foundation.test_bench_side_by_side import _pipeline as _sf_clock_pipeline

# phase_backlog waits up to 900 s for the outcomes, then up to 600 s for the last
# write-backs: a sweep timer shorter than both can fire inside the phase
BACKLOG_TIMEOUTS_S = 900 + 600


def _backlog(monkeypatch: pytest.MonkeyPatch, n: int, *, first_outcome_s: float = 5.01,
             rate: float = 1000.0, events: list[str] | None = None) -> SimpleNamespace:
    """phase_backlog against stubs on a fake clock: the connector queues the n events at
    once; the worker (pid 100 before its restart, 200 after) writes its first outcome
    ``first_outcome_s`` after its start, then ``rate`` a second, and spends a whole core
    from its start (its CPU seconds are the seconds since). ``events``: what happened, in
    order (the counts that saw outcomes, the meter's track and stop)."""
    clock = _Clock()
    log = events if events is not None else []
    state = SimpleNamespace(approved=False, started_at=None, started_env=None, counts=0)

    def outcomes() -> int:
        if state.started_at is None:
            return 0
        since = clock.now - state.started_at
        if since < first_outcome_s:
            return 0
        return min(n, 1 + int((since - first_outcome_s) * rate))

    Consumer = queued_consumer(lambda: n if state.approved else 0)

    class Counter:
        def __init__(self, p: Any) -> None:
            pass

        def count(self) -> int:
            state.counts += 1
            done = outcomes()
            if done:
                log.append(f"count {done}")
            return 5000 + done

        def close(self) -> None:
            pass

    class Meter:
        def __init__(self, pids: Any) -> None:
            pass

        def start(self) -> Meter:
            return self

        def track(self, name: str, pid: int) -> float:
            log.append(f"track {name} {pid}")
            return clock.now - state.started_at

        def stop(self) -> dict[str, float]:
            log.append("meter stop")
            return {"worker": 1.0}

    class P:
        kafka = SimpleNamespace(requests="requests", outcomes="outcomes")

        def __init__(self) -> None:
            self.procs = {"worker": SimpleNamespace(pid=100)}
            self.process_env: dict[str, dict[str, str]] = {
                "worker": {"SFPROV_STATE_DIR": "/tmp/state-w"}}
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
            state.started_at = clock.now
            state.started_env = dict(self.process_env.get(name, {}))
            self.procs[name] = SimpleNamespace(pid=200)

        def approve(self, k: int) -> list[str]:
            state.approved = True
            self.approved = [f"801{i:015d}" for i in range(k)]
            return self.approved

        def wait_settled(self, ids: list[str], timeout: float, poll: float) -> dict[str, Any]:
            return {oid: {"Activation_Status__c": "Provisioned"} for oid in ids}

    monkeypatch.setattr(bench_pipeline, "time", clock)
    monkeypatch.setattr(bench_pipeline, "Consumer", Consumer)
    monkeypatch.setattr(bench_pipeline, "_OutcomeCounter", Counter)
    monkeypatch.setattr(bench_pipeline, "CpuMeter", Meter)
    monkeypatch.setattr(bench_pipeline, "cpu_pids", lambda p: {})
    monkeypatch.setattr(bench_pipeline, "peak_rss_mb", lambda p, earlier=None: {})
    state.p, state.clock, state.events = P(), clock, log
    return state


# -- 1. the backlog worker's sweep ---------------------------------------------------------


def test_the_backlog_worker_runs_no_sweep_within_the_phase(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker restarted for the backlog starts its sweep timer with it: its first sweep
    (a full scan of every intent and dedupe entry of the bench) came 60 s after its start,
    inside the phase's CPU window on a slow run and not on a fast one. It is started with a
    sweep interval past the phase's timeouts (a value the worker's settings accept), its
    own other settings kept, and the override does not outlive that start."""
    state = _backlog(monkeypatch, 1000)
    bench_pipeline.phase_backlog(state.p, 1000)
    env = state.started_env
    assert env is not None and env.get("SFPROV_STATE_DIR") == "/tmp/state-w"
    interval = float(env.get("WORKER_SWEEP_INTERVAL_S", 60))
    assert interval > BACKLOG_TIMEOUTS_S
    assert WorkerSettings.load(env).sweep_interval_s == interval  # validates
    # a later restart (the side-by-side phase's kill) runs the worker as production does
    assert state.p.process_env == {"worker": {"SFPROV_STATE_DIR": "/tmp/state-w"}}


def test_a_backlog_phase_that_fails_leaves_no_sweep_override(
        monkeypatch: pytest.MonkeyPatch) -> None:
    state = _backlog(monkeypatch, 1000)
    state.p.process_env = {}

    def start(name: str) -> None:
        raise RuntimeError("worker exited")

    state.p.start = start
    with pytest.raises(RuntimeError, match="worker exited"):
        bench_pipeline.phase_backlog(state.p, 1000)
    assert state.p.process_env.get("worker", {}) == {}


def _main_events(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> list[str]:
    """bench.pipeline.main with every phase a stub: the order the phases and the worker's
    stops, starts and waits came in."""
    events: list[str] = []

    class P:
        def __init__(self) -> None:
            self.procs: dict[str, Any] = {"worker": SimpleNamespace(pid=1)}
            self.process_env: dict[str, dict[str, str]] = {}

        def __enter__(self) -> P:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

        def stop(self, name: str) -> None:
            events.append(f"stop {name}")

        def start(self, name: str) -> None:
            events.append(f"start {name}")

        def wait_healthy(self, name: str, timeout: float = 90.0) -> None:
            events.append(f"healthy {name}")

    def burst(p: Any, n: int) -> dict[str, Any]:
        events.append("burst")
        return {"orders": n, "provisioned": n, "seconds": 1.0, "sf_api_calls": 1,
                "whmcs_calls": 2 * n, "sf_calls_by_kind": {}}

    def steady(p: Any, rate: float, seconds: float) -> dict[str, Any]:
        events.append("steady")
        return {"orders": 10, "rate": rate, "points": [], "p50": 1.0, "p95": 1.0, "p99": 1.0,
                "mean": 1.0}

    def backlog(p: Any, n: int) -> dict[str, Any]:
        events.append("backlog")
        return {"orders": n, "seconds": 2.0, "startup_s": 1.0, "orders_per_s": n,
                "orders_per_s_with_startup": n / 2, "samples": [],
                "cpu_ms_per_order": {"worker": 0.5}, "worker_startup_cpu_s": 1.0,
                "rss_mb_before_restart": {}}

    def pairs(p: Any, n: int) -> dict[str, Any]:
        events.append("pairs")
        return {"pairs": n, "seconds": 1.0, "pairs_per_s": 1000.0,
                "sandbox_cpu_ms_per_pair": 0.3, "client_cpu_ms_per_pair": 0.1}

    def compare(p: Any, **k: Any) -> dict[str, Any]:
        events.append("compare")
        return {}

    def settled(p: Any, **k: Any) -> float:
        events.append("settled worker")
        return 1.0

    monkeypatch.setattr(bench_pipeline, "Pipeline", lambda *a, **k: P())
    monkeypatch.setattr(bench_pipeline, "phase_burst", burst)
    monkeypatch.setattr(bench_pipeline, "phase_steady", steady)
    monkeypatch.setattr(bench_pipeline, "phase_backlog", backlog)
    monkeypatch.setattr(bench_pipeline, "whmcs_pairs_per_s", pairs)
    monkeypatch.setattr(bench_pipeline, "compare", compare)
    monkeypatch.setattr(bench_pipeline, "peak_rss_mb", lambda p, earlier=None: {"worker": 1.0})
    monkeypatch.setattr(bench_pipeline, "worker_metrics",
                        lambda p: events.append("worker metrics") or {})
    monkeypatch.setattr(bench_pipeline, "plot", lambda *a: None)
    monkeypatch.setattr(sbs, "_worker_assigned", lambda p, timeout=120.0: None)
    monkeypatch.setattr(sbs, "_settled_worker", settled)
    assert bench_pipeline.main(["--keep", str(tmp_path / "run"), "--out",
                                str(tmp_path / "out")]) == 0
    return events


def test_make_bench_waits_out_a_fresh_workers_first_sweep_before_phase_5(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """After the backlog (its worker never sweeps: the override above) the worker is
    restarted as production runs it and its first sweep — a full scan of the bench's
    tables, 60 s after its start — is waited out before the pairs phase and the side by
    side, after the backlog worker's metrics are read; not left to land in either."""
    events = _main_events(monkeypatch, tmp_path)
    between = events[events.index("backlog"):events.index("pairs")]
    assert [e for e in between if e in ("worker metrics", "stop worker", "start worker",
                                        "settled worker")] == \
        ["worker metrics", "stop worker", "start worker", "settled worker"], events


def test_compare_waits_out_the_workers_sweep_before_its_first_run(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """compare() itself: its first run (the pipeline's clean run at 0 ms) starts only once
    the worker's first sweep is behind it — run_pipeline waited for it only after a kill."""
    events: list[str] = []
    monkeypatch.setattr(sbs, "_worker_assigned",
                        lambda p, timeout=120.0: events.append("assigned"))
    monkeypatch.setattr(sbs, "_settled_worker",
                        lambda p, **k: events.append("settled worker") or 1.0)
    monkeypatch.setattr(sbs, "run_pipeline", lambda p, n, latency, settle=True: events.append(
        f"pipeline {latency}") or {})
    monkeypatch.setattr(sbs, "run_baseline", lambda p, n, latency: events.append(
        f"baseline {latency}") or {})
    p = SimpleNamespace(stop=lambda name: None, start=lambda name: None)
    sbs.compare(p)  # type: ignore[arg-type]
    assert "settled worker" in events
    assert events.index("settled worker") < events.index("pipeline 0"), events


# -- 2. py-spy from the first outcome ------------------------------------------------------


def test_the_profile_hook_fires_once_with_the_new_worker_at_its_first_outcome(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The hook that attaches py-spy gets the restarted worker's pid once, at the count that
    first sees an outcome (where its CPU starts counting) — never during its start-up —
    and what it returns is called once, when the CPU meter stops."""
    state = _backlog(monkeypatch, 1000)
    calls: list[int] = []

    def on_track(pid: int) -> Any:
        calls.append(pid)
        state.events.append(f"hook {pid}")
        return lambda: state.events.append("hook stop")

    bench_pipeline.phase_backlog(state.p, 1000, on_track=on_track)
    assert calls == [200]
    events = state.events
    first_count = next(i for i, e in enumerate(events) if e.startswith("count"))
    assert events.index("hook 200") > first_count  # not before an outcome was seen
    assert events[first_count + 1:first_count + 3] in (
        ["track worker 200", "hook 200"], ["hook 200", "track worker 200"])
    assert events.count("hook stop") == 1
    assert events.index("hook stop") == events.index("meter stop") + 1


def test_the_profile_stops_when_the_phase_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """A backlog that does not drain in 900 s: py-spy is stopped all the same."""
    state = _backlog(monkeypatch, 1000, rate=1.0)
    stops: list[int] = []
    with pytest.raises(RuntimeError, match="of 1000 outcomes"):
        bench_pipeline.phase_backlog(state.p, 1000, on_track=lambda pid: lambda: stops.append(pid))
    assert stops == [200]


def test_stages_profile_attaches_py_spy_to_the_worker_at_the_hook_not_at_its_start(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Any, capsys: pytest.CaptureFixture[str]
        ) -> None:
    """bench.stages --profile: py-spy records the pid the backlog phase hands its hook, from
    then; it is stopped (SIGINT, which writes the profile) when the phase's meter stops."""
    from bench import stages

    spies: list[Any] = []

    class Spy:
        def __init__(self, argv: list[str], **kw: Any) -> None:
            self.argv, self.signals = argv, []
            spies.append(self)

        def send_signal(self, sig: int) -> None:
            self.signals.append(int(sig))

        def wait(self, timeout: float | None = None) -> int:
            return 0

    seen: list[str] = []

    def phase_backlog(p: Any, n: int, on_track: Any = None) -> dict[str, Any]:
        seen.append(f"spies at the start: {len(spies)}")
        p.start("worker")
        seen.append(f"spies after the worker's start: {len(spies)}")
        stop = on_track(4242) if on_track is not None else None
        seen.append(f"spies after the hook: {len(spies)}")
        if stop is not None:
            stop()
        seen.append(f"signals after the meter: {[s.signals for s in spies]}")
        return {"seconds": 1.0, "orders_per_s": 1000.0, "cpu_ms_per_order": {"worker": 0.5},
                "rss_mb_before_restart": {}}

    monkeypatch.setattr(subprocess, "Popen", Spy)
    monkeypatch.setattr(bench_pipeline, "phase_backlog", phase_backlog)
    monkeypatch.setattr(bench_pipeline, "peak_rss_mb", lambda p, earlier=None: {})
    p = SimpleNamespace(start=lambda name, *a: SimpleNamespace(pid=100))
    stages.backlog(p, 1000, tmp_path / "profile.txt")  # type: ignore[arg-type]
    assert seen == ["spies at the start: 0", "spies after the worker's start: 0",
                    "spies after the hook: 1", "signals after the meter: [[2]]"]
    argv = spies[0].argv
    assert argv[argv.index("-p") + 1] == "4242"


# -- 4. the start-up CPU: read within a short poll of the first outcome --------------------


def test_the_start_up_cpu_is_read_within_a_short_poll_of_the_first_outcome(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker writes its first outcome 5.01 s after its start, busy a whole core: its
    start-up CPU is ~5.01 s. Read at the next 0.25-s poll it was 5.25 s — up to a quarter
    of a second of Orders (~0.2 s of CPU at 1,300 Orders/s) counted as start-up."""
    state = _backlog(monkeypatch, 1000)
    result = bench_pipeline.phase_backlog(state.p, 1000)
    assert 5.01 <= result["worker_startup_cpu_s"] <= 5.01 + 0.021
    assert 5.01 <= result["startup_s"] <= 5.01 + 0.021
    # after the first outcome it polls as before: not 50 outcome counts a second
    assert state.counts < 5.01 / 0.02 + 2 + 1 / 0.25 + 10


# -- 3. bench.stages --burst: approval of the first to write-back of the last -------------


def test_the_stages_burst_rate_runs_from_the_first_approval_to_the_last_write_back(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Any, capsys: pytest.CaptureFixture[str]
        ) -> None:
    """300 Orders written back 0.7 s after their approval: 428.6 Orders/s, on the
    Salesforce clock (harness.settle_span_s). Timed from approve()'s return to the 0.5-s
    poll that first saw them all, it read 300.0."""
    from bench import stages

    p = _sf_clock_pipeline(monkeypatch, after=0.7)
    monkeypatch.setattr(stages, "time", harness.time)  # the fake clock _pipeline set
    monkeypatch.setattr(stages, "Pipeline", lambda *a, **k: contextlib.nullcontext(p))
    assert stages.main(["--warmup", "0", "--seconds", "0", "--burst", "300",
                        "--keep", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "burst of 300: 0.7 s, 428.6 orders/s" in out, out
