"""``make chaos``: approve Orders at a steady rate while killing processes, then check.

Runs the whole pipeline as separate processes (``bench.harness.Pipeline``: real broker,
both sandboxes, connector, worker, sink) with WHMCS latency and commit-then-hang faults on,
approves ``--orders`` Orders at ``--rate`` per second, and meanwhile sends SIGKILL to a
random process (connector, worker, sink and — unless ``--no-broker-kills`` — the Kafka
broker) ``--kills`` times at random moments, restarting each after a short pause. The
randomness is seeded (``--seed``) so a failing run can be repeated. ``--workers 2`` runs a
second worker in the same consumer group (its own state directory), also a kill victim: each
kill of a worker moves its partitions to the other and back — rebalances under load.

When everything has settled it checks the invariants and writes ``bench/results/chaos.json``:
``approved``, ``whmcs_orders``, ``duplicates`` (Salesforce Orders with more than one WHMCS
order), ``missing`` (approved provisionable Orders without a final Salesforce state),
``kills``, ``seed``. Exit status 1 when an invariant fails.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.harness import Pipeline

RESULTS = Path(__file__).resolve().parent / "results"
PIPELINE_PROCESSES = ("connector", "worker", "sink")


def run_chaos(directory: Path, *, orders: int, kills: int, seed: int, rate: float,
              broker_kills: bool, bootstrap: str | None = None, settle_timeout: float = 900,
              break_guard: bool = False, workers: int = 1,
              log: Any = print) -> dict[str, Any]:
    rng = random.Random(seed)
    env = {"WHMCS_TIMEOUT_S": "2", "WORKER_RETRY_DEADLINE_S": "120"}
    with Pipeline(directory, bootstrap=bootstrap, accounts=200, orders=orders,
                  broken_every=50, partitions=3, env=env) as p:
        if break_guard:  # self-test: the invariants must catch a worker without its guard
            p.commands["worker"] = ["-m", "bench.broken_worker", "worker"]
        extra_workers = [f"worker{i}" for i in range(2, workers + 1)]
        for name in extra_workers:  # the group shares the partitions among them
            p.add_worker(name)
        processes = (*PIPELINE_PROCESSES, *extra_workers)
        p.whmcs.set_fault_seed(seed)
        p.whmcs.set_faults("AddOrder", latency_ms=15, jitter_ms=15, hang_rate=0.01, hang_s=4)
        p.whmcs.set_faults("AcceptOrder", latency_ms=10, jitter_ms=10, hang_rate=0.01,
                           hang_s=4, hang_mode="drop")
        approved: list[str] = []
        approving_done = threading.Event()
        errors: list[str] = []

        def approve() -> None:
            chunk = max(1, int(rate / 4))
            try:
                while len(approved) < orders:
                    started = time.monotonic()
                    approved.extend(p.sf.approve(min(chunk, orders - len(approved))))
                    time.sleep(max(0.0, chunk / rate - (time.monotonic() - started)))
            except Exception as exc:  # noqa: BLE001 - reported in the result
                errors.append(f"approving: {exc!r}")
            finally:
                approving_done.set()

        duration = orders / rate
        victims = [*processes, *(["kafka"] if broker_kills else [])]
        plan = sorted((rng.uniform(0.05, 0.95) * duration, rng.choice(victims))
                      for _ in range(kills))
        started = time.monotonic()
        thread = threading.Thread(target=approve, daemon=True)
        thread.start()
        restarts: list[dict[str, Any]] = []
        for at, victim in plan:
            while time.monotonic() - started < at:
                restarts += _revive(p, processes, started)
                time.sleep(0.2)
            log(f"  t={time.monotonic() - started:6.1f}s  SIGKILL {victim}")
            p.kill(victim)
            time.sleep(rng.uniform(0.5, 3.0))
            p.restart(victim)
        approving_done.wait()
        log(f"  approved {len(approved)} Orders in {time.monotonic() - started:.0f}s; "
            "waiting for every Order to settle")
        deadline = time.monotonic() + settle_timeout
        rows: dict[str, Any] = {}
        while time.monotonic() < deadline:
            restarts += _revive(p, processes, started)
            rows = p.wait_settled(approved, timeout=5, poll=1)
            if len(rows) == len(approved) and all(
                    r.get("Activation_Status__c") in ("Provisioned", "Failed")
                    for r in rows.values()):
                break
        report = p.invariants(approved)
        report.update(seed=seed, rate=rate, broker_kills=broker_kills, workers=workers,
                      commit_gate_holds=sum(
                          p.log(name).read_text(errors="replace").count(
                              "commit gate: faust would commit")
                          for name in ("worker", *extra_workers)),
                      unplanned_restarts=len(restarts), unplanned=restarts,
                      errors=errors,
                      kill_plan=[{"at_s": round(at, 1), "process": v} for at, v in plan],
                      duration_s=round(time.monotonic() - started, 1))
        report["ok"] = (report["duplicates"] == 0 and report["missing"] == 0
                        and report["approved"] == orders and not errors)
        return report


def _revive(p: Pipeline, processes: tuple[str, ...] = PIPELINE_PROCESSES,
            started: float = 0.0) -> list[dict[str, Any]]:
    """Restart a pipeline process that died on its own (what the supervisor does in prod);
    returns which, when and with what exit code, with the end of its log."""
    revived = []
    for name in processes:
        proc = p.procs.get(name)
        if proc is not None and proc.poll() is not None:
            try:
                tail = p.log(name).read_text(errors="replace").splitlines()[-5:]
            except OSError:
                tail = []
            revived.append({"process": name, "exit": proc.returncode,
                            "at_s": round(time.monotonic() - started, 1), "log_tail": tail})
            p.start(name)
    return revived


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--orders", type=int, default=5000)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=int(time.time()) % 100_000)
    parser.add_argument("--rate", type=float, default=25.0, help="approvals per second")
    parser.add_argument("--no-broker-kills", action="store_true")
    parser.add_argument("--workers", type=int, default=1,
                        help="worker processes sharing the partitions (each a kill victim)")
    parser.add_argument("--out", type=Path, default=RESULTS / "chaos.json")
    parser.add_argument("--break-guard", action="store_true",
                        help="self-test: run a worker whose WHMCS lookup never finds an order "
                             "(bench/broken_worker.py); the run must then fail")
    args = parser.parse_args(argv)
    if args.break_guard and args.out == RESULTS / "chaos.json":
        args.out = RESULTS / "chaos-broken-guard.json"  # never overwrite the real result
    elif args.workers > 1 and args.out == RESULTS / "chaos.json":
        args.out = RESULTS / f"chaos-{args.workers}-workers.json"
    print(f"chaos: {args.orders} Orders at {args.rate}/s, {args.kills} kills, seed {args.seed}, "
          f"{args.workers} worker(s)")
    with tempfile.TemporaryDirectory(prefix="sfprov-chaos-") as tmp:
        report = run_chaos(Path(tmp), orders=args.orders, kills=args.kills, seed=args.seed,
                           rate=args.rate, broker_kills=not args.no_broker_kills,
                           break_guard=args.break_guard, workers=args.workers)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("approved", "whmcs_orders", "duplicates",
                                            "missing", "kills", "seed", "workers",
                                            "commit_gate_holds", "ok")}))
    print(f"wrote {args.out}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
