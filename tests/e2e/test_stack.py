"""`make up` / `make down` as a user runs them (on free ports, in a temporary state dir)."""

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


def test_up_is_idempotent_and_down_leaves_nothing(tmp_path):
    ports = {name: free_port() for name in (
        "KAFKA_PORT", "KAFKA_CONTROLLER_PORT", "SF_SANDBOX_HTTP_PORT", "SF_SANDBOX_GRPC_PORT",
        "WHMCS_SANDBOX_PORT", "CONNECTOR_HTTP_PORT", "WORKER_HTTP_PORT", "SINK_HTTP_PORT")}
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("SF_", "WHMCS_"))},
           **{k: str(v) for k, v in ports.items()}, "SFPROV_STATE_DIR": str(tmp_path),
           "SFPROV_ENV_FILE": str(tmp_path / "absent.env"), "SF_SANDBOX_ORDERS": "50",
           "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{ports['KAFKA_PORT']}",
           "PYTHONPATH": str(ROOT)}

    def stack(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "ops.stack", *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=300)

    up = stack("up")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        for name in ("salesforce-sandbox", "whmcs-sandbox", "connector", "worker", "sink"):
            assert any(line.split()[:2] == [name, "healthy"] for line in up.stdout.splitlines()), \
                up.stdout
        settings = KafkaSettings.load({}, bootstrap_servers=env["KAFKA_BOOTSTRAP_SERVERS"])
        md = AdminClient({"bootstrap.servers": settings.bootstrap_servers}).list_topics(timeout=10)
        for spec in declared_topics(settings):
            assert len(md.topics[spec.name].partitions) == spec.partitions
        status = json.loads((tmp_path / "supervisor.json").read_text())
        pids = {p["name"]: p["pid"] for p in status["processes"]}
        assert all(pids.values()), pids

        demo = subprocess.run([sys.executable, "-m", "ops.cli", "demo", "--count", "8"],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert demo.returncode == 0, demo.stdout + demo.stderr
        failed = [line for line in demo.stdout.splitlines() if " Failed " in line]
        assert failed and all(": " in line for line in failed), demo.stdout  # with the reason
        assert "Provisioned" in demo.stdout and "summary: Failed" in demo.stdout, demo.stdout

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
