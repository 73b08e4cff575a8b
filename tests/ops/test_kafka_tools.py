"""Kafka's own CLI tools come with `make jars` (hence `make up`) and work on our broker."""

from __future__ import annotations

import subprocess

import pytest

from ops.kafka_tools import TOOLS, ensure_tools
from tests.conftest import create_topic

pytestmark = [pytest.mark.broker]


@pytest.fixture(scope="module")
def bin_dir():
    return ensure_tools()


def tool(bin_dir, name: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(bin_dir / name), *args], capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("name", sorted(TOOLS))
def test_every_wrapper_starts_its_tool(bin_dir, name):
    assert (bin_dir / name).stat().st_mode & 0o111, name
    result = tool(bin_dir, name, "--help")
    out = result.stdout + result.stderr
    # Kafka's tools print their usage and exit 1 on --help; a wrong main class exits 1 too
    assert "Could not find or load main class" not in out, out
    assert "Exception" not in out, out
    assert "--bootstrap-server" in out, out  # the tool's own usage: every one takes it


def test_topics_and_consumer_groups_against_the_broker(bin_dir, kafka_bootstrap, unique_name):
    from confluent_kafka import Consumer, Producer

    topic, group = unique_name("tools"), unique_name("g")
    create_topic(kafka_bootstrap, topic, partitions=2)
    listed = tool(bin_dir, "kafka-topics", "--bootstrap-server", kafka_bootstrap, "--list")
    assert listed.returncode == 0 and topic in listed.stdout.split(), listed.stderr
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for i in range(5):
        producer.produce(topic, key=str(i).encode(), value=b"v")
    producer.flush(30)
    consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": group,
                         "auto.offset.reset": "earliest"})
    consumer.subscribe([topic])
    seen = 0
    while seen < 5:
        msg = consumer.poll(5)
        assert msg is not None, "the records did not arrive"
        seen += not msg.error()
    consumer.commit(asynchronous=False)
    consumer.close()
    described = tool(bin_dir, "kafka-consumer-groups", "--bootstrap-server", kafka_bootstrap,
                     "--describe", "--group", group)
    assert described.returncode == 0, described.stderr
    rows = [line.split() for line in described.stdout.splitlines() if topic in line]
    assert len(rows) == 2 and sum(int(r[3]) for r in rows) == 5  # CURRENT-OFFSET column
