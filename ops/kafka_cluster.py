"""A replicated Kafka cluster of N local KRaft nodes, built from :class:`ops.kafka_local.LocalBroker`.

Each node is a ``LocalBroker`` (same jars, same start/stop/kill, its own home, ports and pid
file) running as a **combined broker + controller**, and the N controllers form one static
quorum (``controller.quorum.voters`` lists all of them). Why combined nodes rather than one
controller plus N brokers: every node is then alike, so a chaos run may kill or pause *any*
node — the leader of a partition, a group coordinator or the active controller — and the
cluster survives it (a majority of the 3 voters remains); a lone controller would be a
single point of failure chaos could not touch, and a fourth JVM on a 2-core machine.

Replication as production runs it: every topic and the internal ones (``__consumer_offsets``,
``__transaction_state``) with ``replication_factor`` = N (at most 3) and
``min.insync.replicas`` = N - 1 (2 for three nodes), so an ``acks=all`` write survives one
node and a second lost node makes producers wait (``NOT_ENOUGH_REPLICAS``) instead of
losing data. The single-node defaults of ``LocalBroker`` are overridden key by key on top of
its own properties (:func:`override_properties`), so whatever ``LocalBroker`` learns (a TLS
listener, say) every node has too.

Command line: ``python -m ops.kafka_local start|stop|status --nodes 3`` (node ``i`` listens
on ``port + 2(i-1)``, its controller on ``controller_port + 2(i-1)``: 9092/9093, 9094/9095,
9096/9097 by default).
"""

from __future__ import annotations

import base64
import contextlib
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ops.kafka_local import DEFAULT_STATE, BrokerError, LocalBroker, free_port


def override_properties(text: str, overrides: dict[str, str]) -> str:
    """``key=value`` lines of ``text`` with the values of ``overrides``; missing keys appended."""
    lines, seen = [], set()
    for line in text.splitlines():
        key = line.split("=", 1)[0].strip() if "=" in line and not line.startswith("#") else ""
        if key in overrides:
            seen.add(key)
            line = f"{key}={overrides[key]}"
        lines.append(line)
    lines += [f"{k}={v}" for k, v in overrides.items() if k not in seen]
    return "\n".join(lines).rstrip("\n") + "\n"


@dataclass
class ClusterNode(LocalBroker):
    """One node of a :class:`LocalCluster`: its node id, the shared quorum and cluster id."""

    node_id: int = 1
    voters: str = ""
    cluster_id: str = ""
    replication_factor: int = 3
    min_insync_replicas: int = 2

    def _properties(self) -> str:
        rf, isr = str(self.replication_factor), str(self.min_insync_replicas)
        return override_properties(super()._properties(), {
            "node.id": str(self.node_id),
            "controller.quorum.voters": self.voters,
            "offsets.topic.replication.factor": rf,
            "transaction.state.log.replication.factor": rf,
            "transaction.state.log.min.isr": isr,
            "default.replication.factor": rf,
            "min.insync.replicas": isr,
        })

    def _new_cluster_id(self) -> str:
        return self.cluster_id  # every node of the cluster is formatted with the same id

    def _moved(self, running: int) -> str:
        return (f"node {self.node_id} runs on {running} ({self.port} asked): stop the cluster "
                "first (python -m ops.kafka_local stop --nodes N)")


