"""`sfprov reconcile` counts the requests Kafka took, not the ones it handed the producer: a
record the broker refuses is reported in delivery, and ``flush()`` returns 0 for it all the
same. The refusing topic is real: a requests topic whose ``max.message.bytes`` no request fits
(readable, so the reconciliation pass itself works)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from common.errors import KafkaError
from common.settings import KafkaSettings
from ops.cmd_orders import inject_requests, send_requests
from tests.conftest import create_topic

ROOT = Path(__file__).resolve().parents[2]
ORDERS = ["801000000000001AAA", "801000000000002AAA"]
SMALL = "requests-too-small"


@pytest.fixture
def sf_sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The Salesforce sandbox (as tests/sandbox has it), seeded: one per test, since each
    approves Orders and counts the stranded ones (shared, the counts depended on the order)."""
    from sandbox.salesforce.harness import running_sandbox

    with running_sandbox(tmp_path_factory.mktemp("sf"), keepalive_s=1.0,
                         idle_close_s=4.0) as sandbox:
        sandbox.seed(accounts=5, orders=10)
        yield sandbox


def refusing(settings: KafkaSettings) -> KafkaSettings:
    """``settings`` with a requests topic that exists and refuses every request written."""
    create_topic(settings.bootstrap_servers, settings.topic(SMALL),
                 partitions=settings.partitions, config={"max.message.bytes": "64"})
    return dataclasses.replace(settings, requests_topic=SMALL)


@pytest.mark.broker
def test_inject_requests_fails_for_requests_the_broker_refused(kafka_settings):
    settings = refusing(kafka_settings)
    sent = send_requests(settings, ORDERS)
    assert (sent.delivered, sent.not_delivered) == (0, 2)
    assert "Message size too large (2)" in sent.problems()
    with pytest.raises(KafkaError, match="2 of 2 provisioning request"):
        inject_requests(settings, ORDERS)
    assert inject_requests(kafka_settings, ORDERS) == 2  # the topic as declared takes them


@pytest.mark.broker
def test_reconcile_reports_requests_not_injected_and_fails(kafka_settings, sf_sandbox):
    refusing(kafka_settings)
    approved = sf_sandbox.approve(count=2)  # Activating from now on, no request for them
    env = {**os.environ, **sf_sandbox.env(), "PYTHONPATH": str(ROOT),
           "KAFKA_BOOTSTRAP_SERVERS": kafka_settings.bootstrap_servers,
           "KAFKA_TOPIC_PREFIX": kafka_settings.topic_prefix, "KAFKA_TOPIC_REQUESTS": SMALL,
           "SFPROV_ENV_FILE": os.devnull, "SFPROV_STATE_DIR": "/nonexistent"}
    result = subprocess.run([sys.executable, "-m", "ops.cli", "reconcile", "--older-than", "0s"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    for order in approved:
        assert order in result.stdout  # listed as stranded
    assert not any(line.startswith("injected") for line in result.stdout.splitlines()), \
        result.stdout
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: 2 of 2 provisioning request(s) not injected"), line
    assert "Message size too large" in line, line


def test_reconcile_without_a_broker_is_one_line(sf_sandbox):
    """Salesforce answers, Kafka does not: reconcile's topic reads once let librdkafka print
    its FAIL lines (hundreds while the reads waited) around the one error line."""
    import socket

    sf_sandbox.approve(count=1)  # a stranded candidate, so the requests topic is read
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    env = {**os.environ, **sf_sandbox.env(), "PYTHONPATH": str(ROOT),
           "KAFKA_BOOTSTRAP_SERVERS": dead,
           "SFPROV_ENV_FILE": os.devnull, "SFPROV_STATE_DIR": "/nonexistent"}
    result = subprocess.run([sys.executable, "-m", "ops.cli", "reconcile", "--older-than", "0s"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"error: cannot reach Kafka at {dead}"), line
