"""``make bench``: the whole pipeline measured in one run on this machine.

Sandboxes at zero added latency, every process as in production (``bench.harness``), own
broker. Phases, in order:

1. **burst** — ``--burst`` Orders (1,000) approved at once: Salesforce API calls and WHMCS
   calls per order (from the sandboxes' counters; API calls = REST requests counted against
   the daily limit).
2. **sustained** — ``--sustained`` Orders approved at once: orders/s from the first approval
   to the last Salesforce write-back (the first event's CreatedDate to the last Order's
   LastModifiedDate, both on the Salesforce clock — not when the wait's poll saw them).
3. **steady** — ``--steady-rate`` Orders/s for ``--steady-seconds``: latency from approval
   (the event's CreatedDate) to the write-back (the Order's LastModifiedDate), both on the
   Salesforce clock; p50/p95/p99 and a plot over time. ``bench.json`` records both sizes
   (``steady_rate``, ``burst_orders``) and the table's labels name them.
4. **backlog** — worker stopped, ``--backlog`` events queued in the requests topic, worker
   started: outcomes/s until the backlog is drained.
   The CPU (user + system, from ``/proc``) every process spends from the approvals to the
   last write-back, per Order: connector, worker, sink, both sandboxes, the broker. The
   restarted worker's counts from its first outcome (polled every 20 ms until then), over
   the Orders finished after it: its start-up CPU (interpreter, imports, RocksDB, group
   join, table recovery) is reported apart. That worker runs with
   ``WORKER_SWEEP_INTERVAL_S`` past the phase's timeouts: its first sweep (a full scan of
   the bench's tables, one interval after its start) would otherwise fall inside the
   phase on a slow run and not on a fast one. After the phase the worker is restarted as
   production runs it and its first sweep is waited out before phase 5.
5. **the WHMCS sandbox alone** — ``AddOrder`` + ``AcceptOrder`` pairs/s driven straight into
   it, each ``AddOrder`` what the worker sends for a seeded Order (the seed's order shapes
   through the pipeline's mapping, in turn: services, add-ons, config options, a marker):
   the bound for a pipeline that must make two WHMCS calls per Order; the backlog rate as
   a ratio of it. The share of a core the sandbox used meanwhile is printed beside it: the
   driver is the worker's ``WhmcsClient`` on the same two cores, and while that client cost
   more than the server (before the worker's own HTTP transport) the sandbox sat partly idle
   and the figure measured the client.
6. **side by side** — the pipeline and the seed's design (``bench/baseline.py``) on the same
   sandboxes, at 0 and 150 ms per WHMCS call: Orders/s, Salesforce and WHMCS calls per Order,
   duplicates after one SIGKILL mid-run.

Peak RSS (VmHWM) of the connector, worker and sink over phases 1–4: read before the worker
is stopped for the backlog and after the backlog, the larger of the two per process (the
restarted worker's VmHWM starts again). A process without a reading (gone, a zombie) is
shown as null and the run exits 1. Writes ``bench/results/bench.json`` and
``bench/results/bench.png`` and prints a table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from bench.cpu import CpuMeter
from bench.harness import (
    PhaseIncomplete,
    Pipeline,
    _all_provisioned,
    _all_settled,
    _one_whmcs_order_each,
    approvals_ms,
    settle_span_s,
    write_backs_ms,
)
from bench.side_by_side import (
    compare,
    cpu_pids,
    restart_settled_worker,
    table,
    whmcs_pairs_per_s,
)

RESULTS = Path(__file__).resolve().parent / "results"
TARGETS = {"sf_api_calls_per_order": ("<=", 0.03), "whmcs_calls_per_order": ("<=", 2.0),
           "latency_ms_p99": ("<", 300.0), "backlog_orders_per_s": (">=", 1000.0),
           "whmcs_bound_ratio": (">=", 0.5), "pipeline_cpu_ms_per_order": ("<=", 0.5),
           "pipeline_to_whmcs_sandbox_cpu": ("<=", 1.5), "rss_mb_max": ("<=", 200.0)}
# phase_backlog: how long the restarted worker has to write the outcomes, then how long the
# last write-backs are waited for; the sweep interval it runs with is past both
BACKLOG_DRAIN_TIMEOUT_S = 900.0
BACKLOG_SETTLE_TIMEOUT_S = 600.0
BACKLOG_SWEEP_INTERVAL_S = 2 * (BACKLOG_DRAIN_TIMEOUT_S + BACKLOG_SETTLE_TIMEOUT_S)
# the outcome count's poll: short until the worker's first outcome (where its start-up CPU
# ends and its CPU per Order begins), then as before — each poll asks the broker for every
# outcomes partition's offsets, and the broker's CPU is in the figures
FIRST_OUTCOME_POLL_S = 0.02
DRAIN_POLL_S = 0.25


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


class _OutcomeCounter:
    """Records in the outcomes topic, read by one consumer kept for the whole phase.

    It was a new consumer per count, four times a second: each made its connections and
    asked for its group's coordinator, ~9 ApiVersions and ~8 FindCoordinator requests a
    second at the broker during the backlog (the broker's JMX), counted in the broker's
    CPU per Order and taken from the same two cores the pipeline runs on."""

    def __init__(self, p: Pipeline) -> None:
        self.topic = p.kafka.outcomes
        self.consumer = Consumer(p.client_config(**{"group.id": "bench-count",
                                                    "isolation.level": "read_committed"}))
        md = self.consumer.list_topics(self.topic, timeout=10)
        self.partitions = [TopicPartition(self.topic, x) for x in md.topics[self.topic].partitions]

    def count(self) -> int:
        total = 0
        for tp in self.partitions:
            low, high = self.consumer.get_watermark_offsets(tp, timeout=10)
            total += high - low
        return total  # includes transaction markers if the worker used transactions

    def close(self) -> None:
        self.consumer.close()


def _requests_end(c: Consumer, topic: str) -> int:
    """The sum of the requests topic's end offsets (events and transaction markers)."""
    md = c.list_topics(topic, timeout=10)
    return sum(c.get_watermark_offsets(TopicPartition(topic, x), timeout=10)[1]
               for x in md.topics[topic].partitions)


def phase_burst(p: Pipeline, n: int) -> dict[str, Any]:
    sf0, wh0 = p.sf.counters(), p.whmcs.counters()
    ids = p.sf.approve(n)
    n = len(ids)
    rows = p.wait_settled(ids, timeout=600, poll=0.5)
    _all_provisioned("burst", ids, rows)
    _one_whmcs_order_each(p, "burst", ids)
    sf1, wh1 = p.sf.counters(), p.whmcs.counters()
    # the first approval to the last write-back, on the Salesforce clock: not when the
    # wait's 0.5-s poll first saw them all (that quantized the rate to its steps)
    elapsed, _written = settle_span_s(p, ids, "burst")
    wh_calls = sum(wh1["calls"].values()) - sum(wh0["calls"].values())
    sf_calls = sf1["api_used"] - sf0["api_used"]
    ok = sum(1 for r in rows.values() if r.get("Activation_Status__c") == "Provisioned")
    return {"orders": n, "provisioned": ok, "seconds": elapsed, "sf_api_calls": sf_calls,
            "whmcs_calls": wh_calls, "sf_calls_by_kind": {
                k: v - sf0["calls"].get(k, 0) for k, v in sf1["calls"].items()}}


def phase_steady(p: Pipeline, rate: float, seconds: float) -> dict[str, Any]:
    ids: list[str] = []
    t0 = time.monotonic()
    tick = 0.2
    while time.monotonic() - t0 < seconds:
        due = int((time.monotonic() - t0) * rate) - len(ids)
        if due > 0:
            ids.extend(p.sf.approve(due))
        time.sleep(tick)
    rows = p.wait_settled(ids, timeout=300, poll=1)
    _all_provisioned("steady", ids, rows)
    created = approvals_ms(p, ids)
    written = write_backs_ms(p, ids)
    points = sorted((created[oid], written[oid] - created[oid])
                    for oid in ids if oid in created and oid in written)
    lat = [ms for _, ms in points]
    return {"orders": len(ids), "rate": rate, "points": points,
            "p50": _percentile(lat, 0.5), "p95": _percentile(lat, 0.95),
            "p99": _percentile(lat, 0.99), "mean": statistics.fmean(lat)}


def phase_backlog(p: Pipeline, n: int,
                  on_track: Callable[[int], Callable[[], None] | None] | None = None
                  ) -> dict[str, Any]:
    """``on_track``: called once with the restarted worker's pid when its CPU starts
    counting (the first poll that sees an outcome), never during its start-up; what it
    returns is called when the CPU meter stops (or the phase fails) — ``bench.stages
    --profile`` runs py-spy on the worker in between, the window of its CPU per Order."""
    # the worker of the earlier phases: its peak RSS ends with it (the restarted one's
    # VmHWM starts again), so it is read now and kept (``rss_mb_before_restart``)
    rss_before = peak_rss_mb(p)
    p.stop("worker")
    counter = _OutcomeCounter(p)
    before = counter.count()
    meter = CpuMeter(cpu_pids(p)).start()  # the connector writes the events now
    c = Consumer(p.client_config(**{"group.id": "bench-backlog"}))
    start = _requests_end(c, p.kafka.requests)  # the earlier phases' events are there too
    ids = p.sf.approve(n)
    n = len(ids)
    # Wait until the connector has written every event: the requests end offsets grew by n
    # and stopped moving (transaction markers count among the offsets, n is reached early).
    deadline = time.monotonic() + 600
    last = -1
    while time.monotonic() < deadline:
        end = _requests_end(c, p.kafka.requests)
        if end >= start + n and end == last:
            break
        last = end
        time.sleep(1)
    else:
        c.close()
        raise PhaseIncomplete(f"backlog: the {n} events not all queued in 600 s (the requests "
                              f"topic grew by {max(0, last - start)} offsets)")
    c.close()
    t0 = time.monotonic()
    # Its sweep timer starts with it: the first sweep, a full scan of every intent and
    # dedupe entry of the bench, is kept out of the phase (the override is for this start
    # only: a later restart runs the worker as production does).
    env = p.process_env.get("worker")
    p.process_env["worker"] = {**(env or {}),
                               "WORKER_SWEEP_INTERVAL_S": f"{BACKLOG_SWEEP_INTERVAL_S:g}"}
    try:
        p.start("worker")
    finally:
        if env is None:
            p.process_env.pop("worker", None)
        else:
            p.process_env["worker"] = env
    worker_pid = p.procs["worker"].pid
    target = before + n
    samples = []
    # The worker's CPU counts from its first outcome: its start-up (interpreter, imports,
    # RocksDB, group join, table recovery) is reported apart, as the drain rate's is, and
    # its CPU per Order is over the Orders it finished after that.
    startup_cpu: float | None = None
    done_at_track: int | None = None
    untrack: Callable[[], None] | None = None
    try:
        while time.monotonic() - t0 < BACKLOG_DRAIN_TIMEOUT_S:
            count = counter.count()
            samples.append((time.monotonic() - t0, count - before))
            if done_at_track is None and count > before:
                startup_cpu = meter.track("worker", worker_pid)
                done_at_track = count - before
                if on_track is not None:
                    untrack = on_track(worker_pid)
            if count >= target:
                break
            time.sleep(FIRST_OUTCOME_POLL_S if done_at_track is None else DRAIN_POLL_S)
        elapsed = time.monotonic() - t0
        counter.close()
        if count < target:
            raise PhaseIncomplete(f"backlog: {count - before} of {n} outcomes written in "
                                  f"{BACKLOG_DRAIN_TIMEOUT_S:g} s")
        _all_settled("backlog (its last 200 Orders)", ids[-200:],
                     p.wait_settled(ids[-200:], timeout=BACKLOG_SETTLE_TIMEOUT_S, poll=2))
        cpu = meter.stop()  # approval → the last write-back: every process's share of it
    finally:
        if untrack is not None:
            untrack()
    # every one of them, once the CPU is counted: the outcome records counted above are of
    # any status, and a Failed one is quick
    _all_provisioned("backlog", ids, p.wait_settled(ids, timeout=BACKLOG_SETTLE_TIMEOUT_S,
                                                    poll=2))
    _one_whmcs_order_each(p, "backlog", ids)
    # The drain rate proper runs from the first outcome to the last: the worker's start-up
    # (process, group join, table recovery) is reported apart, not averaged into it.
    first = next(((t, c) for t, c in samples if c > 0), (elapsed, 0))
    drain_s = max(1e-9, elapsed - first[0])
    per_order = {k: 1000 * v / n for k, v in cpu.items()}
    after = n - (done_at_track or 0)
    if "worker" in cpu and after > 0:
        per_order["worker"] = 1000 * cpu["worker"] / after
    elif "worker" in cpu:  # every outcome was there at the first look: nothing to separate
        per_order["worker"] = 1000 * (cpu["worker"] + (startup_cpu or 0.0)) / n
    return {"orders": n, "seconds": elapsed, "startup_s": first[0],
            "orders_per_s": (n - first[1]) / drain_s if n > first[1] else n / elapsed,
            "orders_per_s_with_startup": n / elapsed, "samples": samples,
            "cpu_ms_per_order": per_order, "worker_startup_cpu_s": startup_cpu,
            "rss_mb_before_restart": rss_before}


def _vm_hwm_mb(pid: int) -> float | None:
    """``pid``'s peak RSS (VmHWM) in MB; None when it is gone or a zombie (no VmHWM)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return None


def peak_rss_mb(p: Pipeline, earlier: dict[str, float | None] | None = None
                ) -> dict[str, float | None]:
    """Peak RSS (VmHWM, MB) of each of the pipeline's processes: the larger of its reading
    now and ``earlier``'s (taken before a restart: a restarted process's VmHWM starts
    again). None: a process with no reading at all (gone or a zombie) — not left out, so
    the figures cannot read as a maximum over every process when one is missing."""
    out: dict[str, float | None] = dict(earlier or {})
    for name, proc in p.procs.items():
        readings = [v for v in (out.get(name), _vm_hwm_mb(proc.pid)) if v is not None]
        out[name] = max(readings) if readings else None
    return out


def worker_metrics(p: Pipeline) -> dict[str, float]:
    """Sums of the worker's commit-gate metrics since its last start (the backlog phase)."""
    import urllib.request

    port = p.ports.get("worker")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for line in text.splitlines():
        for name in ("sfprov_worker_commit_check_seconds_sum",
                     "sfprov_worker_commit_check_seconds_count",
                     "sfprov_worker_commit_holds_total"):
            if line.startswith(name):
                out[name] = out.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def plot(steady: dict[str, Any], backlog: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(2, 1, figsize=(9, 7))
    t0 = steady["points"][0][0] if steady["points"] else 0
    a.plot([(t - t0) / 1000 for t, _ in steady["points"]], [ms for _, ms in steady["points"]],
           ".", ms=3)
    a.axhline(steady["p99"], color="r", lw=0.8, label=f"p99 {steady['p99']:.0f} ms")
    a.set_xlabel("approval time (s)")
    a.set_ylabel("approval → write-back (ms)")
    a.set_title(f"latency at a steady {steady['rate']:.0f} orders/s")
    a.legend()
    xs = [s for s, _ in backlog["samples"]]
    ys = [c for _, c in backlog["samples"]]
    b.plot(xs, ys)
    b.set_xlabel("seconds since the worker started")
    b.set_ylabel("outcomes written")
    b.set_title(f"backlog of {backlog['orders']} events: {backlog['orders_per_s']:.0f} orders/s")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--burst", type=int, default=1000)
    parser.add_argument("--sustained", type=int, default=5000)
    parser.add_argument("--steady-rate", type=float, default=50.0)
    parser.add_argument("--steady-seconds", type=float, default=60.0)
    parser.add_argument("--backlog", type=int, default=50_000)
    parser.add_argument("--pairs", type=int, default=3000,
                        help="AddOrder+AcceptOrder pairs driven into the WHMCS sandbox alone")
    parser.add_argument("--compare", type=int, default=300,
                        help="Orders per run of the side-by-side phase (0: skip it)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--keep", type=Path,
                        help="run in this directory and keep it (logs) instead of a temporary one")
    args = parser.parse_args(argv)
    total = args.burst + args.sustained + int(args.steady_rate * args.steady_seconds) + \
        args.backlog + 7 * args.compare + 100
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
    with (contextlib.nullcontext(str(args.keep)) if args.keep
          else tempfile.TemporaryDirectory(prefix="sfprov-bench-")) as tmp:
        print(f"bench: seeding {total} Orders and starting the pipeline ...", flush=True)
        with Pipeline(Path(tmp), accounts=200, orders=total, broken_every=0,
                      partitions=6) as p:
            print("phase 1/6: burst", flush=True)
            burst = phase_burst(p, args.burst)
            print("phase 2/6: sustained", flush=True)
            sustained = phase_burst(p, args.sustained)
            print("phase 3/6: steady", flush=True)
            steady = phase_steady(p, args.steady_rate, args.steady_seconds)
            print("phase 4/6: backlog (CPU per Order of every process)", flush=True)
            backlog = phase_backlog(p, args.backlog)
            rss = peak_rss_mb(p, backlog["rss_mb_before_restart"])
            gate = worker_metrics(p)
            # the backlog's worker never swept (its interval is past the phase): restarted
            # as production runs it, its first sweep (a full scan of the bench's tables)
            # is waited out here, not left to land in phase 5 or 6
            print("  restarting the worker, waiting out its first sweep ...", flush=True)
            settled_s = restart_settled_worker(p)
            print(f"  … settled in {settled_s:.0f} s", flush=True)
            print("phase 5/6: the WHMCS sandbox alone (AddOrder+AcceptOrder pairs/s)",
                  flush=True)
            pairs = whmcs_pairs_per_s(p, args.pairs)
            side: dict[str, Any] = {}
            if args.compare:
                print("phase 6/6: the pipeline beside the seed's design (bench/baseline.py)",
                      flush=True)
                side = compare(p, n_fast=args.compare, n_slow_pipeline=args.compare,
                               n_slow_baseline=max(20, args.compare // 5))
    cpu = backlog["cpu_ms_per_order"]
    pipeline_cpu = sum(cpu.get(k, 0.0) for k in ("connector", "worker", "sink"))
    result = {
        "orders_per_s": round(sustained["orders"] / sustained["seconds"], 1),
        "latency_ms_p50": round(steady["p50"], 1), "latency_ms_p95": round(steady["p95"], 1),
        "latency_ms_p99": round(steady["p99"], 1),
        "backlog_orders_per_s": round(backlog["orders_per_s"], 1),
        "backlog_orders_per_s_with_startup": round(backlog["orders_per_s_with_startup"], 1),
        "backlog_worker_startup_s": round(backlog["startup_s"], 1),
        # the restarted worker's CPU until its first outcome: not in its CPU per Order
        "backlog_worker_startup_cpu_s": None if backlog["worker_startup_cpu_s"] is None
        else round(backlog["worker_startup_cpu_s"], 2),
        "sf_api_calls_per_order": round(burst["sf_api_calls"] / burst["orders"], 4),
        "whmcs_calls_per_order": round(burst["whmcs_calls"] / burst["orders"], 3),
        "cpu_ms_per_order": {k: round(v, 3) for k, v in cpu.items()},
        "pipeline_cpu_ms_per_order": round(pipeline_cpu, 3),
        "pipeline_to_whmcs_sandbox_cpu": round(
            pipeline_cpu / max(1e-9, cpu.get("whmcs_sandbox", 0.0)), 2),
        "whmcs_sandbox_pairs_per_s": round(pairs["pairs_per_s"], 1),
        "whmcs_sandbox_cpu_ms_per_pair_alone": round(pairs["sandbox_cpu_ms_per_pair"], 3),
        # the worker's WhmcsClient making the same two calls with nothing else to do: the
        # part of the worker's CPU per Order that only a cheaper client could cut
        "whmcs_client_cpu_ms_per_pair": round(pairs["client_cpu_ms_per_pair"], 3),
        "worker_cpu_ms_beyond_whmcs_client": round(
            cpu.get("worker", 0.0) - pairs["client_cpu_ms_per_pair"], 3),
        "whmcs_bound_ratio": round(backlog["orders_per_s"] / pairs["pairs_per_s"], 3),
        # against what the sandbox could answer with a whole core (1 / its CPU per pair):
        # the same figure whether or not the driver bound the pairs/s
        "whmcs_capacity_ratio": round(backlog["orders_per_s"] * pairs["sandbox_cpu_ms_per_pair"]
                                      / 1000, 3),
        # None when a process has no reading: a max over the others would pass for all
        "rss_mb_max": round(max(v for v in rss.values() if v is not None), 1)
        if rss and None not in rss.values() else None,
        "rss_mb": {k: None if v is None else round(v, 1) for k, v in rss.items()},
        "commit_checks": int(gate.get("sfprov_worker_commit_check_seconds_count", 0)),
        "commit_check_ms_mean": round(
            1000 * gate.get("sfprov_worker_commit_check_seconds_sum", 0.0)
            / max(1.0, gate.get("sfprov_worker_commit_check_seconds_count", 0.0)), 2),
        "commit_holds": int(gate.get("sfprov_worker_commit_holds_total", 0)),
        "side_by_side": side,
        "burst": {k: v for k, v in burst.items()},
        "sustained_orders": sustained["orders"], "steady_orders": steady["orders"],
        "backlog_orders": backlog["orders"],
        # the phases' sizes, which the table's labels name (--steady-rate, --burst)
        "steady_rate": args.steady_rate, "burst_orders": burst["orders"],
        "machine": "2 cores, 24 GB; sandboxes at zero added latency",
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(steady, backlog, args.out / "bench.png")
    print_table(result)
    print(f"wrote {args.out / 'bench.json'} and {args.out / 'bench.png'}")
    unread = sorted(k for k, v in rss.items() if v is None)
    if unread:
        print(f"bench: FAILED: no peak RSS reading of {', '.join(unread)} (gone or a zombie "
              "when read): rss_mb_max is not the peak of every process", file=sys.stderr)
        return 1
    return 0


def print_table(r: dict[str, Any]) -> None:
    cpu = r["cpu_ms_per_order"]
    # the phases' sizes as run (a bench.json written before they were recorded: unnamed)
    rate = r.get("steady_rate")
    at_rate = f"at {rate:g} orders/s" if rate is not None else "at the steady rate"
    burst_n = r.get("burst_orders", (r.get("burst") or {}).get("orders"))
    burst = f"{burst_n:,} burst" if burst_n is not None else "the burst"
    rows = [("sustained orders/s (approval → write-back)", r["orders_per_s"], ""),
            (f"latency p50 / p95 / p99 {at_rate} (ms)",
             f"{r['latency_ms_p50']} / {r['latency_ms_p95']} / {r['latency_ms_p99']}",
             "p99 < 300"),
            ("backlog drain, first to last outcome (orders/s)", r["backlog_orders_per_s"],
             ">= 1000"),
            ("  … including the worker's start-up (s)",
             f"{r['backlog_orders_per_s_with_startup']} ({r['backlog_worker_startup_s']} s)", ""),
            ("  … the worker's start-up CPU (s), not in its CPU per Order",
             r.get("backlog_worker_startup_cpu_s", ""), ""),
            ("WHMCS sandbox alone: AddOrder+AcceptOrder pairs/s", r["whmcs_sandbox_pairs_per_s"],
             ""),
            ("  … the share of its core it used (below ~0.85: the driver bound it)",
             round(r["whmcs_sandbox_pairs_per_s"] * r["whmcs_sandbox_cpu_ms_per_pair_alone"]
                   / 1000, 2), ""),
            ("  … the driver's CPU ms per pair (the worker's WhmcsClient alone)",
             r.get("whmcs_client_cpu_ms_per_pair", ""), ""),
            ("backlog orders/s ÷ WHMCS sandbox pairs/s", r["whmcs_bound_ratio"], ">= 0.5"),
            ("  … ÷ its capacity, 1 / its CPU per pair alone (a whole core)",
             r.get("whmcs_capacity_ratio", ""), ""),
            ("CPU ms per Order: connector / worker / sink",
             f"{cpu.get('connector', 0):.3f} / {cpu.get('worker', 0):.3f} / "
             f"{cpu.get('sink', 0):.3f}", ""),
            ("  … the worker beyond its two WHMCS calls (worker − the driver's per pair)",
             r.get("worker_cpu_ms_beyond_whmcs_client", ""), ""),
            ("CPU ms per Order: the pipeline (the three)", r["pipeline_cpu_ms_per_order"],
             "<= 0.5"),
            ("CPU ms per Order: WHMCS sandbox / SF sandbox / broker",
             f"{cpu.get('whmcs_sandbox', 0):.3f} / {cpu.get('salesforce_sandbox', 0):.3f} / "
             f"{cpu.get('broker', 0):.3f}", ""),
            ("pipeline CPU ÷ WHMCS sandbox CPU (same Orders)", r["pipeline_to_whmcs_sandbox_cpu"],
             "<= 1.5"),
            (f"Salesforce API calls per order ({burst})", r["sf_api_calls_per_order"],
             "<= 0.03"),
            (f"WHMCS calls per order ({burst})", r["whmcs_calls_per_order"], "2.00"),
            ("commits, backlog phase: checks, mean ms, holds",
             f"{r['commit_checks']}, {r['commit_check_ms_mean']}, {r['commit_holds']}", ""),
            ("peak RSS per process (MB)", json.dumps(r["rss_mb"]), "<= 200")]
    width = max(len(name) for name, _, _ in rows)
    print(f"\n{'measure':<{width}}  {'value':>28}  target")
    for name, value, target in rows:
        print(f"{name:<{width}}  {str(value):>28}  {target}")
    if r.get("side_by_side"):
        print("\nthe pipeline beside the seed's design (same sandboxes, same run):")
        print("\n".join(table(r["side_by_side"])))


if __name__ == "__main__":
    sys.exit(main())
