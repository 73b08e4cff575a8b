"""The benchmarks measure what they say, without a pipeline: a reaped child's CPU counts for
its parent (bench.cpu), make bench's labels name the phase sizes it ran (bench.pipeline),
bench.stages clears its WHMCS faults before the backlog, and bench.soak approves the next
chunk before the previous one is entirely written back."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import bench.cpu as bench_cpu
import bench.pipeline as bench_pipeline
from tests.foundation.test_soak import SoakPipeline, SoakSf, fake_soak

# -- 1. bench.cpu: reaped children ---------------------------------------------------------


def test_cpu_seconds_counts_a_reaped_child() -> None:
    """The worker starts a child Python process at every start-up (the group-access check):
    its CPU, added to the parent's cutime/cstime once reaped, was never read."""
    burn = ("import time\nt = time.process_time()\n"
            "while time.process_time() - t < 0.4:\n    pass\n")
    before = bench_cpu.cpu_seconds(os.getpid())
    subprocess.run([sys.executable, "-c", burn], check=True)
    after = bench_cpu.cpu_seconds(os.getpid())
    assert before is not None and after is not None
    assert after - before >= 0.25, (before, after)


# -- 2. bench.pipeline: the labels name the phase sizes that ran ---------------------------


def pipeline_giving(p: Any) -> type:
    """A stand-in for bench.harness.Pipeline: made with any arguments, ``with`` gives ``p``."""

    class Fake:
        def __init__(self, *a: Any, **k: Any) -> None:
            pass

        def __enter__(self) -> Any:
            return p

        def __exit__(self, *exc: object) -> None:
            pass

    return Fake


def _result(**extra: Any) -> dict[str, Any]:
    r: dict[str, Any] = {
        "orders_per_s": 800.0, "latency_ms_p50": 140.0, "latency_ms_p95": 160.0,
        "latency_ms_p99": 170.0, "backlog_orders_per_s": 1300.0,
        "backlog_orders_per_s_with_startup": 1200.0, "backlog_worker_startup_s": 3.0,
        "backlog_worker_startup_cpu_s": 1.2, "sf_api_calls_per_order": 0.02,
        "whmcs_calls_per_order": 2.0, "cpu_ms_per_order": {"worker": 0.5},
        "pipeline_cpu_ms_per_order": 0.6, "pipeline_to_whmcs_sandbox_cpu": 2.0,
        "whmcs_sandbox_pairs_per_s": 2700.0, "whmcs_sandbox_cpu_ms_per_pair_alone": 0.3,
        "whmcs_client_cpu_ms_per_pair": 0.1, "worker_cpu_ms_beyond_whmcs_client": 0.4,
        "whmcs_bound_ratio": 0.5, "whmcs_capacity_ratio": 0.4, "rss_mb_max": 150.0,
        "rss_mb": {"worker": 150.0}, "commit_checks": 1, "commit_check_ms_mean": 1.0,
        "commit_holds": 0, "side_by_side": {}, "burst": {"orders": 1000}}
    r.update(extra)
    return r


def test_print_table_names_the_steady_rate_and_the_burst_size(
        capsys: pytest.CaptureFixture[str]) -> None:
    bench_pipeline.print_table(_result(steady_rate=100.0, burst={"orders": 300}))
    out = capsys.readouterr().out
    assert "at 100 orders/s" in out, out
    assert "at 50 orders/s" not in out, out
    assert "(300 burst)" in out and "1,000 burst" not in out, out


