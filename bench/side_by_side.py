"""Phases of ``make bench`` that put figures side by side (issue #14).

* :func:`whmcs_pairs_per_s` — the WHMCS sandbox's own ``AddOrder`` + ``AcceptOrder`` pairs per
  second, driven directly (``WORKER_WHMCS_PARALLELISM`` calls in flight, nothing else
  running), each ``AddOrder`` the one the worker makes of a seeded Order
  (:func:`pair_params`): the bound for any pipeline that must make two WHMCS calls per Order;
* :func:`compare` — the pipeline against the seed's design (``bench/baseline.py``) on the same
  sandboxes, at zero WHMCS latency and at 150 ms per call: Orders/s (from the first
  approval to the last write-back, on the Salesforce clock), Salesforce and WHMCS
  calls per Order, and duplicate WHMCS orders after one SIGKILL mid-run. The kill is
  triggered by WHMCS progress (half of the run's ``AddOrder`` calls made) and the table says
  where it landed; a restarted worker's recovery and first sweep are waited out before the
  next run, and the worker's first sweep before the first run, so none overlaps a run
  (``make bench`` restarts the worker after its backlog phase, whose worker never sweeps,
  with :func:`restart_settled_worker`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from typing import Any

from bench.harness import ROOT, Pipeline, _all_provisioned, settle_span_s
from common.settings import WhmcsSettings
from common.whmcs import WhmcsClient

PAIR_CLIENT_IDS = tuple(1000 + i for i in range(10, 60))  # seeded WHMCS clients


def pair_params(pairs: int, *, payment_method: str = "mailin", no_invoice: bool = False,
                no_email: bool = True, run: str | None = None) -> list[dict[str, Any]]:
    """``AddOrder`` parameters of the standalone pairs: what the worker sends for the seed's
    Orders — the pipeline's own mapping (:func:`streams.mapping.map_order`) of the guard
    query's record of an Order of each of ``sandbox.seed.ORDER_SHAPES`` in turn (1.8
    services, 0.6 add-ons a pair, config options), each with a marker of its own (an
    18-character id unique to this ``run``, which no approved Order has). A pair of one
    product without add-ons cost the sandbox ~40 % less CPU than the pipeline's Orders."""
    from sandbox.seed import ORDER_SHAPES, catalog_item
    from streams.mapping import map_order

    tag = (run or uuid.uuid4().hex)[:4]
    out = []
    for i in range(pairs):
        items = [catalog_item(code) for code in ORDER_SHAPES[i % len(ORDER_SHAPES)]]
        order = {"Id": f"801P{tag}{i:010d}",
                 "Account": {"WH_Account__c": str(PAIR_CLIENT_IDS[i % len(PAIR_CLIENT_IDS)])},
                 "OrderItems": {"records": [
                     {"Id": f"802P{tag}{i:08d}{k:02d}", "Quantity": 1, "Product2": {
                         "Name": item.name, "Item_Class__c": item.item_class,
                         "WHMCS_Product_Id__c": str(item.whmcs_id),
                         "Billing_Cycle__c": item.billing_cycle,
                         "Portal_ConfigOptions_JSON__c": item.config_options_json}}
                     for k, item in enumerate(items)]}}
        out.append(map_order(order, idem_key=f"bench-pair-{i}", payment_method=payment_method,
                             no_invoice=no_invoice, no_email=no_email).params())
    return out


def whmcs_pairs_per_s(p: Pipeline, pairs: int = 3000, parallelism: int = 16) -> dict[str, Any]:
    """AddOrder+AcceptOrder pairs/s of the WHMCS sandbox alone, its CPU per pair, and the
    driver's: the worker's ``WhmcsClient`` on the worker's loop making the same two calls, the
    part of the worker's CPU per Order that no change outside the client can remove. Each
    ``AddOrder`` is one the worker makes of a seeded Order (:func:`pair_params`)."""
    from bench.cpu import CpuMeter

    settings = WhmcsSettings.load(p.whmcs.env())
    orders = pair_params(pairs, payment_method=settings.payment_method,
                         no_invoice=settings.no_invoice, no_email=settings.no_email)

    async def drive() -> float:
        async with WhmcsClient(settings) as client:
            slots = asyncio.Semaphore(parallelism)

            async def one(i: int) -> None:
                async with slots:
                    made = await client.add_order(orders[i])
                    await client.accept_order(made.order_id)
            t0 = time.monotonic()
            await asyncio.gather(*(one(i) for i in range(pairs)))
            return time.monotonic() - t0
    import uvloop  # the loop the worker's client runs on (decision 0010): a lighter driver
    meter = CpuMeter({"whmcs_sandbox": p.whmcs.process.pid}).start()
    driver_started = time.thread_time()  # the loop runs in this thread: its CPU alone
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        seconds = runner.run(drive())
    driver = time.thread_time() - driver_started
    cpu = meter.stop()["whmcs_sandbox"]
    return {"pairs": pairs, "seconds": seconds, "pairs_per_s": pairs / seconds,
            "sandbox_cpu_ms_per_pair": 1000 * cpu / pairs,
            "client_cpu_ms_per_pair": 1000 * driver / pairs}


