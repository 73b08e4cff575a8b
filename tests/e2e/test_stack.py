"""`make up` / `make down` as a user runs them (on free ports, in a temporary state dir).

A default `make up` has the schema registry on: the demo's outcomes decode with
confluent-kafka's own ``AvroDeserializer`` (what kcat ``-s value=avro -r`` does).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from common.kafka import declared_topics
from common.settings import KafkaSettings
from ops.kafka_local import free_port, port_open

pytestmark = [pytest.mark.broker, pytest.mark.e2e]
ROOT = Path(__file__).resolve().parents[2]


def stack_env(tmp_path: Path, **more: str) -> tuple[dict[str, int], dict[str, str]]:
    """A user's environment for `make up` on free ports and a temporary state directory."""
    ports = {name: free_port() for name in (
        "KAFKA_PORT", "KAFKA_CONTROLLER_PORT", "SF_SANDBOX_HTTP_PORT", "SF_SANDBOX_GRPC_PORT",
        "WHMCS_SANDBOX_PORT", "REGISTRY_SANDBOX_PORT", "CONNECTOR_HTTP_PORT", "WORKER_HTTP_PORT",
        "SINK_HTTP_PORT")}
    env = {**{k: v for k, v in os.environ.items()
              if not k.startswith(("SF_", "WHMCS_", "SCHEMA_REGISTRY_", "KAFKA_"))},
           **{k: str(v) for k, v in ports.items()}, "SFPROV_STATE_DIR": str(tmp_path),
           "SFPROV_ENV_FILE": os.devnull, "SF_SANDBOX_ORDERS": "50",
           "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{ports['KAFKA_PORT']}",
           "PYTHONPATH": str(ROOT), **more}
    return ports, env


def run_stack(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ops.stack", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_up_is_idempotent_and_down_leaves_nothing(tmp_path):
    ports, env = stack_env(tmp_path)

    def stack(*args: str) -> subprocess.CompletedProcess[str]:
        return run_stack(env, *args)

    # `up` inside the try: one that times out or is interrupted (SIGTERM) has started the
    # broker and the supervisor in their own sessions, and only `down` stops them
    try:
        up = stack("up")
        assert up.returncode == 0, up.stdout + up.stderr
        for name in ("salesforce-sandbox", "whmcs-sandbox", "registry-sandbox", "connector",
                     "worker", "sink"):
            assert any(line.split()[:2] == [name, "healthy"] for line in up.stdout.splitlines()), \
                up.stdout
        settings = KafkaSettings.load({}, bootstrap_servers=env["KAFKA_BOOTSTRAP_SERVERS"])
        md = AdminClient({"bootstrap.servers": settings.bootstrap_servers}).list_topics(timeout=10)
        for spec in declared_topics(settings):
            assert len(md.topics[spec.name].partitions) == spec.partitions
        status = json.loads((tmp_path / "supervisor.json").read_text())
        pids = {p["name"]: p["pid"] for p in status["processes"]}
        assert all(pids.values()), pids

        registry = f"http://127.0.0.1:{ports['REGISTRY_SANDBOX_PORT']}"
        assert f"SCHEMA_REGISTRY_URL={registry}\n" in (tmp_path / "pipeline.env").read_text()
        demo = subprocess.run([sys.executable, "-m", "ops.cli", "demo", "--count", "8"],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert demo.returncode == 0, demo.stdout + demo.stderr
        failed = [line for line in demo.stdout.splitlines() if " Failed " in line]
        assert failed and all(": " in line for line in failed), demo.stdout  # with the reason
        assert "Provisioned" in demo.stdout and "summary: Failed" in demo.stdout, demo.stdout
        decoded = avro_deserialized_outcomes(env["KAFKA_BOOTSTRAP_SERVERS"], registry, 8)
        assert len(decoded) >= 8
        assert {o["status"] for o in decoded} <= {"Provisioned", "Failed"}
        assert all(o["order_id"].startswith("801") for o in decoded)

        again = stack("up")
        assert again.returncode == 0, again.stdout + again.stderr
        assert "nothing started twice" in again.stdout
        assert "already running" in again.stdout
        status = json.loads((tmp_path / "supervisor.json").read_text())
        assert {p["name"]: p["pid"] for p in status["processes"]} == pids
    finally:
        down = stack("down")
    assert down.returncode == 0, down.stdout + down.stderr
    for pid in pids.values():
        assert not Path(f"/proc/{pid}").exists() or \
            Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    for name, port in ports.items():
        assert not port_open(port), f"{name} {port} still open"


def test_secured_local_broker_each_process_its_own_principal(tmp_path):
    """`KAFKA_LOCAL_SECURE=true make up`: SASL_SSL, ACLs, one principal per process; the
    operator CLI reads as the read-only ops principal."""
    ports, env = stack_env(tmp_path, KAFKA_LOCAL_SECURE="true")
    try:  # `up` too: an interrupted one leaves the broker and the supervisor for `down`
        up = run_stack(env, "up")
        assert up.returncode == 0, up.stdout + up.stderr
        assert "kafka security: SASL_SSL" in up.stdout and "kafka acls:" in up.stdout
        for name in ("connector", "worker", "sink"):
            assert any(line.split()[:2] == [name, "healthy"] for line in up.stdout.splitlines())
        plan = json.loads((tmp_path / "supervisor-plan.json").read_text())
        assert (tmp_path / "supervisor-plan.json").stat().st_mode & 0o077 == 0
        users = {p["name"]: p["env"].get("KAFKA_SASL_USERNAME") for p in plan["processes"]}
        assert users["connector"] == "sfprov-connector" and users["worker"] == "sfprov-worker"
        assert users["sink"] == "sfprov-sink"
        assert "KAFKA_SASL_USERNAME=sfprov-ops\n" in (tmp_path / "pipeline.env").read_text()
        admin_props = tmp_path / "kafka" / "broker" / "secure" / "sfprov-admin.properties"
        assert "security.protocol=SASL_SSL" in admin_props.read_text()
        # no credentials in the environment: the CLI takes the ops principal's from make up
        topics = subprocess.run([sys.executable, "-m", "ops.cli", "topics"], cwd=ROOT, env=env,
                                capture_output=True, text=True, timeout=120)
        assert topics.returncode == 0, topics.stdout + topics.stderr
        assert "provisioning.outcomes" in topics.stdout
    finally:
        down = run_stack(env, "down")
    assert down.returncode == 0, down.stdout + down.stderr
    for name, port in ports.items():
        assert not port_open(port), f"{name} {port} still open"


def avro_deserialized_outcomes(bootstrap: str, registry: str, at_least: int) -> list[dict]:
    """The outcomes as a registry-aware tool reads them: confluent-kafka's AvroDeserializer
    with nothing of this project (no reader schema, no header)."""
    import time

    from confluent_kafka import Consumer
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.avro import AvroDeserializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    deserialize = AvroDeserializer(SchemaRegistryClient({"url": registry}))
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "analyst",
                         "auto.offset.reset": "earliest", "isolation.level": "read_committed"})
    consumer.subscribe(["provisioning.outcomes"])
    out: list[dict] = []
    deadline = time.monotonic() + 60
    try:
        while len(out) < at_least and time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is None or msg.error():
                continue
            assert msg.value()[:1] == b"\0"  # Confluent framing: magic byte, schema id
            out.append(deserialize(msg.value(), SerializationContext(
                msg.topic(), MessageField.VALUE)))
    finally:
        consumer.close()
    return out
