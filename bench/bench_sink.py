"""Benchmark of the Salesforce write-back sink: N outcomes → API calls, time, correctness.

Starts a local broker (or uses ``--bootstrap``) and the Salesforce sandbox, seeds N Orders
with Opportunities, produces one outcome per Order, runs ``python -m sinks run
--exit-when-idle`` as a subprocess and prints:

* outcomes, records written (Order + Opportunity updates asked for), the sandbox's counted
  ``composite/sobjects`` calls (the acceptance bound: ≤ 110 for 10,000 outcomes), records
  per call, token logins;
* wall time of the sink process (start-up included) and outcomes per second;
* how many records in the sandbox differ from the expected state (must be 0).

Usage::

    .venv/bin/python bench/bench_sink.py [--outcomes 10000] [--mix provisioned|mixed]
                                         [--bootstrap HOST:PORT] [--latency-ms 0]

``--mix provisioned`` (default) is the worst case for calls: every outcome updates two
records. ``mixed`` is 80 % Provisioned, 10 % Failed, 5 % Skipped, 5 % Duplicate.
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common.kafka import ensure_topics  # noqa: E402
from common.settings import KafkaSettings, SinkSettings  # noqa: E402
from sandbox.salesforce.harness import running_sandbox  # noqa: E402
from tests.sinks.helpers import committed_total, outcome, produce  # noqa: E402
from tests.sinks.sandbox_support import expected_state, mismatches, sink_env  # noqa: E402

MIXED = ["Provisioned"] * 16 + ["Failed"] * 2 + ["Skipped", "Duplicate"]


def run(bootstrap: str, args: argparse.Namespace, work: Path) -> int:
    kafka = KafkaSettings.load({}, bootstrap_servers=bootstrap, partitions=6,
                               topic_prefix=f"bench-{uuid.uuid4().hex[:8]}.")
    ensure_topics(kafka)
    with running_sandbox(work / "sf", daily_limit=5_000_000) as sf:
        t0 = time.monotonic()
        orders: list[dict[str, Any]] = []
        while len(orders) < args.outcomes:
            batch = min(2000, args.outcomes - len(orders))
            orders.extend(sf.seed(accounts=50, orders=batch, broken_every=0)["orders"])
        print(f"seeded {len(orders)} orders in {time.monotonic() - t0:.1f}s")
        statuses = ["Provisioned"] if args.mix == "provisioned" else MIXED
        records = [outcome(o["order_id"], statuses[i % len(statuses)],
                           opportunity_id=o["opportunity_id"], n=i)
                   for i, o in enumerate(orders)]
        produce(kafka, records)
        sf.reset_counters()
        if args.latency_ms:
            sf.set_faults(rest_latency_ms=args.latency_ms)
        env = sink_env(kafka, sf.env(), SINK_LINGER_S="0.5", LOG_LEVEL="WARNING")
        log = work / "sink.log"
        start = time.monotonic()
        with open(log, "ab") as out:
            proc = subprocess.run([sys.executable, "-m", "sinks", "run", "--exit-when-idle",
                                   "--timeout", "600"], cwd=ROOT, env=env, stdout=out,
                                  stderr=subprocess.STDOUT, check=False)
        elapsed = time.monotonic() - start
        calls = sf.counters()["calls"]
        state = expected_state(records)
        wrong = mismatches(sf, state)
        committed = committed_total(kafka, SinkSettings.load({}))
    composite = calls.get("composite_sobjects", 0)
    bound = 110 if args.outcomes == 10_000 else math.ceil(len(state) / 200) + 10
    print(f"sink exit code            {proc.returncode}")
    print(f"outcomes                  {len(records)} ({args.mix})")
    print(f"records to write          {len(state)}")
    print(f"composite/sobjects calls  {composite}  (floor {math.ceil(len(state) / 200)}, "
          f"bound {bound})")
    print(f"records per call          {len(state) / max(1, composite):.1f}")
    print(f"other API calls           { {k: v for k, v in calls.items() if k != 'composite_sobjects'} }")
    print(f"sink wall time            {elapsed:.1f}s (process start-up included)")
    print(f"outcomes per second       {len(records) / elapsed:.0f}")
    print(f"offsets committed         {committed} of {len(records)}")
    print(f"records wrong in sandbox  {len(wrong)}")
    for line in wrong[:10]:
        print("   ", line)
    ok = proc.returncode == 0 and not wrong and composite <= bound and committed == len(records)
    print("RESULT", "ok" if ok else "FAILED", f"(log: {log})")
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outcomes", type=int, default=10_000)
    parser.add_argument("--mix", choices=("provisioned", "mixed"), default="provisioned")
    parser.add_argument("--bootstrap", default="", help="use this broker instead of a local one")
    parser.add_argument("--latency-ms", type=float, default=0.0,
                        help="sandbox REST latency per call (a real org answers in ~100-300 ms)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-sink-"))
    if args.bootstrap:
        return run(args.bootstrap, args, work)
    from ops.kafka_local import LocalBroker, free_port
    broker = LocalBroker(work / "kafka", port=free_port(), controller_port=free_port())
    broker.start(timeout=120)
    try:
        return run(broker.bootstrap, args, work)
    finally:
        broker.stop()


if __name__ == "__main__":
    sys.exit(main())