def _latency(p: Pipeline, ms: int) -> None:
    p.whmcs.clear_faults()
    if ms:
        p.whmcs.set_faults("*", latency_ms=ms)


def _counters(p: Pipeline) -> tuple[int, int]:
    sf, wh = p.sf.counters(), p.whmcs.counters()
    return sf["api_used"], sum(wh["calls"].values())


def _kill_midway(p: Pipeline, n: int, kill: Any, restart: Any,
                 at: dict[str, Any]) -> threading.Thread:
    """SIGKILL once the run has made half of its ``n`` ``AddOrder`` calls, then restart (in a
    thread). It watches WHMCS, not the write-backs: at zero latency the pipeline settles a few
    hundred Orders within one poll of Salesforce, and a kill triggered by write-backs would
    land after the run. ``at["add_orders"]``: the run's ``AddOrder`` calls when it landed;
    ``at["error"]``: what the thread raised (a restart that failed), for the caller to raise."""
    start = p.whmcs.calls().get("AddOrder", 0)

    def run() -> None:
        try:
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                made = p.whmcs.calls().get("AddOrder", 0) - start
                if made >= n // 2:
                    kill()
                    at["add_orders"] = p.whmcs.calls().get("AddOrder", 0) - start
                    time.sleep(1.0)
                    restart()
                    return
                time.sleep(0.005)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            at["error"] = exc
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _settled_worker(p: Pipeline, *, below: float = 0.05, timeout: float = 300.0) -> float:
    """Until a restarted worker's first sweep (a full scan of its tables: the whole bench's
    Orders, ``WORKER_SWEEP_INTERVAL_S`` after it started) has run and it uses less than
    ``below`` of a core over a second — neither may overlap the next run; the seconds it
    took. The sweep is seen in the worker's log since its last start."""
    from bench.cpu import cpu_seconds

    t0 = deadline = time.monotonic()
    deadline += timeout
    path = p.dir / "logs" / "worker.log"
    while time.monotonic() < deadline:
        with path.open("rb") as f:  # the tail: the log holds every Order of the bench
            f.seek(max(0, path.stat().st_size - 4_000_000))
            since_start = f.read().decode(errors="replace").rsplit("=== start", 1)[-1]
        if "sweep: full scan" in since_start:
            break
        time.sleep(0.5)
    while time.monotonic() < deadline:
        pid = p.procs["worker"].pid
        before = cpu_seconds(pid)
        time.sleep(1.0)
        after = cpu_seconds(pid)
        if before is not None and after is not None and after - before < below:
            break
    return time.monotonic() - t0


def restart_settled_worker(p: Pipeline) -> float:
    """Stop the worker, start it again (with the pipeline's settings: a per-start override
    is gone) and wait until it owns partitions and its first sweep has settled
    (:func:`_settled_worker`); the seconds the wait for the sweep took."""
    p.stop("worker")
    _restart_worker(p)
    return _settled_worker(p)


