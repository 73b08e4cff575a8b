"""``python -m bench.commit_gate``: what one check of the worker's checkpoint against the log
costs (step 2 of ``streams.checkpoint.Checkpoint.commit``).

Writes 50,000 records in transactions of 100 over 6 partitions (so markers sit between
them), then times 45 checks of 170 offsets per partition — about what a worker draining a
backlog asks per one-second commit — with the checkpoint's reader (``common.lag``). Prints mean,
p50 and max milliseconds. Own broker; nothing else runs.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from bench.harness import LocalBroker, free_port
from common.lag import committed_record_offsets, new_range_consumer


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="sfprov-gate-") as tmp:
        broker = LocalBroker(Path(tmp) / "kafka", port=free_port(), controller_port=free_port())
        broker.start(timeout=120)
        try:
            topic = "gate-bench"
            admin = AdminClient({"bootstrap.servers": broker.bootstrap})
            admin.create_topics([NewTopic(topic, num_partitions=6,
                                          replication_factor=1)])[topic].result(30)
            producer = Producer({"bootstrap.servers": broker.bootstrap,
                                 "transactional.id": "gate-bench", "linger.ms": 5})
            producer.init_transactions(30)
            for _ in range(500):
                producer.begin_transaction()
                for i in range(100):
                    producer.produce(topic, value=b"x" * 500, partition=i % 6)
                producer.commit_transaction(30)
            reader = new_range_consumer(broker.bootstrap, "gate-bench")
            times, base, records = [], dict.fromkeys(range(6), 0), 0
            for _ in range(45):
                end = {p: base[p] + 170 for p in base}
                started = time.perf_counter()
                got = committed_record_offsets(reader, topic,
                                               {p: (base[p], end[p]) for p in base})
                times.append((time.perf_counter() - started) * 1000)
                records += sum(len(v) for v in got.values())
                base = end
            reader.close()
        finally:
            broker.stop()
    print(f"{len(times)} checks, {records / len(times):.0f} records each: mean "
          f"{statistics.mean(times):.1f} ms, p50 {statistics.median(times):.1f} ms, "
          f"max {max(times):.1f} ms")
    return 0


if __name__ == "__main__":
    # no options: --help (or anything else) says what it does instead of starting a broker
    argparse.ArgumentParser(prog="python -m bench.commit_gate", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    raise SystemExit(main())
