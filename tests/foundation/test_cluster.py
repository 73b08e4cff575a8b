"""The replicated local cluster (``ops.kafka_cluster``): three KRaft nodes survive a leader's death."""

from __future__ import annotations

import time

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient

from common.kafka import TopicSpec, create_topics
from ops.kafka_cluster import LocalCluster, override_properties
from tests.conftest import wait_for


def test_override_properties_replaces_in_place_and_appends_the_rest():
    text = "# comment=1\nnode.id=1\nmin.insync.replicas=1\nlisteners=PLAINTEXT://h:1\n"
    out = override_properties(text, {"node.id": "3", "min.insync.replicas": "2",
                                     "extra.key": "x"})
    assert out.splitlines() == ["# comment=1", "node.id=3", "min.insync.replicas=2",
                                "listeners=PLAINTEXT://h:1", "extra.key=x"]


def _produce(bootstrap: str, topic: str, values: list[str]) -> None:
    """acks=all + idempotence, as every producer of the project; every record must land."""
    errors: list[str] = []
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all",
                         "enable.idempotence": True, "message.timeout.ms": 60000})
    for v in values:
        producer.produce(topic, key=b"k", value=v.encode(), partition=0,
                         on_delivery=lambda err, _m: errors.append(str(err)) if err else None)
    assert producer.flush(90) == 0
    assert errors == []


def test_a_cluster_started_by_hand_says_what_the_pipeline_needs(tmp_path, monkeypatch, capsys):
    """The broker defaults (replication 3, min ISR 2) cover only Kafka's internal topics: the
    pipeline declares its own topics with KAFKA_REPLICATION_FACTOR (default 1), so `make
    topics` against a hand-started cluster made unreplicated topics unless told."""
    import types

    from common.settings import KafkaSettings
    from ops import kafka_cluster

    monkeypatch.setattr(LocalCluster, "start", lambda self, **kw: self)
    monkeypatch.setattr(LocalCluster, "running", lambda self: {1: None, 2: None, 3: None})
    args = types.SimpleNamespace(dir=tmp_path / "cluster", nodes=3, port=19092,
                                 controller_port=19093, command="start")
    assert kafka_cluster.cluster_command(args) == 0
    line = capsys.readouterr().out.splitlines()[-1]
    env = dict(word.split("=", 1) for word in line.split() if "=" in word)
    kafka = KafkaSettings.load(env)
    assert (kafka.replication_factor, kafka.min_insync_replicas) == (3, 2), line
    assert kafka.bootstrap_servers == "127.0.0.1:19092,127.0.0.1:19094,127.0.0.1:19096", line


@pytest.mark.broker
@pytest.mark.slow
def test_three_nodes_keep_producing_and_consuming_when_a_leader_dies(tmp_path):
    cluster = LocalCluster(tmp_path / "cluster", nodes=3)
    try:
        cluster.start(timeout=120)
        assert (cluster.replication_factor, cluster.min_insync_replicas) == (3, 2)
        admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
        topic = "replicated"
        # the project's own create (a fresh client's first request may be retired with its
        # bootstrap connection: _DESTROY_BROKER, tried again as in production — and when the
        # first attempt had reached the controller, the retry finds the topic existing)
        created, existing = create_topics(
            admin, [TopicSpec(topic, 3, 3, {"min.insync.replicas": "2"})], timeout=60)
        assert created + existing == [topic]
        first = [f"before-{i}" for i in range(50)]
        _produce(cluster.bootstrap, topic, first)
        leader = wait_for("a leader for partition 0", lambda: cluster.leader(topic, 0))

        cluster.node(leader).kill()  # SIGKILL the leader of the partition we write to
        assert cluster.running()[leader] is None
        moved = wait_for("a new leader", lambda: (lead := cluster.leader(topic, 0)) not in
                      (None, leader) and lead)
        second = [f"after-{i}" for i in range(50)]
        _produce(cluster.bootstrap, topic, second)  # 2 replicas left = min.insync.replicas

        consumer = Consumer({"bootstrap.servers": cluster.bootstrap, "group.id": "g",
                             "auto.offset.reset": "earliest", "enable.auto.commit": False})
        consumer.subscribe([topic])
        got: list[str] = []
        try:
            deadline = time.monotonic() + 60
            while len(got) < 100 and time.monotonic() < deadline:
                msg = consumer.poll(0.5)
                if msg is not None and not msg.error():
                    got.append(msg.value().decode())
            consumer.commit(asynchronous=False)  # the group's offsets live in the cluster
        finally:
            consumer.close()
        assert got == first + second  # one partition: in order, no loss, no duplicate
        assert moved != leader
        coordinator = cluster.coordinator("g")  # what chaos aims a "coordinator" fault at
        assert coordinator in {1, 2, 3} - {leader}, coordinator

        md = admin.list_topics(timeout=10)
        for name in (topic, "__consumer_offsets"):
            replicas = {len(p.replicas) for p in md.topics[name].partitions.values()}
            assert replicas == {3}, (name, replicas)
    finally:
        cluster.stop(grace=10)
    assert not any(cluster.running().values())
