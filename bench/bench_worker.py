"""Benchmark of the provisioning worker: a burst of N approved Orders through one worker.

Starts a local Kafka broker, the Salesforce and WHMCS sandboxes and ``python -m streams
worker`` as subprocesses, waits until the worker owns its partitions, then writes N request
events at once (as the connector would: key = Order id, murmur2_random) and reads the
outcomes. Exits 1 when fewer outcomes than events arrived (a timeout, or the worker died).
Prints:

* orders/s — N / (last outcome's ``completed_at`` − burst start);
* p50/p99 processing latency — ``completed_at`` − the event's ``CreatedDate`` (the burst's
  queueing is included: this is what an Order approved in the burst waits);
* WHMCS calls per order (sandbox counters; 2.00 = AddOrder + AcceptOrder, fault-free);
* Salesforce guard queries per order (the worker's ``/healthz`` ``guard_queries``, and the
  Salesforce sandbox's query counter for comparison).

Usage: ``.venv/bin/python bench/bench_worker.py [--orders 1000] [--max-in-flight 1000]
[--whmcs-latency-ms 0] [--partitions 6]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common.kafka import ensure_topics  # noqa: E402
from common.settings import KafkaSettings  # noqa: E402
from ops.kafka_local import LocalBroker, free_port  # noqa: E402
from sandbox.salesforce.harness import running_sandbox  # noqa: E402
from sandbox.whmcs.harness import whmcs_sandbox  # noqa: E402
from tests.streams.support import (  # noqa: E402
    Reader,
    outcomes,
    produce,
    request,
    wait_for_log,
    worker_env,
    worker_process,
)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--orders", type=int, default=1000)
    parser.add_argument("--max-in-flight", type=int, default=1000)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--whmcs-latency-ms", type=float, default=0.0)
    parser.add_argument("--parallelism", type=int, default=16)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-worker-"))
    broker = LocalBroker(work / "kafka", port=free_port(), controller_port=free_port())
    broker.start(timeout=120)
    try:
        with running_sandbox(work / "sf") as sf, \
                whmcs_sandbox(work / "whmcs", accounts=200) as wh:
            return run(args, work, broker.bootstrap, sf, wh)
    finally:
        broker.stop()


def run(args: argparse.Namespace, work: Path, bootstrap: str, sf, wh) -> int:
    kafka = KafkaSettings.load({}, bootstrap_servers=bootstrap, topic_prefix="bench.",
                               partitions=args.partitions)
    ensure_topics(kafka)
    seeded = sf.seed(accounts=150, orders=args.orders, broken_every=0)["orders"]
    ids = [o["order_id"] for o in seeded]
    for start in range(0, len(ids), 500):
        sf.approve(ids=ids[start:start + 500])
    if args.whmcs_latency_ms:
        wh.set_faults("*", latency_ms=args.whmcs_latency_ms)
    port = free_port()
    env = worker_env(bootstrap=bootstrap, prefix="bench.", state_dir=work,
                     sf_env=sf.env(), wh_env=wh.env(), KAFKA_PARTITIONS=str(args.partitions),
                     WORKER_STORE="rocksdb://", WORKER_MAX_IN_FLIGHT=str(args.max_in_flight),
                     WORKER_WHMCS_PARALLELISM=str(args.parallelism), WORKER_HTTP_PORT=str(port),
                     LOG_LEVEL="INFO")
    log = work / "worker.log"
    reader = Reader(bootstrap, kafka.outcomes)
    with worker_process(env, log) as proc:
        if not wait_for_log(log, "requests partitions assigned: [", 90):
            print("worker did not start; see", log)
            return 1
        time.sleep(2)
        sf_before = sf.counters()
        wh.reset_counters()
        events: list[dict[str, Any] | bytes] = [request(i) for i in ids]
        t0 = time.time()
        produce(bootstrap, kafka.requests, events)
        reader.poll_until(lambda r: len(r) >= len(events), timeout=600,
                          alive=lambda: proc.poll() is None)
        got = outcomes(reader.records)
        if len(got) < len(events):  # timed out, or the worker died: no figures over a part
            state = "alive" if proc.poll() is None else f"exited with {proc.returncode}"
            print(f"FAILED: {len(got)} outcomes of {len(events)} events (the worker "
                  f"{state}); see {log}")
            return 1
        health = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz",
                                                   timeout=5).read())
        sf_after = sf.counters()
    statuses = {s: sum(1 for o in got if o["status"] == s) for s in {o["status"] for o in got}}
    done = max(o["completed_at"].timestamp() for o in got)
    latency = [(o["completed_at"] - o["requested_at"]).total_seconds() for o in got]
    calls = wh.counters()["calls"]
    whmcs_calls = sum(calls.get(a, 0) for a in ("AddOrder", "AcceptOrder", "GetOrders",
                                               "GetClientsProducts"))
    provisioned = statuses.get("Provisioned", 0)
    print(f"orders={len(events)} outcomes={len(got)} statuses={statuses}")
    print(f"throughput: {len(got) / (done - t0):.1f} orders/s "
          f"(burst of {len(events)}, in flight {args.max_in_flight}, partitions {args.partitions}, "
          f"WHMCS parallelism {args.parallelism}, WHMCS latency {args.whmcs_latency_ms} ms)")
    print(f"latency (CreatedDate -> outcome): p50 {statistics.median(latency) * 1000:.0f} ms, "
          f"p99 {percentile(latency, 0.99) * 1000:.0f} ms")
    print(f"WHMCS calls per provisioned order: {whmcs_calls / max(provisioned, 1):.2f} "
          f"({dict(calls)})")
    print(f"Salesforce guard queries per order: {health['guard_queries'] / len(events):.4f} "
          f"({health['guard_queries']} queries)")
    print(f"Salesforce sandbox calls during the run: "
          f"{json.dumps(_delta(sf_before, sf_after))}")
    print(f"duplicate WHMCS orders: {len(wh.duplicates())}")
    return 0


def _delta(before: dict, after: dict) -> dict:
    b, a = before.get("calls", before), after.get("calls", after)
    if not isinstance(a, dict):
        return {}
    return {k: v - (b.get(k, 0) if isinstance(b.get(k, 0), int) else 0)
            for k, v in a.items() if isinstance(v, int)}


if __name__ == "__main__":
    sys.exit(main())