class LocalCluster:
    """N :class:`ClusterNode` under ``home/node-<id>``; node ids 1..N."""

    def __init__(self, home: Path, *, nodes: int = 3, ports: list[int] | None = None,
                 controller_ports: list[int] | None = None, host: str = "127.0.0.1",
                 state_dir: Path = DEFAULT_STATE,
                 extra_listeners: list[dict[str, tuple[int, int]]] | None = None) -> None:
        if not 1 <= nodes <= 9:
            raise BrokerError(f"a local cluster has 1 to 9 nodes, not {nodes}")
        self.home = Path(home)
        ports = ports or [free_port() for _ in range(nodes)]
        controller_ports = controller_ports or [free_port() for _ in range(nodes)]
        voters = ",".join(f"{i + 1}@{host}:{p}" for i, p in enumerate(controller_ports))
        self.replication_factor = min(nodes, 3)
        self.min_insync_replicas = max(1, self.replication_factor - 1)
        self.nodes = [ClusterNode(self.home / f"node-{i + 1}", port=ports[i],
                                  controller_port=controller_ports[i], host=host,
                                  state_dir=state_dir, node_id=i + 1, voters=voters,
                                  cluster_id=self._cluster_id(),
                                  replication_factor=self.replication_factor,
                                  min_insync_replicas=self.min_insync_replicas,
                                  extra_listeners=(extra_listeners or [{}] * nodes)[i])
                      for i in range(nodes)]

    def _cluster_id(self) -> str:
        """The id all nodes are formatted with, kept in ``home/cluster.id`` across restarts."""
        path = self.home / "cluster.id"
        if path.is_file():
            return path.read_text().strip()
        self.home.mkdir(parents=True, exist_ok=True)
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        path.write_text(cluster_id)
        return cluster_id

    @property
    def bootstrap(self) -> str:
        return ",".join(n.bootstrap for n in self.nodes)

    def node(self, node_id: int) -> ClusterNode:
        return self.nodes[node_id - 1]

    def running(self) -> dict[int, int | None]:
        """Node id → pid (None when the node is not running)."""
        return {n.node_id: n.running_pid() for n in self.nodes}

    # -- lifecycle ----------------------------------------------------------------------

    def start(self, *, timeout: float = 120.0) -> LocalCluster:
        """Start every node at once (none is ready before a majority of the quorum is up),
        then wait until all of them are registered brokers. Idempotent. On failure the nodes
        this call started are stopped; those that ran before it are left running."""
        starting = [n for n in self.nodes if n.running_pid() is None]
        try:
            with ThreadPoolExecutor(len(self.nodes)) as pool:
                for started in [pool.submit(n.start, timeout=timeout) for n in self.nodes]:
                    started.result()
            self.wait_ready(timeout=timeout)
        except BaseException:
            self.stop(grace=5.0, nodes=starting)
            raise
        return self

    def wait_ready(self, *, timeout: float = 120.0, nodes: int | None = None) -> None:
        """Wait until ``nodes`` (default: all) brokers appear in the cluster's metadata."""
        want = len(self.nodes) if nodes is None else nodes
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                seen = len(self._admin().list_topics(timeout=3).brokers)
                if seen >= want:
                    return
            time.sleep(0.25)
        raise BrokerError(f"cluster {self.bootstrap}: {seen} of {want} brokers after "
                          f"{timeout:.0f}s; see {self.home}/node-*/logs/server.log")

    def stop(self, *, grace: float = 20.0, nodes: list[ClusterNode] | None = None) -> bool:
        """Stop every node (or ``nodes``) at once (one by one, the last ones would wait for a
        quorum that is gone); SIGKILL after ``grace``. True if any ran."""
        nodes = self.nodes if nodes is None else nodes
        if not nodes:
            return False
        with ThreadPoolExecutor(len(nodes)) as pool:
            return any(list(pool.map(lambda n: n.stop(grace=grace), nodes)))

    def restart_node(self, node_id: int, *, timeout: float = 120.0) -> None:
        """Start a killed node again and wait until the cluster lists it."""
        self.node(node_id).start(timeout=timeout)
        self.wait_ready(timeout=timeout)

    # -- who leads what (asked at the moment, for chaos) ----------------------------------

    def _admin(self) -> Any:
        from confluent_kafka.admin import AdminClient

        return AdminClient({"bootstrap.servers": self.bootstrap, "socket.timeout.ms": 3000})

    def leader(self, topic: str, partition: int, *, timeout: float = 10.0) -> int | None:
        """Node id leading ``topic``/``partition`` now (None: unknown or leaderless)."""
        md = self._admin().list_topics(topic, timeout=timeout)
        meta = md.topics.get(topic)
        if meta is None or meta.error is not None or partition not in meta.partitions:
            return None
        leader = meta.partitions[partition].leader
        return leader if leader > 0 else None

    def partitions(self, topic: str, *, timeout: float = 10.0) -> list[int]:
        meta = self._admin().list_topics(topic, timeout=timeout).topics.get(topic)
        return sorted(meta.partitions) if meta is not None and meta.error is None else []

    def coordinator(self, group: str, *, timeout: float = 10.0) -> int | None:
        """Node id of the consumer group's coordinator now (None: unknown)."""
        admin = self._admin()  # held until the answer: a collected client drops its futures
        future = admin.describe_consumer_groups([group], request_timeout=timeout)[group]
        try:
            node = future.result(timeout=timeout).coordinator
        except Exception:  # noqa: BLE001 - an unknown coordinator is an answer here
            return None
        return node.id if node is not None and node.id > 0 else None


def cluster_command(args: Any) -> int:
    """``python -m ops.kafka_local start|stop|status --nodes N`` (see :mod:`ops.kafka_local`)."""
    import sys

    from ops.kafka_local import KAFKA_VERSION, ensure_jars

    home = args.dir
    if home == DEFAULT_STATE / "kafka" / "broker":  # the default belongs to the single node
        home = DEFAULT_STATE / "kafka" / "cluster"
    offsets = [2 * i for i in range(args.nodes)]
    cluster = LocalCluster(home, nodes=args.nodes, ports=[args.port + o for o in offsets],
                           controller_ports=[args.controller_port + o for o in offsets])
    try:
        if args.command == "jars":
            print(f"kafka jars: {ensure_jars()}")
        elif args.command == "start":
            already = all(cluster.running().values())
            cluster.start()
            print(f"kafka {KAFKA_VERSION}: {args.nodes}-node cluster "
                  f"{'already running' if already else 'started'} on {cluster.bootstrap} "
                  f"(replication factor {cluster.replication_factor}, min.insync.replicas "
                  f"{cluster.min_insync_replicas}, logs {home}/node-*/logs)")
            # the broker defaults cover Kafka's internal topics only: the pipeline declares
            # its own topics' replication (KAFKA_REPLICATION_FACTOR, default 1)
            print("the pipeline's topics (make topics, make up) take these settings: "
                  f"KAFKA_BOOTSTRAP_SERVERS={cluster.bootstrap} "
                  f"KAFKA_REPLICATION_FACTOR={cluster.replication_factor} "
                  f"KAFKA_MIN_INSYNC_REPLICAS={cluster.min_insync_replicas}")
        elif args.command == "stop":
            print("kafka cluster: stopped" if cluster.stop() else "kafka cluster: not running")
        else:
            pids = cluster.running()
            for node_id, pid in pids.items():
                node = cluster.node(node_id)
                print(f"node {node_id}: " + (f"running on {node.bootstrap} (pid {pid})"
                                              if pid else "not running"))
            return 0 if all(pids.values()) else 3
    except BrokerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