def _run(p: Pipeline, n: int, latency_ms: int, kill: Any = None, restart: Any = None,
         settle_s: float = 900) -> dict[str, Any]:
    """Approve ``n`` Orders and wait (at most ``settle_s``) for every write-back; with
    ``kill``, SIGKILL midway (a restart that fails raises here). Without one, a run that
    does not finish raises PhaseIncomplete: its figures would measure part of the work.
    ``orders_per_s``: Orders written back per second from the first approval to the last
    write-back, both on the Salesforce clock (:func:`bench.harness.settle_span_s`).
    ``missing``: Orders never written back."""
    _latency(p, latency_ms)
    sf0, wh0 = _counters(p)
    at: dict[str, Any] = {}
    killer = _kill_midway(p, n, kill, restart, at) if kill else None
    ids = p.sf.approve(n)
    t0 = time.monotonic()
    try:
        rows = p.wait_settled(ids, timeout=settle_s, poll=0.5)
        if killer is not None:
            killer.join(120)
            rows = p.wait_settled(ids, timeout=max(0.0, settle_s - (time.monotonic() - t0)),
                                  poll=0.5)
    finally:
        p.whmcs.clear_faults()
    if "error" in at:
        raise at["error"]
    if kill is None:
        _all_provisioned(f"side by side, {latency_ms} ms per WHMCS call", ids, rows)
    else:  # Orders never written back are the figure (missing); a Failed one is not
        _all_provisioned(f"side by side with a kill, {latency_ms} ms per WHMCS call",
                         [oid for oid in ids if rows.get(oid, {}).get(
                             "Activation_Status__c") in ("Provisioned", "Failed")], rows)
    sf1, wh1 = _counters(p)
    missing = sum(1 for oid in ids if rows.get(oid, {}).get("Activation_Status__c")
                  not in ("Provisioned", "Failed"))
    seconds, written = settle_span_s(p, ids, f"side by side, {latency_ms} ms")
    return {"orders": n, "orders_per_s": written / seconds if seconds > 0 else 0.0,
            "seconds": seconds, "sf_calls_per_order": (sf1 - sf0) / n,
            "whmcs_calls_per_order": (wh1 - wh0) / n,
            "duplicates": p.invariants(ids)["duplicates"], "missing": missing,
            "add_orders_at_kill": at.get("add_orders")}


def _worker_assigned(p: Pipeline, timeout: float = 120.0) -> None:
    """Until the worker owns partitions again (after a SIGKILL the group waits out the dead
    member's session before it reassigns them)."""
    import json
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception), urllib.request.urlopen(  # noqa: S310 - local
                f"http://127.0.0.1:{p.ports['worker']}/readyz", timeout=2) as resp:
            if json.loads(resp.read()).get("assigned_partitions"):
                return
        time.sleep(0.5)
    raise RuntimeError("the worker owns no partition")


def _restart_worker(p: Pipeline) -> None:
    p.start("worker")
    _worker_assigned(p)


def run_pipeline(p: Pipeline, n: int, latency_ms: int, *, settle: bool = True
                 ) -> dict[str, Any]:
    """A clean run (Orders/s, calls per Order), then one with the worker SIGKILLed midway
    (duplicates); ``settle``: then wait out the restarted worker's recovery and first sweep
    (a run follows)."""
    _worker_assigned(p)
    clean = _run(p, n, latency_ms)
    killed = _run(p, n, latency_ms, lambda: p.kill("worker"), lambda: _restart_worker(p))
    _worker_assigned(p)
    settled_s = _settled_worker(p) if settle else None
    return {**clean, "duplicates": killed["duplicates"], "missing": killed["missing"],
            "orders_per_s_with_a_kill": killed["orders_per_s"],
            "add_orders_at_kill": killed["add_orders_at_kill"], "settle_after_kill_s": settled_s}


class _Baseline:
    """``python -m bench.baseline run`` as a subprocess of the pipeline's environment; its
    group starts at the requests topic's end (committed before it first starts)."""

    def __init__(self, p: Pipeline) -> None:
        from confluent_kafka import Consumer, TopicPartition

        self.p = p
        self.proc: subprocess.Popen[bytes] | None = None
        topic = p.kafka.requests
        c = Consumer(p.client_config(**{"group.id": p.kafka.topic("baseline"),
                                        "enable.auto.commit": False}))
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        ends = [TopicPartition(topic, x, c.get_watermark_offsets(TopicPartition(topic, x),
                                                                   timeout=10)[1])
                for x in parts]
        c.commit(offsets=ends, asynchronous=False)
        c.close()

    def start(self) -> None:
        env = self.p.env("baseline")
        path = self.p.dir / "logs" / "baseline.log"
        seen = path.read_text(errors="replace").count("ready") if path.exists() else 0
        log = open(path, "ab")  # noqa: SIM115 - the child's
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.baseline", "run"],
                                     cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        log.close()
        deadline = time.monotonic() + 60
        while path.read_text(errors="replace").count("ready") <= seen:  # this one's
            assert time.monotonic() < deadline, "the baseline never got its partitions"
            assert self.proc.poll() is None, f"the baseline exited; see {path}"
            time.sleep(0.2)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)