def test_make_bench_records_the_steady_rate_and_the_burst_size(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """bench.json holds the sizes the labels are made of (--steady-rate, --burst)."""
    burst = {"orders": 300, "provisioned": 300, "seconds": 1.0, "sf_api_calls": 6,
             "whmcs_calls": 600, "sf_calls_by_kind": {}}
    monkeypatch.setattr(bench_pipeline, "Pipeline", pipeline_giving(SimpleNamespace()))
    monkeypatch.setattr(bench_pipeline, "phase_burst", lambda p, n: {**burst, "orders": n})
    monkeypatch.setattr(bench_pipeline, "phase_steady", lambda p, rate, s: {
        "orders": int(rate * s), "rate": rate, "points": [], "p50": 1.0, "p95": 2.0,
        "p99": 3.0, "mean": 1.5})
    monkeypatch.setattr(bench_pipeline, "phase_backlog", lambda p, n: {
        "orders": n, "seconds": 1.0, "startup_s": 0.1, "orders_per_s": 1000.0,
        "orders_per_s_with_startup": 900.0, "samples": [], "worker_startup_cpu_s": 1.0,
        "cpu_ms_per_order": {"worker": 0.5, "whmcs_sandbox": 0.3},
        "rss_mb_before_restart": {}})
    monkeypatch.setattr(bench_pipeline, "peak_rss_mb", lambda p, earlier=None: {"worker": 1.0})
    monkeypatch.setattr(bench_pipeline, "worker_metrics", lambda p: {})
    monkeypatch.setattr(bench_pipeline, "restart_settled_worker", lambda p: 1.0)
    monkeypatch.setattr(bench_pipeline, "whmcs_pairs_per_s", lambda p, n: {
        "pairs_per_s": 2000.0, "sandbox_cpu_ms_per_pair": 0.3, "client_cpu_ms_per_pair": 0.1})
    monkeypatch.setattr(bench_pipeline, "plot", lambda *a: None)
    assert bench_pipeline.main(["--burst", "300", "--sustained", "10", "--steady-rate", "100",
                                "--steady-seconds", "1", "--backlog", "10", "--compare", "0",
                                "--out", str(tmp_path), "--keep", str(tmp_path / "k")]) == 0
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert saved["steady_rate"] == 100.0
    assert saved["burst_orders"] == 300
    out = capsys.readouterr().out
    assert "at 100 orders/s" in out and "(300 burst)" in out, out


# -- 3. bench.stages: the WHMCS faults do not reach the backlog -----------------------------


def test_stages_clears_the_whmcs_faults_before_the_backlog(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """--whmcs-latency-ms 150 --backlog 10: the backlog's CPU figures are measured against
    a WHMCS at zero added latency, as make bench's are; --burst keeps the faults (its help
    says so: what the pipeline sustains at 150 ms is measured with it)."""
    from bench import stages

    events: list[str] = []
    faults: dict[str, Any] = {}

    class Whmcs:
        def set_fault_seed(self, seed: int) -> None:
            events.append(f"seed {seed}")

        def set_faults(self, action: str = "*", **spec: Any) -> None:
            faults[action] = spec
            events.append(f"set {action}")

        def clear_faults(self, action: str | None = None) -> None:
            faults.clear()
            events.append("clear")

    ids = (f"801{i:015d}" for i in itertools.count())

    class Sf:
        def approve(self, n: int) -> list[str]:
            events.append(f"approve {n} with faults {sorted(faults)}")
            return [next(ids) for _ in range(n)]

        def counters(self) -> dict[str, Any]:
            return {"calls": {}}

    p = SimpleNamespace(
        sf=Sf(), whmcs=Whmcs(),
        wait_settled=lambda ids, timeout, poll: {
            oid: {"Activation_Status__c": "Provisioned"} for oid in ids})

    def phase_backlog(pp: Any, n: int, on_track: Any = None) -> dict[str, Any]:
        events.append(f"backlog {n} with faults {sorted(faults)}")
        return {"seconds": 1.0, "orders_per_s": 10.0, "cpu_ms_per_order": {"worker": 0.5},
                "rss_mb_before_restart": {}}

    monkeypatch.setattr(stages, "Pipeline", pipeline_giving(p))
    monkeypatch.setattr(stages, "settle_span_s", lambda pp, ids, what: (1.0, len(ids)))
    monkeypatch.setattr(bench_pipeline, "phase_backlog", phase_backlog)
    monkeypatch.setattr(bench_pipeline, "peak_rss_mb", lambda pp, earlier=None: {})
    assert stages.main(["--warmup", "0", "--seconds", "0", "--whmcs-latency-ms", "150",
                        "--burst", "5", "--backlog", "10", "--keep", str(tmp_path)]) == 0
    assert events == ["seed 1", "set *", "set AddOrder",
                      "approve 5 with faults ['*', 'AddOrder']",  # --burst: faults on
                      "clear", "backlog 10 with faults []"], events
    out = capsys.readouterr().out
    assert "WHMCS faults cleared" in out, out


# -- 4. bench.soak: the next chunk goes in before the previous one is entirely written back


def test_soak_approves_the_next_chunk_once_most_of_the_previous_is_written_back(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Chunks of 10: the next is approved once 8 of the previous are written back (not all
    10: the pipeline idled on the last few); never more than two chunks in flight; at the
    end every Order is waited for."""
    clock = [0.0]
    approved: list[list[str]] = []
    settled: set[str] = set()
    at_approve: list[tuple[int, int]] = []  # (unsettled of the previous chunk, of older)

    def settle_some(k: int) -> None:
        # the oldest unsettled Orders are written back, k per read of the sandbox
        for oid in [o for c in approved for o in c if o not in settled][:k]:
            settled.add(oid)

    class Sf(SoakSf):
        def approve(self, n: int) -> list[str]:
            assert len(approved) < 20, "still approving after 20 chunks"
            if approved:
                prev = approved[-1]
                older = [o for c in approved[:-1] for o in c]
                at_approve.append((sum(o not in settled for o in prev),
                                   sum(o not in settled for o in older)))
            ids = super().approve(n)
            approved.append(ids)
            return ids

    class P(SoakPipeline):
        sf_class = Sf

        def wait_settled(self, ids: list[str], timeout: float,
                         poll: float) -> dict[str, dict[str, str]]:
            if timeout > 0:  # a wait for all of them: they get there
                settled.update(ids)
            else:
                settle_some(3)
            return {oid: {"Activation_Status__c": "Provisioned" if oid in settled
                          else "Activating"} for oid in ids}

    soak_module = fake_soak(monkeypatch, P, clock)
    monkeypatch.setattr(soak_module, "plot", lambda *a, **k: None)
    soak_module.main(["--orders", "30", "--chunk", "10", "--after", "0",
                      "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "soak.json").read_text())
    assert len(approved) == 3 and all(len(c) == 10 for c in approved)
    assert len(at_approve) == 2
    for prev_left, older_left in at_approve:
        assert 1 <= prev_left <= 2, at_approve  # before the previous chunk is complete
        assert older_left == 0, at_approve  # at most two chunks in flight
    assert saved["orders"] == 30
    assert saved["invariants"]["missing"] == 0 and saved["invariants"]["approved"] == 30
    assert settled == {o for c in approved for o in c}


def test_a_stuck_order_still_ends_the_soak_when_the_next_chunk_went_in_at_80_percent(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """One Order of the first chunk never settles: the second chunk goes in all the same
    (9 of 10 written back), the wait for the first chunk's rest times out, and the soak
    reports that Order missing — the second chunk's 10 are counted written back."""
    stuck: set[str] = set()
    clock = [0.0]

    class Sf(SoakSf):
        def approve(self, n: int) -> list[str]:
            ids = super().approve(n)
            if ids and not stuck:
                stuck.add(ids[0])
            return ids

    class P(SoakPipeline):
        sf_class = Sf

        def wait_settled(self, ids: list[str], timeout: float,
                         poll: float) -> dict[str, dict[str, str]]:
            clock[0] += timeout
            return {oid: {"Activation_Status__c": "Activating" if oid in stuck
                          else "Provisioned"} for oid in ids}

    soak_module = fake_soak(monkeypatch, P, clock)
    result = soak_module.soak(Path("unused"), orders=20, chunk=10, every_s=10, next_at=0.8)
    assert result["invariants"]["approved"] == 20
    assert result["invariants"]["missing"] == 1
    assert result["invariants"]["missing_orders"] == sorted(stuck)
    assert result["orders"] == 19
    assert result["next_at"] == 0.8


@pytest.mark.parametrize("value", ["0", "1.5", "-0.2", "nan"])
def test_soak_refuses_a_next_at_that_is_not_a_share_of_a_chunk(value, tmp_path, monkeypatch,
                                                              capsys):
    """0 would approve every chunk at once (no back-pressure), over 1 never the next one."""
    import bench.soak as soak_module

    monkeypatch.setattr(soak_module, "soak", lambda *a, **k: pytest.fail("the soak ran"))
    with pytest.raises(SystemExit) as exited:
        soak_module.main(["--next-at", value, "--out", str(tmp_path)])
    assert exited.value.code == 2
    assert "--next-at: a share of a chunk, above 0 and at most 1" in capsys.readouterr().err


def test_freeze_at_start_anchors_on_the_probe_answering_not_on_readiness(tmp_path):
    """Since /readyz says ``starting`` until the worker's first rebalance is over, waiting for
    /healthz 200 put bench.freeze_at_start's broker freeze after the join it exists to hit
    (a regression review). Its anchor is the probe server answering at all: 503 counts."""
    import http.server
    import threading

    from bench.harness import Pipeline

    class Starting(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            self.send_response(503)
            self.end_headers()
            self.wfile.write(b'{"ready": false, "reasons": ["starting: ..."]}')

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Starting)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        p = object.__new__(Pipeline)
        p.ports = {"worker": server.server_address[1]}  # type: ignore[attr-defined]
        p.procs = {"worker": child}  # type: ignore[attr-defined]
        p.dir = tmp_path  # type: ignore[attr-defined]
        started = time.monotonic()
        p.wait_listening("worker", timeout=10)
        assert time.monotonic() - started < 5
        with pytest.raises(RuntimeError, match="not healthy"):
            p.wait_healthy("worker", timeout=1)  # what the bench waited for: never, here
        source = Path(__file__).resolve().parents[2] / "bench" / "freeze_at_start.py"
        assert 'p.wait_listening("worker")' in source.read_text()
    finally:
        child.kill()
        child.wait()
        server.shutdown()


def test_stages_backlog_peak_rss_includes_the_worker_before_its_restart(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The backlog restarts the worker (its VmHWM starts again): the peak printed left out
    the warm-up, steady and burst phases before it, as make bench does not."""
    import bench.pipeline as bench_pipeline
    from bench import stages

    monkeypatch.setattr(bench_pipeline, "phase_backlog", lambda pp, n, on_track=None: {
        "seconds": 1.0, "orders_per_s": 10.0, "cpu_ms_per_order": {"worker": 0.5},
        "rss_mb_before_restart": {"worker": 400.0}})
    stages.backlog(SimpleNamespace(procs={}), 10, None)  # type: ignore[arg-type]
    assert "'worker': 400.0" in capsys.readouterr().out
