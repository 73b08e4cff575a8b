"""Reading a group's committed offsets while its coordinator fails over.

``python -m bench.group_offsets [--rounds N] [--mode consumer|admin|both]``

A child process reads the committed offsets of a group in a loop, as the worker's commit
gate, the lag gauges and the reconciliation do, while this process kills (and restarts) or
pauses (SIGSTOP, 8 s) the node coordinating that group, round after round, on a local
3-node cluster. ``consumer`` reads them as the pipeline does (:func:`common.lag.committed_offsets`,
a consumer of that group that never joins it); ``admin`` with the admin API's
``list_consumer_group_offsets``, as the pipeline did before. Prints, per mode, how many
rounds the reader survived and how it ended: with librdkafka 2.16 the admin reader dies of
an assertion (exit -6, librdkafka#4605) or a NULL dereference (-11, librdkafka#5040) within
a few rounds, in a librdkafka thread (no Python traceback); the consumer lives.
``tests/foundation/test_group_offsets.py`` runs the consumer mode.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TOPIC, GROUP, PARTITIONS = "offsets", "g", 3


def _child(mode: str, bootstrap: str, progress: Path) -> None:
    """Read the group's offsets until killed; ``progress`` holds the reads that succeeded."""
    from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
    from confluent_kafka.admin import AdminClient

    from common.lag import committed_offsets, group_reader

    if mode == "admin":
        admin = AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": 3000})
    else:
        reader = group_reader(bootstrap, GROUP)
    reads = last_write = 0.0
    while True:
        try:
            if mode == "admin":
                request = ConsumerGroupTopicPartitions(
                    GROUP, [TopicPartition(TOPIC, p) for p in range(PARTITIONS)])
                admin.list_consumer_group_offsets([request], request_timeout=2)[GROUP].result(
                    timeout=2)
            else:
                committed_offsets(reader, TOPIC, range(PARTITIONS), timeout=2)
            reads += 1
        except Exception:  # noqa: BLE001, S110 - a read may fail while a node is away
            pass
        if time.monotonic() - last_write > 0.5:
            _write_progress(progress, int(reads))
            last_write = time.monotonic()
        time.sleep(0.005)


def run(mode: str, rounds: int, home: Path) -> dict[str, Any]:
    """One mode: returns rounds survived, the reader's exit (None: alive at the end) and
    its successful reads before the first fault and after the last."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition
    from confluent_kafka.admin import AdminClient

    from common.kafka import TopicSpec, create_topics
    from ops.kafka_cluster import LocalCluster

    cluster = LocalCluster(home / f"cluster-{mode}", nodes=3)
    cluster.start(timeout=120)
    progress = home / f"progress-{mode}"
    child = None
    try:
        create_topics(AdminClient({"bootstrap.servers": cluster.bootstrap}),
                      [TopicSpec(TOPIC, PARTITIONS, 3, {"min.insync.replicas": "2"})],
                      timeout=60)
        member = Consumer({"bootstrap.servers": cluster.bootstrap, "group.id": GROUP})
        # a fresh cluster may answer NOT_COORDINATOR (or "loading") while its
        # __consumer_offsets partitions find their leaders: retried, as clients do
        settled = time.monotonic() + 60
        while True:
            try:
                member.commit(offsets=[TopicPartition(TOPIC, p, 0) for p in range(PARTITIONS)],
                              asynchronous=False)
                break
            except KafkaException:
                if time.monotonic() > settled:  # NOT_COORDINATOR is not marked retriable
                    raise
                time.sleep(0.5)
        member.close()
        stderr = home / f"stderr-{mode}"
        with stderr.open("w") as err:
            child = subprocess.Popen([sys.executable, "-m", "bench.group_offsets", "--child",
                                      mode, cluster.bootstrap, str(progress)],
                                     cwd=Path(__file__).resolve().parents[1], stderr=err)
        time.sleep(3)
        before = _reads(progress)
        survived = 0
        faults: list[dict[str, Any]] = []  # per round: the node hit
        for r in range(rounds):
            coordinator = cluster.coordinator(GROUP)
            fault: dict[str, Any] = {"kind": "kill" if r % 2 == 0 else "pause",
                                     "node": coordinator}
            if coordinator is None:  # unknown now: node 1, which may not coordinate the group
                coordinator = 1
                fault.update(node=1, fallback=True)
            faults.append(fault)
            if r % 2 == 0:
                cluster.node(coordinator).kill()
                time.sleep(3)
                cluster.restart_node(coordinator)
            else:
                pid = cluster.running()[coordinator]
                assert pid is not None
                os.kill(pid, signal.SIGSTOP)
                time.sleep(8)
                os.kill(pid, signal.SIGCONT)
            time.sleep(3)
            if child.poll() is not None:
                break
            survived += 1
        at_last_fault = _reads(progress)
        time.sleep(5 if child.poll() is None else 0)
        return {"mode": mode, "rounds": rounds, "survived": survived,
                "exit": child.poll(), "reads_before_faults": before,
                "reads_after_last_fault": _reads(progress) - at_last_fault,
                "faults": faults, "fallback": any(f.get("fallback") for f in faults),
                "last_words": [line for line in stderr.read_text(errors="replace").splitlines()
                               if not line.startswith("%")][-3:]}
    finally:
        if child is not None and child.poll() is None:
            child.kill()
            child.wait()
        cluster.stop(grace=5.0)


def _write_progress(progress: Path, reads: int) -> None:
    """Replace ``progress`` whole (a temporary file renamed over it): the parent reading it
    meanwhile sees the old count or the new one, never an empty file."""
    tmp = progress.with_name(progress.name + ".tmp")
    tmp.write_text(str(reads))
    os.replace(tmp, progress)


def _reads(progress: Path) -> int:
    try:
        return int(progress.read_text() or 0)
    except (FileNotFoundError, ValueError):
        return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.group_offsets")
    ap.add_argument("--child", nargs=3, metavar=("MODE", "BOOTSTRAP", "PROGRESS"),
                    help=argparse.SUPPRESS)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--mode", choices=["consumer", "admin", "both"], default="both")
    args = ap.parse_args(argv)
    if args.child:
        _child(args.child[0], args.child[1], Path(args.child[2]))
        return 0
    modes = ["consumer", "admin"] if args.mode == "both" else [args.mode]
    with tempfile.TemporaryDirectory(prefix="sfprov-group-offsets-") as tmp:
        results = [run(mode, args.rounds, Path(tmp)) for mode in modes]
    for result in results:
        print(json.dumps(result))
    return 0 if all(r["exit"] is None for r in results if r["mode"] == "consumer") else 1


if __name__ == "__main__":
    sys.exit(main())