def run_baseline(p: Pipeline, n: int, latency_ms: int) -> dict[str, Any]:
    """As :func:`run_pipeline`, with ``bench.baseline`` SIGKILLed midway."""
    baseline = _Baseline(p)
    baseline.start()
    try:
        clean = _run(p, n, latency_ms)
        # an event auto-committed before its write-back is never redelivered: such Orders
        # stay Activating for good, so the wait is bounded
        killed = _run(p, n, latency_ms, baseline.kill, baseline.start, settle_s=150)
    finally:
        baseline.stop()
    return {**clean, "duplicates": killed["duplicates"], "missing": killed["missing"],
            "orders_per_s_with_a_kill": killed["orders_per_s"],
            "add_orders_at_kill": killed["add_orders_at_kill"]}


def compare(p: Pipeline, *, n_fast: int = 300, n_slow_baseline: int = 60,
            n_slow_pipeline: int = 300) -> dict[str, Any]:
    """Both designs at 0 and 150 ms per WHMCS call; the baseline runs with the pipeline's
    worker and sink stopped (the same requests topic, the same sandboxes). The worker's
    first sweep is waited out before the first run (run_pipeline waits out the restarted
    worker's after its kill): a full scan of the bench's tables, it must not land in one."""
    out: dict[str, Any] = {"pipeline": {}, "baseline": {}}
    _worker_assigned(p)
    _settled_worker(p)
    for latency, n in ((0, n_fast), (150, n_slow_pipeline)):
        # the worker stops after the last run: no need to wait for its sweep there
        out["pipeline"][f"{latency}ms"] = run = run_pipeline(p, n, latency,
                                                             settle=latency == 0)
        print(f"  pipeline, {latency} ms per WHMCS call: {run}", flush=True)
    p.stop("worker")
    p.stop("sink")
    try:
        for latency, n in ((0, n_fast), (150, n_slow_baseline)):
            out["baseline"][f"{latency}ms"] = run = run_baseline(p, n, latency)
            print(f"  seed's design, {latency} ms per WHMCS call: {run}", flush=True)
    finally:
        p.start("sink")
        p.start("worker")
    return out


def table(result: dict[str, Any]) -> list[str]:
    """The side-by-side table (markdown) for the README."""
    rows = [("Orders/s", "orders_per_s", "{:.1f}"),
            ("Salesforce calls per Order", "sf_calls_per_order", "{:.3f}"),
            ("WHMCS calls per Order", "whmcs_calls_per_order", "{:.2f}"),
            ("duplicate WHMCS orders after one SIGKILL", "duplicates", "{}"),
            ("Orders never written back after one SIGKILL", "missing", "{}"),
            ("`AddOrder` calls of that run when the SIGKILL landed", "add_orders_at_kill",
             "{}")]
    lines = ["| measure | pipeline, 0 ms | seed's design, 0 ms | pipeline, 150 ms | "
             "seed's design, 150 ms |", "|---|---|---|---|---|"]
    for name, key, fmt in rows:
        cells = [_cell(result[design][lat], key, fmt) for lat in ("0ms", "150ms")
                 for design in ("pipeline", "baseline")]
        lines.append(f"| {name} | {cells[0]} | {cells[1]} | {cells[2]} | {cells[3]} |")
    return lines


def _cell(run: dict[str, Any], key: str, fmt: str) -> str:
    if key == "add_orders_at_kill":  # where the kill landed: mid-run only if below the run's
        value = run.get(key)
        return "no kill" if value is None else f"{value} of {run['orders']}"
    return fmt.format(run[key])


def cpu_pids(p: Pipeline) -> dict[str, int | None]:
    """The processes whose CPU ``make bench`` reports per Order."""
    pids: dict[str, int | None] = {name: proc.pid for name, proc in p.procs.items()}
    pids["salesforce_sandbox"] = p.sf.proc.pid if p.sf.proc else None
    pids["whmcs_sandbox"] = p.whmcs.process.pid if p.whmcs.process else None
    pids["broker"] = p.broker.running_pid() if p.broker else None
    return pids

