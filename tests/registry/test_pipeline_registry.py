"""End to end with SCHEMA_REGISTRY_URL: connector, worker and sink as subprocesses, the
Salesforce and WHMCS sandboxes, the real broker, and the registry emulator as a subprocess.

One pipeline for the module; each test approves and checks its own Orders, so none relies on
what another left on the topics (any one runs alone, in any order).
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer

from bench.harness import Pipeline
from common.avro import SCHEMA_HEADER, AvroSerde, confluent_schema_id
from common.deadletter import parse_headers
from common.lag import end_offsets
from connectors.decode import order_id18
from sandbox.registry.harness import running_registry

pytestmark = [pytest.mark.broker, pytest.mark.e2e, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
UNKNOWN_ID = 987654


@pytest.fixture(scope="module")
def stack(kafka_bootstrap, tmp_path_factory):
    base = tmp_path_factory.mktemp("registry-e2e")
    with running_registry(base / "registry", subprocess=True) as reg:
        env = {**reg.env(), "SF_PUBSUB_BACKOFF_MAX_S": "2"}
        with Pipeline(base / "pipeline", bootstrap=kafka_bootstrap, accounts=20, orders=60,
                      broken_every=5, env=env) as p:
            yield p, reg


def raw(p: Pipeline, topic: str, timeout: float = 10.0) -> list:
    """Every record of ``topic`` (read_committed), raw bytes and headers."""
    c = Consumer({"bootstrap.servers": p.bootstrap, "group.id": f"raw-{uuid.uuid4().hex[:8]}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False,
                  "isolation.level": "read_committed"})
    c.subscribe([topic])
    out, idle_until = [], time.monotonic() + timeout
    try:
        while time.monotonic() < idle_until:
            m = c.poll(0.5)
            if m is not None and not m.error():
                out.append(m)
                idle_until = time.monotonic() + 3.0
    finally:
        c.close()
    return out


def worker_dead_letters(p: Pipeline) -> list[dict[str, str]]:
    return [parse_headers(m.headers()) for m in raw(p, p.kafka.dead_letters, timeout=5)]


def ends(p: Pipeline) -> dict[str, dict[int, int]]:
    """partition → end offset of the requests and the dead-letter topic."""
    c = Consumer({"bootstrap.servers": p.bootstrap, "group.id": f"ends-{uuid.uuid4().hex[:8]}"})
    try:
        return {topic: {part: high for part, (_low, high) in end_offsets(c, topic).items()}
                for topic in (p.kafka.requests, p.kafka.dead_letters)}
    finally:
        c.close()


def test_registry_down_delays_events_but_dead_letters_nothing(stack):
    p, reg = stack
    # a connector that has not encoded a request yet: one that has (an earlier test's
    # Orders) holds the schema id and would not need the registry at all
    p.stop("connector")
    p.start("connector")
    p.wait_healthy("connector")
    logged = len(p.log("connector").read_text())
    before = ends(p)  # whatever earlier tests wrote: only what comes after counts here
    letters_before = len(worker_dead_letters(p))
    reg.stop()
    ids = p.sf.approve(5)
    time.sleep(8)  # the connector tries, fails to register, backs off, resubscribes, ...
    assert ends(p) == before, "a record reached requests or dead letters with the registry down"
    assert len(worker_dead_letters(p)) == letters_before
    assert "schema registry" in p.log("connector").read_text()[logged:]
    reg.start()  # same port, same stored schemas
    rows = p.wait_settled(ids, timeout=180)
    assert {r["Activation_Status__c"] for r in rows.values()} <= {"Provisioned", "Failed"}
    assert len(rows) == len(ids)
    assert p.invariants(ids)["duplicates"] == 0


def test_values_are_confluent_framed_and_orders_provisioned(stack):
    p, reg = stack
    ids = p.sf.approve(10)
    rows = p.wait_settled(ids, timeout=180)
    provisionable = set(p.provisionable(ids))
    assert provisionable and provisionable != set(ids)
    for oid in ids:
        expected = "Provisioned" if oid in provisionable else "Failed"
        assert rows[oid]["Activation_Status__c"] == expected, (oid, rows[oid])
        if oid in provisionable:
            assert rows[oid]["WHMCS_Order_Id__c"] and p.whmcs.orders_for(oid)
    subjects = reg.subjects()
    for topic in (p.kafka.requests, p.kafka.outcomes):
        subject = f"{topic}-value"
        assert subject in subjects
        registered = {reg.get(f"/subjects/{subject}/versions/{v}")["id"]
                      for v in reg.versions(subject)}
        records = raw(p, topic)
        assert records
        for m in records:
            assert m.value()[0] == 0, topic
            assert confluent_schema_id(m.value()) in registered, topic
            assert SCHEMA_HEADER not in dict(m.headers() or [])
    # internal topics stay plain Avro (documented choice)
    offsets = raw(p, p.kafka.connector_offsets)
    assert offsets and all(SCHEMA_HEADER in dict(m.headers() or []) for m in offsets)
    assert f"{p.kafka.connector_offsets}-value" not in subjects


def test_cli_tail_decodes_confluent_records(stack):
    p, _reg = stack
    ids = p.sf.approve(5)  # its own outcomes, not those earlier tests left
    p.wait_settled(ids, timeout=180)
    out = subprocess.run([sys.executable, "-m", "ops.cli", "tail", "outcomes",
                          "--from-beginning"], cwd=ROOT, env=p.env("cli"), capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    for line in lines:
        assert "undecodable" not in line["value"], line
        assert line["value"]["status"] in ("Provisioned", "Failed", "Skipped", "Duplicate")
    decoded = {line["value"]["order_id"] for line in lines}
    missing = {order_id18(oid) for oid in ids} - decoded
    assert not missing, f"approved Orders without a decoded outcome in the tail: {missing}"


def test_unknown_schema_id_on_requests_becomes_a_worker_dead_letter(stack):
    p, _reg = stack
    order_id = "801ZZZ000000000AAA"
    body = AvroSerde("provision_request").encode({
        "event_uuid": str(uuid.uuid4()), "replay_id": b"\x01", "schema_id": "x",
        "channel": "/event/OrderProvisionRequested__e", "received_at": 0, "CreatedDate": 0,
        "CreatedById": "005000000000000AAA", "OrderId__c": order_id,
        "IdemKey__c": f"{order_id}-1", "CorrelationId__c": None, "RequestedBy__c": None,
        "Version__c": 1.0})
    forged = struct.pack(">bI", 0, UNKNOWN_ID) + body
    producer = Producer({"bootstrap.servers": p.bootstrap, "partitioner": "murmur2_random"})
    producer.produce(p.kafka.requests, key=order_id.encode(), value=forged)
    assert producer.flush(30) == 0
    deadline = time.monotonic() + 60
    letters: list[dict[str, str]] = []
    while time.monotonic() < deadline:
        letters = [h for h in worker_dead_letters(p) if h.get("stage") == "worker"]
        if letters:
            break
        time.sleep(1)
    assert len(letters) == 1, letters
    assert f"unknown schema id {UNKNOWN_ID}" in letters[0]["reason"]
    assert letters[0]["error_code"] == "UNDECODABLE"
    assert p.procs["worker"].poll() is None  # not a crash
