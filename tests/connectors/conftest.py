"""Fixtures for connector integration tests: the Salesforce sandbox and connector processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from confluent_kafka import Consumer, TopicPartition

from common.avro import AvroSerde
from common.settings import KafkaSettings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def sf(tmp_path: Path) -> Iterator[Any]:
    """A Salesforce sandbox subprocess (keepalive every 1 s) for one test."""
    from sandbox.salesforce.harness import running_sandbox

    with running_sandbox(tmp_path / "sf", keepalive_s=1.0, idle_close_s=60) as sandbox:
        yield sandbox


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ConnectorProc:
    """``python -m connectors run`` (or a test wrapper ``module``) as a subprocess, its log
    in a file."""

    def __init__(self, env: dict[str, str], log: Path, *args: str,
                 module: str = "connectors") -> None:
        self.log = log
        self.name = env["CONNECTOR_NAME"]
        self.port = int(env.get("CONNECTOR_HTTP_PORT", "0"))
        with open(log, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", module, "run", *args],
                                         env=env, cwd=ROOT, stdout=out, stderr=out)

    def wait(self, timeout: float = 120) -> int:
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def terminate(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def metrics(self) -> str:
        return requests.get(f"http://127.0.0.1:{self.port}/metrics", timeout=5).text

    def metric(self, name: str) -> float:
        total = 0.0
        for line in self.metrics().splitlines():
            if line.startswith(name) and not line.startswith("#"):
                total += float(line.rsplit(" ", 1)[1])
        return total


@pytest.fixture
def connector(tmp_path: Path, sf: Any, kafka_settings: KafkaSettings,
              unique_name: Callable[[str], str]) -> Iterator[Callable[..., ConnectorProc]]:
    """Factory: ``connector("--max-events", "10", SF_EVENTS_INVALID_REPLAY="FAIL")``;
    ``module=`` runs a test wrapper of ``python -m connectors`` instead."""
    name = unique_name("conn")
    procs: list[ConnectorProc] = []

    def start(*args: str, module: str = "connectors", **env_extra: str) -> ConnectorProc:
        env = dict(os.environ, **sf.env(), KAFKA_BOOTSTRAP_SERVERS=kafka_settings.bootstrap_servers,
                   KAFKA_TOPIC_PREFIX=kafka_settings.topic_prefix,
                   KAFKA_PARTITIONS=str(kafka_settings.partitions), CONNECTOR_NAME=name,
                   SF_EVENTS_REPLAY="EARLIEST", CONNECTOR_HTTP_PORT=str(free_port()),
                   SF_PUBSUB_BACKOFF_INITIAL_S="0.1", SF_PUBSUB_BACKOFF_MAX_S="1",
                   LOG_FORMAT="JSON", LOG_LEVEL="INFO")
        env.update(env_extra)
        proc = ConnectorProc(env, tmp_path / f"connector-{len(procs)}.log", *args,
                             module=module)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.proc.poll() is None:
            proc.kill()


def read_topic(bootstrap: str, topic: str, partitions: int) -> list[Any]:
    """Every committed record of ``topic`` (read_committed), partition by partition."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "t-read",
                         "isolation.level": "read_committed", "enable.auto.commit": False,
                         "enable.partition.eof": True})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    out, eof = [], set()
    try:
        while len(eof) < partitions:
            msg = consumer.poll(10)
            assert msg is not None, f"no answer reading {topic}"
            if msg.error():
                eof.add(msg.partition())
                continue
            out.append(msg)
    finally:
        consumer.close()
    return out


def read_requests(kafka: KafkaSettings) -> list[dict]:
    serde = AvroSerde("provision_request")
    rows = []
    for msg in read_topic(kafka.bootstrap_servers, kafka.requests, kafka.partitions):
        value = serde.decode(msg.value())
        value["_partition"], value["_offset"], value["_key"] = (msg.partition(), msg.offset(),
                                                                msg.key())
        rows.append(value)
    return rows


def wait_until(predicate: Callable[[], Any], timeout: float, what: str,
               interval: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
