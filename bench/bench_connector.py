"""Benchmark: events/s from the Salesforce sandbox to Kafka through the source connector.

    .venv/bin/python bench/bench_connector.py [--events 10000] [--log-level INFO]

Starts a local KRaft broker and the Salesforce sandbox, seeds and approves N Orders (N
platform events stored before the connector starts), then runs ``python -m connectors run
--max-events N`` with ``SF_EVENTS_REPLAY=EARLIEST`` and prints: wall time of the process,
the streaming rate (first subscription → last commit, from the connector's JSON log),
and a check that exactly N records are in the requests topic (read_committed). Figures are
printed, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from confluent_kafka import Consumer, TopicPartition  # noqa: E402

from common.kafka import ensure_topics  # noqa: E402
from common.settings import KafkaSettings  # noqa: E402
from ops.kafka_local import LocalBroker, free_port  # noqa: E402
from sandbox.salesforce.harness import running_sandbox  # noqa: E402


def count_committed(bootstrap: str, topic: str, partitions: int) -> tuple[int, int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-count",
                         "isolation.level": "read_committed", "enable.partition.eof": True,
                         "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    total = 0
    uuids: set[bytes | str | None] = set()
    eof: set[int | None] = set()
    while len(eof) < partitions:
        msg = consumer.poll(10)
        if msg is None:
            break
        if msg.error():
            eof.add(msg.partition())
            continue
        total += 1
        uuids.add(dict(msg.headers() or [])["sfprov.event_uuid"])
    consumer.close()
    return total, len(uuids)


def ts(line: dict) -> float:
    return datetime.strptime(line["ts"], "%Y-%m-%dT%H:%M:%S.%fZ").timestamp()


def kill_rounds(env: dict[str, str], home: Path, kills: int) -> None:
    """Start the connector, SIGKILL it at a random moment once it writes, ``kills`` times."""
    rng = random.Random()
    for i in range(kills):
        log = home / f"killed-{i}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "connectors", "run"], env=env,
                                    cwd=ROOT, stdout=out, stderr=out)
        deadline = time.monotonic() + 60
        while b'"event written"' not in log.read_bytes() and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.3))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        written = log.read_bytes().count(b'"event written"')
        print(f"kill {i + 1}: SIGKILL after {written} events logged as written")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=10_000)
    ap.add_argument("--log-level", default="INFO")
    ap.add_argument("--kills", type=int, default=0,
                    help="SIGKILL the connector this many times mid-stream (random moments "
                         "after it started writing), restart it, then check exactly N")
    args = ap.parse_args()
    n = args.events
    home = Path(tempfile.mkdtemp(prefix="bench-connector-"))
    broker = LocalBroker(home / "kafka", port=free_port(), controller_port=free_port())
    broker.start(timeout=120)
    try:
        kafka = KafkaSettings.load({}, bootstrap_servers=broker.bootstrap,
                                   topic_prefix="bench.", partitions=6)
        ensure_topics(kafka)
        with running_sandbox(home / "sf") as sf:
            t0 = time.monotonic()
            sf.seed(accounts=50, orders=n, broken_every=0)
            approved = sf.approve(n)
            print(f"seeded and approved {len(approved)} orders in "
                  f"{time.monotonic() - t0:.1f}s")
            env = dict(os.environ, **sf.env(), KAFKA_BOOTSTRAP_SERVERS=broker.bootstrap,
                       KAFKA_TOPIC_PREFIX="bench.", KAFKA_PARTITIONS="6",
                       SF_EVENTS_REPLAY="EARLIEST", CONNECTOR_HTTP_PORT="0",
                       LOG_FORMAT="JSON", LOG_LEVEL=args.log_level)
            remaining = len(approved)
            if args.kills:
                kill_rounds(env, home, args.kills)
                before, _ = count_committed(broker.bootstrap, kafka.requests, 6)
                remaining -= before
                print(f"after {args.kills} kills: {before} committed; restarting for the "
                      f"remaining {remaining}")
            t1 = time.monotonic()
            proc = subprocess.run([sys.executable, "-m", "connectors", "run", "--max-events",
                                   str(remaining), "--timeout", "600"], env=env, cwd=ROOT,
                                  capture_output=True, text=True)
            wall = time.monotonic() - t1
            lines = [json.loads(x) for x in proc.stderr.splitlines() if x.startswith("{")]
            subscribed = [ts(x) for x in lines if x["msg"].startswith("subscribed")]
            written = [ts(x) for x in lines if x["msg"] == "event written"]
            stopped = [ts(x) for x in lines if x["msg"] == "stopped"]
            print(f"connector exit code {proc.returncode}; process wall time {wall:.2f}s "
                  f"({remaining / wall:,.0f} events/s including start-up)")
            if subscribed and stopped:
                span = stopped[-1] - subscribed[0]
                print(f"streaming: {span:.2f}s from first subscription to last commit → "
                      f"{remaining / span:,.0f} events/s")
            if len(written) > 1:
                print(f"first → last event written: {written[-1] - written[0]:.2f}s")
            total, unique = count_committed(broker.bootstrap, kafka.requests, 6)
            print(f"requests topic (read_committed): {total} records, {unique} distinct "
                  f"event uuids, expected {len(approved)}")
            if proc.returncode != 0:
                print(proc.stderr[-2000:])
    finally:
        broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
