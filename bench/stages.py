"""Where the latency goes: approval → write-back decomposed by stage, at a steady rate.

    .venv/bin/python -m bench.stages [--rate 50] [--seconds 20] [--env NAME=VALUE ...]

Runs the whole pipeline (``bench.harness``), approves ``--rate`` Orders/s for ``--seconds``
and, per Order, reads five timestamps — all from this host's wall clock (the sandboxes run
here with a zero clock offset, and every timestamp below is millisecond-precise):

* ``approved``  — the event's ``CreatedDate`` (Salesforce clock, epoch ms, set by the Flow)
* ``requested`` — the requests record's Kafka timestamp (the connector's produce time)
* ``decided``   — the outcome's ``completed_at`` (the worker's decision)
* ``outcome``   — the outcome record's Kafka timestamp (the worker's send)
* ``written``   — the Order's ``LastModifiedDate`` (the sink's composite update, SF clock)

and prints p50/p90/p95/p99 of each stage and of the total. ``--env`` passes settings to the
pipeline processes (e.g. ``--env SINK_LINGER_S=0.1``) to measure one change at a time.

``--whmcs-latency-ms L`` makes every WHMCS call take L ms (a real WHMCS answers in 100–200);
``--whmcs-hang-rate R --whmcs-hang-s S`` makes that fraction of ``AddOrder`` calls commit and
then hang for S seconds (past the client's ``WHMCS_TIMEOUT_S``, a hung call). Both apply
after the warm-up, to the steady phase and ``--burst``; they are cleared before
``--backlog``, whose CPU per Order is measured against a WHMCS at zero added latency, as
``make bench``'s is.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.harness import FINAL_STATES, Pipeline, _all_provisioned, _sf_ms, settle_span_s
from bench.pipeline import _percentile

STAGES = [("approved→requested (SF Pub/Sub + connector)", "approved", "requested"),
          ("requested→decided (worker: linger, guard, WHMCS)", "requested", "decided"),
          ("decided→outcome sent (worker: flush, send)", "decided", "outcome"),
          ("outcome→written (sink: poll, linger, PATCH)", "outcome", "written"),
          ("TOTAL approved→written", "approved", "written")]


def steady(p: Pipeline, rate: float, seconds: float) -> list[str]:
    ids: list[str] = []
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        due = int((time.monotonic() - t0) * rate) - len(ids)
        if due > 0:
            ids.extend(p.sf.approve(due))
        time.sleep(0.02)
    # an Order not written back has no write-back to time (its LastModifiedDate is the
    # approval's): the phase fails (PhaseIncomplete) rather than report such latencies
    _all_provisioned("steady", ids, p.wait_settled(ids, timeout=300, poll=1))
    return ids


def stamps(p: Pipeline, ids: list[str]) -> dict[str, dict[str, float]]:
    wanted = set(ids)
    out: dict[str, dict[str, float]] = {oid: {} for oid in ids}
    for r in p.records(p.kafka.requests, "provision_request"):
        if r.key in wanted:
            out[r.key]["approved"] = r.value["CreatedDate"].timestamp() * 1000
            out[r.key]["requested"] = r.timestamp_ms
    for r in p.records(p.kafka.outcomes, "provisioning_outcome"):
        if r.key in wanted:
            out[r.key]["decided"] = r.value["completed_at"].timestamp() * 1000
            out[r.key]["outcome"] = r.timestamp_ms
    for oid, row in p.sf_orders_fields(ids, "LastModifiedDate, Activation_Status__c").items():
        if row.get("Activation_Status__c") in FINAL_STATES:  # written back: its write's time
            out[oid]["written"] = _sf_ms(row["LastModifiedDate"])
    return {oid: s for oid, s in out.items() if len(s) == 5}


def report(rows: dict[str, dict[str, float]]) -> None:
    print(f"{len(rows)} Orders with all five timestamps; milliseconds")
    print(f"{'stage':<52} {'p50':>7} {'p90':>7} {'p95':>7} {'p99':>7} {'mean':>7}")
    for name, a, b in STAGES:
        vals = [s[b] - s[a] for s in rows.values()]
        print(f"{name:<52} {_percentile(vals, .5):7.0f} {_percentile(vals, .9):7.0f} "
              f"{_percentile(vals, .95):7.0f} {_percentile(vals, .99):7.0f} "
              f"{sum(vals) / len(vals):7.0f}")


def slowest(rows: dict[str, dict[str, float]], n: int) -> None:
    """The N slowest Orders, stage by stage: which process a stall sits in, and when."""
    print(f"\n{n} slowest Orders (ms per stage; approved = UTC wall clock)")
    print(f"{'approved':<14} {'order':<19} " + " ".join(f"{i + 1:>6}" for i in range(4))
          + f" {'total':>7}")
    worst = sorted(rows.items(), key=lambda kv: kv[1]["written"] - kv[1]["approved"])[-n:]
    for oid, s in worst:
        at = time.strftime("%H:%M:%S", time.gmtime(s["approved"] / 1000)) + \
            f".{int(s['approved'] % 1000):03d}"
        parts = [s[b] - s[a] for _name, a, b in STAGES[:4]]
        print(f"{at:<14} {oid:<19} " + " ".join(f"{v:6.0f}" for v in parts)
              + f" {s['written'] - s['approved']:7.0f}")
    print("stages: " + "; ".join(f"{i + 1} {name}" for i, (name, _a, _b) in
                                 enumerate(STAGES[:4])))


def backlog(p: Pipeline, n: int, profile: Path | None) -> None:
    """The backlog phase of ``make bench`` at size ``n``; optionally py-spy on the worker,
    over the window of its CPU per Order: from its first outcome (its start-up — imports,
    RocksDB, group join, recovery — left out, as it is from that figure) until the CPU
    meter stops at the last write-back."""
    import subprocess

    from bench.pipeline import peak_rss_mb, phase_backlog

    def attach(pid: int) -> Callable[[], None]:
        # 100 Hz, and blocking: a sample taken without stopping the process
        # (--nonblocking) can read a stack while it changes (torn stacks)
        spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record",
                                "-p", str(pid), "-r", "100", "--gil", "-f", "raw",
                                "-o", str(profile)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def detach() -> None:
            spy.send_signal(signal.SIGINT)  # py-spy writes the profile and exits
            spy.wait(30)
        return detach

    result = phase_backlog(p, n, on_track=attach if profile is not None else None)
    # the worker was restarted for the backlog: its peak before is the phase's reading
    rss = peak_rss_mb(p, result["rss_mb_before_restart"])
    if profile is not None and profile.exists():
        from bench.profile import render, summarize
        print(render(summarize(profile.read_text()), top=20))
    cpu = ", ".join(f"{k} {v:.2f}" for k, v in sorted(result["cpu_ms_per_order"].items()))
    print(f"backlog of {n}: {result['seconds']:.1f}s, {result['orders_per_s']:.0f} orders/s; "
          f"peak RSS MB {rss}; CPU ms per Order: {cpu}")


def _print_sf_calls(phase: str, before: dict[str, int], after: dict[str, int],
                    orders: int) -> None:
    """The Salesforce API calls the pipeline made in one phase (queries: the worker's guard;
    sObject Collections: the sink's write-back), in all and per Order."""
    calls = {k: v - before.get(k, 0) for k, v in after.items()
             if k in ("composite_sobjects", "query") and v - before.get(k, 0)}
    print(f"Salesforce calls during {phase}: {calls} "
          f"({sum(calls.values()) / orders:.3f} per Order)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=50.0)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--warmup", type=int, default=200, help="Orders approved at once first")
    ap.add_argument("--env", action="append", default=[], help="NAME=VALUE for the processes")
    ap.add_argument("--backlog", type=int, default=0,
                    help="then measure the drain of this many pre-queued events")
    ap.add_argument("--profile", type=Path,
                    help="py-spy the worker during the backlog, from its first outcome to "
                         "the last write-back (its start-up left out, as from its CPU per "
                         "Order; raw folded stacks, 100 Hz); prints their summary "
                         "(bench.profile)")
    ap.add_argument("--dump", type=Path, help="write per-Order timestamps here (JSON)")
    ap.add_argument("--keep", type=Path,
                    help="run in this directory and keep it (the processes' logs, the "
                         "broker's data) instead of a temporary one")
    ap.add_argument("--slowest", type=int, default=0,
                    help="print the stages of the N slowest Orders, with their wall-clock time")
    ap.add_argument("--whmcs-latency-ms", type=int, default=0,
                    help="every WHMCS call takes this long (the steady phase and --burst; "
                         "cleared before --backlog)")
    ap.add_argument("--whmcs-hang-rate", type=float, default=0.0,
                    help="this fraction of AddOrder calls commit, then hang (the steady "
                         "phase and --burst; cleared before --backlog)")
    ap.add_argument("--whmcs-hang-s", type=float, default=20.0,
                    help="how long a hung AddOrder hangs (past WHMCS_TIMEOUT_S: a timeout)")
    ap.add_argument("--seed", type=int, default=1, help="the WHMCS faults' random seed")
    ap.add_argument("--burst", type=int, default=0,
                    help="then approve this many Orders at once (WHMCS faults on) and report "
                         "the drain rate, approval of the first to write-back of the last "
                         "(both on the Salesforce clock)")
    args = ap.parse_args(argv)
    env = dict(x.split("=", 1) for x in args.env)
    n = args.warmup + int(args.rate * args.seconds) + args.backlog + args.burst + 50
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
    with (contextlib.nullcontext(str(args.keep)) if args.keep
          else tempfile.TemporaryDirectory(prefix="sfprov-stages-")) as tmp, \
            Pipeline(Path(tmp), accounts=100, orders=n, broken_every=0, partitions=6,
                     env=env) as p:
        if args.warmup:
            p.wait_settled(p.sf.approve(args.warmup), timeout=300, poll=0.5)
        faults = bool(args.whmcs_latency_ms or args.whmcs_hang_rate)
        if faults:
            p.whmcs.set_fault_seed(args.seed)
            p.whmcs.set_faults("*", latency_ms=args.whmcs_latency_ms)
            p.whmcs.set_faults("AddOrder", latency_ms=args.whmcs_latency_ms,
                               hang_rate=args.whmcs_hang_rate, hang_s=args.whmcs_hang_s)
            print(f"WHMCS: {args.whmcs_latency_ms} ms per call, {args.whmcs_hang_rate:.1%} of "
                  f"AddOrder hang {args.whmcs_hang_s:g} s")
        before = p.sf.counters()["calls"]
        ids = steady(p, args.rate, args.seconds) if args.seconds else []
        after = p.sf.counters()["calls"]
        if ids:
            _print_sf_calls("the steady phase", before, after, len(ids))
        rows = stamps(p, ids) if ids else {}
        if args.burst:
            before = p.sf.counters()["calls"]
            burst_ids = p.sf.approve(args.burst)
            _all_provisioned("burst", burst_ids, p.wait_settled(burst_ids, timeout=1800, poll=0.5))
            # the guard's reads (and re-reads before a queued AddOrder) and the write-backs
            _print_sf_calls("the burst", before, p.sf.counters()["calls"], len(burst_ids))
            # the first approval to the last write-back, on the Salesforce clock: not from
            # approve()'s return (Orders were already in flight) to the 0.5-s poll that
            # first saw them all (it quantized the rate to its steps)
            took, written = settle_span_s(p, burst_ids, "burst")
            print(f"burst of {args.burst}: {took:.1f} s, "
                  f"{written / took if took > 0 else 0.0:.1f} orders/s")
        if args.backlog:
            if faults:  # the backlog's CPU figures: against a WHMCS at zero added latency
                p.whmcs.clear_faults()
                print("WHMCS faults cleared for the backlog")
            backlog(p, args.backlog, args.profile)
    if rows:
        report(rows)
        if args.slowest:
            slowest(rows, args.slowest)
    if args.dump:
        import json
        args.dump.write_text(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
