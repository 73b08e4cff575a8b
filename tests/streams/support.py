"""Helpers of the worker's integration tests: feed requests, read outcomes, run workers."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

from confluent_kafka import Consumer, Producer

from common.avro import AvroSerde
from common.deadletter import parse_headers

ROOT = Path(__file__).resolve().parents[2]
REQUEST = AvroSerde("provision_request")
OUTCOME = AvroSerde("provisioning_outcome")


def request(order_id: str, *, idem_key: str | None = None,
            event_uuid: str | None = None) -> dict[str, Any]:
    now = int(time.time() * 1000)
    return {"event_uuid": event_uuid or uuid.uuid4().hex, "replay_id": os.urandom(8),
            "schema_id": "test-schema", "channel": "/event/OrderProvisionRequested__e",
            "received_at": now, "CreatedDate": now, "CreatedById": "005000000000001AAA",
            "OrderId__c": order_id, "IdemKey__c": idem_key or f"{order_id}-{now}",
            "CorrelationId__c": uuid.uuid4().hex[:12], "RequestedBy__c": None,
            "Version__c": 1.0}


def produce(bootstrap: str, topic: str, values: list[dict[str, Any] | bytes]) -> None:
    """Write requests as the connector does: key = order id, librdkafka murmur2_random."""
    producer = Producer({"bootstrap.servers": bootstrap, "partitioner": "murmur2_random",
                         "enable.idempotence": True, "linger.ms": 5})
    for value in values:
        if isinstance(value, bytes):
            producer.produce(topic, key=b"garbage", value=value)
        else:
            producer.produce(topic, key=value["OrderId__c"].encode(),
                             value=REQUEST.encode(value), headers=REQUEST.headers())
    assert producer.flush(30) == 0


class Reader:
    """Reads a topic from the beginning; keeps everything read so far. A reader the test
    leaves open is closed after it (``tests/streams/conftest.py``): a consumer that outlives
    the session's broker logs connection failures until the process ends."""

    unclosed: ClassVar[list[Reader]] = []

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.consumer = Consumer({"bootstrap.servers": bootstrap,
                                  "group.id": f"test-reader-{uuid.uuid4().hex[:8]}",
                                  "auto.offset.reset": "earliest",
                                  "enable.auto.commit": False})
        self.consumer.subscribe([topic])
        self.records: list[Any] = []
        Reader.unclosed.append(self)

    def poll_until(self, done: Callable[[list[Any]], bool], timeout: float,
                   alive: Callable[[], bool] = lambda: True) -> list[Any]:
        deadline = time.monotonic() + timeout
        while not done(self.records) and time.monotonic() < deadline and alive():
            msg = self.consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            self.records.append(msg)
        return self.records

    def close(self) -> None:
        if self in Reader.unclosed:
            Reader.unclosed.remove(self)
            self.consumer.close()


def outcomes(records: list[Any]) -> list[dict[str, Any]]:
    return [OUTCOME.decode(m.value()) for m in records]


def dead_letters(records: list[Any]) -> list[dict[str, str]]:
    return [parse_headers(m.headers()) for m in records]


def worker_env(*, bootstrap: str, prefix: str, state_dir: Path, sf_env: dict[str, str],
               wh_env: dict[str, str], **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "WORKER_",
                                                                     "SF_", "WHMCS_"))}
    env.update(sf_env)
    env.update(wh_env)
    env.update({"KAFKA_BOOTSTRAP_SERVERS": bootstrap, "KAFKA_TOPIC_PREFIX": prefix,
                "KAFKA_PARTITIONS": "3", "SFPROV_STATE_DIR": str(state_dir),
                "SFPROV_ENV_FILE": os.devnull, "WORKER_HTTP_PORT": "0",
                "WORKER_STORE": "memory://", "WORKER_BATCH_LINGER_S": "0.05",
                "WORKER_RETRY_DEADLINE_S": "30", "WHMCS_TIMEOUT_S": "2",
                "WORKER_LOOKUP_GRACE_S": "0.5", "LOG_LEVEL": "INFO",
                "PYTHONPATH": str(ROOT),
                "WORKER_FAUST_LOG_LEVEL": os.environ.get("WORKER_FAUST_LOG_LEVEL", "")})
    env.update(extra)
    return env


@contextmanager
def worker_process(env: dict[str, str], log_path: Path, module: str = "streams",
                   args: tuple[str, ...] = ("worker",)) -> Iterator[subprocess.Popen[bytes]]:
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", module, *args], cwd=ROOT,
                                env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait_for_log(path: Path, needle: str, timeout: float) -> bool:
    """True once ``needle`` appears in the log file (a substring: "assigned: [" matches an
    empty assignment too — :func:`wait_for_log_match` with :data:`ASSIGNED_SOME` does not)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and needle in path.read_text(errors="replace"):
            return True
        time.sleep(0.2)
    return False


#: the worker's log line of an assignment of at least one requests partition
#: (``streams.app`` logs ``requests partitions assigned: []`` for an empty one)
ASSIGNED_SOME = r"requests partitions assigned: \[\d"


def wait_for_log_match(path: Path, pattern: str, timeout: float) -> bool:
    """True once the regular expression ``pattern`` matches in the log file."""
    regex = re.compile(pattern)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and regex.search(path.read_text(errors="replace")):
            return True
        time.sleep(0.2)
    return False
