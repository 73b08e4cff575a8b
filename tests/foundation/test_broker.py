"""The local broker is real Kafka: clients from both ecosystems and transactions work on it."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaException, Producer

from tests.conftest import create_topic

pytestmark = pytest.mark.broker


def _consume_all(bootstrap: str, topic: str, group: str, *, isolation: str = "read_committed",
                 expect: int, timeout: float = 20.0) -> list[bytes]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                         "auto.offset.reset": "earliest", "isolation.level": isolation,
                         "enable.auto.commit": False})
    consumer.subscribe([topic])
    values: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and len(values) < expect:
            msg = consumer.poll(0.2)
            if msg is None or msg.error():
                continue
            values.append(msg.value())
        # Linger a little so that records that should NOT be visible would show up.
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            msg = consumer.poll(0.1)
            if msg is not None and not msg.error():
                values.append(msg.value())
    finally:
        consumer.close()
    return values


def test_confluent_kafka_produce_consume(kafka_bootstrap, unique_name):
    topic = unique_name("pc")
    create_topic(kafka_bootstrap, topic, partitions=3)
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "enable.idempotence": True})
    for i in range(100):
        producer.produce(topic, key=f"k{i % 7}", value=f"v{i}".encode())
    assert producer.flush(10) == 0
    values = _consume_all(kafka_bootstrap, topic, unique_name("g"), expect=100)
    assert sorted(values) == sorted(f"v{i}".encode() for i in range(100))


def test_aiokafka_produce_consume(kafka_bootstrap, unique_name):
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    topic = unique_name("aio")
    create_topic(kafka_bootstrap, topic, partitions=2)

    async def run() -> list[bytes]:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
        await producer.start()
        try:
            for i in range(50):
                await producer.send_and_wait(topic, f"a{i}".encode(), key=b"k")
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=kafka_bootstrap,
                                    group_id=unique_name("g"), auto_offset_reset="earliest")
        await consumer.start()
        got: list[bytes] = []
        try:
            async with asyncio.timeout(20):
                while len(got) < 50:
                    batch = await consumer.getmany(timeout_ms=500)
                    for records in batch.values():
                        got.extend(r.value for r in records)
        finally:
            await consumer.stop()
        return got

    got = asyncio.run(run())
    assert got == [f"a{i}".encode() for i in range(50)]  # one key → one partition → in order


def test_transactions_commit_and_abort(kafka_bootstrap, unique_name):
    """read_committed sees the committed transaction only: transactions work on one node."""
    topic = unique_name("tx")
    create_topic(kafka_bootstrap, topic)
    producer = Producer({"bootstrap.servers": kafka_bootstrap,
                         "transactional.id": unique_name("txid")})
    producer.init_transactions(30)
    producer.begin_transaction()
    for i in range(10):
        producer.produce(topic, value=f"committed-{i}".encode())
    producer.commit_transaction(30)
    producer.begin_transaction()
    for i in range(10):
        producer.produce(topic, value=f"aborted-{i}".encode())
    producer.flush(10)
    producer.abort_transaction(30)

    committed = _consume_all(kafka_bootstrap, topic, unique_name("g"), expect=10)
    assert sorted(committed) == sorted(f"committed-{i}".encode() for i in range(10))
    # read_uncommitted sees the aborted records too: proof that they really were written.
    everything = _consume_all(kafka_bootstrap, topic, unique_name("g"),
                              isolation="read_uncommitted", expect=20)
    assert len(everything) == 20


def test_second_transactional_producer_fences_the_first(kafka_bootstrap, unique_name):
    topic = unique_name("fence")
    create_topic(kafka_bootstrap, topic)
    txid = unique_name("txid")
    first = Producer({"bootstrap.servers": kafka_bootstrap, "transactional.id": txid})
    first.init_transactions(30)
    second = Producer({"bootstrap.servers": kafka_bootstrap, "transactional.id": txid})
    second.init_transactions(30)
    first.begin_transaction()
    first.produce(topic, value=b"zombie")
    with pytest.raises(KafkaException) as info:
        first.commit_transaction(30)
    assert info.value.args[0].fatal() or "fenced" in str(info.value).lower()


def test_cli_start_is_idempotent_and_stop_leaves_no_process(tmp_path):
    """`make up`'s broker step twice starts one broker; stop frees the ports."""
    from ops.kafka_local import LocalBroker, free_port, port_open

    port, cport = free_port(), free_port()
    cmd = [sys.executable, "-m", "ops.kafka_local", "--dir", str(tmp_path / "b"),
           "--port", str(port), "--controller-port", str(cport)]
    root = Path(__file__).resolve().parents[2]
    broker = LocalBroker(tmp_path / "b", port, cport)
    # the first start inside the try too: one that times out or is interrupted may have
    # started the broker (in its own session), and only `stop` stops it
    try:
        first = subprocess.run([*cmd, "start"], cwd=root, capture_output=True, text=True,
                               timeout=180)
        assert first.returncode == 0, first.stderr
        pid = broker.running_pid()
        second = subprocess.run([*cmd, "start"], cwd=root, capture_output=True, text=True,
                                timeout=60)
        assert second.returncode == 0 and "already running" in second.stdout
        assert broker.running_pid() == pid
    finally:
        stop = subprocess.run([*cmd, "stop"], cwd=root, capture_output=True, text=True,
                              timeout=60)
    assert stop.returncode == 0
    assert broker.running_pid() is None
    assert not Path(f"/proc/{pid}").exists() or b"kafka.Kafka" not in Path(
        f"/proc/{pid}/cmdline").read_bytes()
    assert not port_open(port) and not port_open(cport)
