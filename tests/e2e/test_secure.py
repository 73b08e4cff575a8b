"""The pipeline on a secured broker: SASL_SSL, SCRAM users, ACLs on, one principal per process.

One pipeline for the module on its own broker (``Pipeline(secure=True)``: a CA and broker
certificate generated locally, SCRAM users created at format time, the StandardAuthorizer
with the ACLs of ``ops.acls``). The first test runs the demo end to end; the others show
what a misconfigured process meets: a wrong password stops it with one line naming the
setting and a final exit code, and a write its ACLs do not allow is refused by the broker
and reported, never retried.
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import pytest
from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    ResourcePatternType,
    ResourceType,
)

from bench.harness import Pipeline
from common.errors import KafkaAccessError
from common.kafka import admin_client
from common.settings import KafkaSettings, WorkerSettings
from connectors.decode import order_id18
from ops.acls import acls
from ops.kafka_secure import PROCESS_USERS
from ops.stack import FINAL_EXIT_CODES
from sinks.batch import Tracked
from sinks.deadletters import DeadLetters

pytestmark = [pytest.mark.broker, pytest.mark.e2e, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
MODULES = {"connector": ["connectors", "run"], "worker": ["streams", "worker"],
           "sink": ["sinks", "run"]}


DENIED_AT_START: list[str] = []  # the broker's denials once the pipeline had started


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    with Pipeline(tmp_path_factory.mktemp("secure"), accounts=20, orders=40, broken_every=5,
                  secure=True) as p:
        DENIED_AT_START[:] = denials(p)
        yield p


def run(p: Pipeline, name: str, env: dict[str, str], timeout: float = 180,
        ) -> subprocess.CompletedProcess[str]:
    """One more instance of a pipeline process, to its exit."""
    full = {**p.env(name), f"{name.upper()}_HTTP_PORT": "0", "LOG_FORMAT": "TEXT", **env}
    return subprocess.run([sys.executable, "-m", *MODULES[name]], cwd=ROOT, env=full,
                          capture_output=True, text=True, timeout=timeout)


def denials(p: Pipeline) -> list[str]:
    """The broker's audit lines for refused operations (kafka.authorizer.logger)."""
    assert p.broker is not None
    log = p.broker.log_file.read_text(errors="replace")
    return [line for line in log.splitlines() if "is Denied" in line or "Denied Operation" in line]


def test_whole_pipeline_runs_with_each_process_under_its_own_principal(secured):
    p = secured
    assert p.broker is not None and p.security is not None
    # the pipeline's start-up and this test's own work must meet no denial; the refusal
    # tests' denials, should they run first, are theirs (each line carries its time)
    before = set(denials(p))
    props = (p.broker.home / "server.properties").read_text()
    assert f"listeners=SASL_SSL://127.0.0.1:{p.broker.port}," in props
    assert "allow.everyone.if.no.acl.found=false" in props
    assert "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer" in props
    for name, user in PROCESS_USERS.items():
        if name in MODULES:
            env = p.env(name)
            assert env["KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
            assert env["KAFKA_SASL_USERNAME"] == user
    # every ACL the generator wants is on the broker, and nothing else for our principals
    wanted = {(b.restype, b.name, b.resource_pattern_type, b.principal, b.operation)
              for b in _bindings(p)}
    admin = admin_client(p.kafka)  # keep it alive until the answer arrives
    found = admin.describe_acls(AclBindingFilter(
        ResourceType.ANY, None, ResourcePatternType.ANY, None, None, AclOperation.ANY,
        AclPermissionType.ANY)).result(timeout=30)
    on_broker = {(b.restype, b.name, b.resource_pattern_type, b.principal, b.operation)
                 for b in found if b.principal.removeprefix("User:") in PROCESS_USERS.values()}
    assert wanted and on_broker == wanted

    ids = p.sf.approve(10)
    rows = p.wait_settled(ids, timeout=240)
    assert len(rows) == len(ids)
    provisionable = set(p.provisionable(ids))
    assert provisionable and provisionable != set(ids)
    for oid, row in rows.items():
        assert row["Activation_Status__c"] == ("Provisioned" if oid in provisionable
                                               else "Failed"), (oid, row)
        if oid in provisionable:
            assert row["WHMCS_Order_Id__c"]
    assert {o["order_id"] for o in p.outcomes()} >= set(ids)
    assert p.invariants(ids)["duplicates"] == 0
    assert DENIED_AT_START + [line for line in denials(p) if line not in before] == [], \
        "a pipeline process needed more than its ACLs allow"
    for name in MODULES:
        assert p.procs[name].poll() is None, f"{name} exited; see {p.log(name)}"


def _bindings(p: Pipeline) -> list[AclBinding]:
    from ops.acls import bindings

    return bindings(acls(p.kafka))


@pytest.mark.parametrize("name", ["connector", "worker", "sink"])
def test_wrong_password_stops_with_one_line_and_a_final_exit_code(secured, name):
    result = run(secured, name, {"KAFKA_SASL_PASSWORD": "not-the-password"})
    output = result.stdout + result.stderr
    assert result.returncode in FINAL_EXIT_CODES[name], (result.returncode, output[-2000:])
    naming = [line for line in output.splitlines() if "KAFKA_SASL_PASSWORD" in line]
    assert len(naming) == 1, output[-3000:]
    assert f"User:{PROCESS_USERS[name]}" in naming[0]
    assert "not-the-password" not in output
    assert "Traceback" not in output


def test_the_sinks_principal_writing_to_the_requests_topic_is_refused_and_reported(secured):
    p = secured
    assert p.security is not None
    # the sink's own dead-letter producer, aimed (as by a configuration mistake) at requests
    sink_settings = KafkaSettings.load(
        {**p.security.env(PROCESS_USERS["sink"]), "KAFKA_BOOTSTRAP_SERVERS": p.bootstrap},
        topic_prefix=p.prefix, dead_letters_topic=p.kafka.requests_topic)
    letters = DeadLetters(sink_settings)
    letters.send(Tracked(0, 1, b"801000000000001AAA", b"\x00garbage"), reason="test",
                 error_class="SerdeError")
    started = time.monotonic()
    with pytest.raises(KafkaAccessError) as info:
        while time.monotonic() - started < 120:
            if letters.settle(timeout=5):
                break
    letters.close()
    message = str(info.value)
    # the refused producer keeps asking for the requests topic's metadata (a denial each
    # time) while it lives, here as long as the traceback's frames hold it: gone now, or its
    # denials are counted against the pipeline by the whole-pipeline test, should it run later
    del info, letters
    gc.collect()
    assert "User:sfprov-sink" in message and p.kafka.requests in message
    assert "TOPIC_AUTHORIZATION_FAILED" in message or "Topic authorization failed" in message
    assert "not retrying" in message

    # the sink process, misconfigured the same way: refused, reported once, a final exit
    result = run(p, "sink", {"KAFKA_TOPIC_DEAD_LETTERS": p.kafka.requests_topic})
    output = result.stdout + result.stderr
    assert result.returncode in FINAL_EXIT_CODES["sink"], output[-2000:]
    refused = [line for line in output.splitlines() if "refused User:sfprov-sink" in line]
    assert len(refused) == 1 and p.kafka.requests in refused[0], output[-3000:]

    audit = [line for line in denials(p) if "User:sfprov-sink" in line]
    assert any(p.kafka.requests in line for line in audit), denials(p)[-5:]


def test_the_workers_refused_outcome_write_stops_it_with_one_line_and_exit_64(secured):
    """The worker whose principal may see the outcomes topic but not write to it (its Write
    ACL replaced by Describe: start-up's topic check passes) stops at its first outcome with
    one line naming the operation and principal, and the configuration exit code — where
    the send was retried forever, every lane behind it blocked."""
    p = secured
    worker, outcomes = f"User:{PROCESS_USERS['worker']}", p.kafka.outcomes
    admin = admin_client(p.kafka)
    acl = partial(AclBinding, ResourceType.TOPIC, outcomes, ResourcePatternType.LITERAL,
                  worker, "*", permission_type=AclPermissionType.ALLOW)
    assert p.stop("worker") == 0  # its partitions, its state directory: ours for the test
    try:
        _acls(admin, remove=[acl(AclOperation.WRITE)], add=[acl(AclOperation.DESCRIBE)])
        before = _end_offsets(p, p.kafka.requests)
        ids = p.sf.approve(3)  # the connector (still running) publishes their requests
        deadline = time.monotonic() + 60
        while _end_offsets(p, p.kafka.requests) < before + len(ids):
            assert time.monotonic() < deadline, "the connector did not publish the requests"
            time.sleep(0.5)

        code, output = _run_until_exit(p, "worker", {"WORKER_DRAIN_TIMEOUT_S": "2"},
                                       timeout=REFUSAL_TIMEOUT_S)
        assert code in FINAL_EXIT_CODES["worker"] and code == 64, (code, output[-3000:])
        refused = [line for line in output.splitlines() if f"refused {worker}" in line]
        assert len(refused) == 1, output[-3000:]
        assert f"write outcomes to {outcomes}" in refused[0], refused[0]
        assert "Topic authorization failed" in refused[0] and "not retrying" in refused[0]
        # the refused send is not retried (other retries — a slow sandbox answer — may be)
        assert "sending outcomes failed; retrying" not in output, output[-3000:]
        assert "sending dead letters failed; retrying" not in output, output[-3000:]
        assert any(worker in line and outcomes in line for line in denials(p))
    finally:
        _acls(admin, remove=[acl(AclOperation.DESCRIBE)], add=[acl(AclOperation.WRITE)])
        p.start("worker")
        p.wait_healthy("worker")
    # nothing was acknowledged past the refused outcomes: the worker back under its ACLs
    # settles the Orders
    rows = p.wait_settled(ids, timeout=180)
    assert len(rows) == len(ids)
    assert {o["order_id"] for o in p.outcomes()} >= set(ids)


@pytest.mark.parametrize("refused", ["group", "requests"])
def test_the_workers_refused_read_stops_it_with_one_line_and_exit_64(secured, refused):
    """The worker whose principal may not join its group (its Group READ removed) or read
    the requests topic (its READ replaced by DESCRIBE: start-up's topic check passes) stops
    with one line naming the principal and the refusal, and the configuration exit code —
    where faust's consumer crashed with exit 1 and the supervisor restarted it for ever."""
    p = secured
    worker = f"User:{PROCESS_USERS['worker']}"
    admin = admin_client(p.kafka)
    if refused == "group":
        group = p.kafka.topic(WorkerSettings.load(p.env("worker")).app_id)
        remove = [AclBinding(ResourceType.GROUP, group, ResourcePatternType.LITERAL, worker,
                             "*", AclOperation.READ, AclPermissionType.ALLOW)]
        add: list[AclBinding] = []
    else:
        acl = partial(AclBinding, ResourceType.TOPIC, p.kafka.requests,
                      ResourcePatternType.LITERAL, worker, "*",
                      permission_type=AclPermissionType.ALLOW)
        remove, add = [acl(AclOperation.READ)], [acl(AclOperation.DESCRIBE)]
    assert p.stop("worker") == 0
    try:
        _acls(admin, remove=remove, add=add)
        code, output = _run_until_exit(p, "worker", {"WORKER_DRAIN_TIMEOUT_S": "2"},
                                       timeout=REFUSAL_TIMEOUT_S)
        assert code == 64, (code, output[-3000:])
        lines = [line for line in output.splitlines() if f"refused {worker}" in line]
        assert len(lines) == 1, output[-3000:]
        assert "authorization failed" in lines[0].lower() and "not retrying" in lines[0]
        assert (group if refused == "group" else p.kafka.requests) in lines[0], lines[0]
    finally:
        _acls(admin, remove=add, add=remove)
        p.start("worker")
        p.wait_healthy("worker")


REFUSAL_TIMEOUT_S = 90.0  # start-up (topics, group, table recovery) and the first outcome


def _acls(admin, *, remove: list[AclBinding], add: list[AclBinding]) -> None:
    if remove:
        filters = [AclBindingFilter(b.restype, b.name, b.resource_pattern_type, b.principal,
                                    b.host, b.operation, b.permission_type) for b in remove]
        for future in admin.delete_acls(filters, request_timeout=30).values():
            future.result()
    if add:
        for future in admin.create_acls(add, request_timeout=30).values():
            future.result()


def _end_offsets(p: Pipeline, topic: str) -> int:
    from confluent_kafka import Consumer, TopicPartition

    from common.connection import kafka_config

    consumer = Consumer(kafka_config(p.kafka, **{"group.id": "sfprov-test-offsets",
                                                 "enable.auto.commit": False}))
    try:
        return sum(consumer.get_watermark_offsets(TopicPartition(topic, n), timeout=30)[1]
                   for n in range(p.partitions))
    finally:
        consumer.close()


def _run_until_exit(p: Pipeline, name: str, env: dict[str, str], timeout: float,
                    ) -> tuple[int | None, str]:
    """Like :func:`run`, but a process still running after ``timeout`` is stopped (SIGKILL)
    and reported with None instead of an exit code."""
    full = {**p.env(name), f"{name.upper()}_HTTP_PORT": "0", "LOG_FORMAT": "TEXT", **env}
    proc = subprocess.Popen([sys.executable, "-m", *MODULES[name]], cwd=ROOT, env=full,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
        return proc.returncode, output
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
        return None, output


def test_the_ops_principal_reads_the_topics(secured):
    p = secured
    assert p.security is not None
    ids = p.sf.approve(2)  # outcomes of its own to read, whatever ran before (or did not)
    p.wait_settled(ids, timeout=240)
    env = {**p.env("cli"), **p.security.env(PROCESS_USERS["ops"])}
    result = subprocess.run([sys.executable, "-m", "ops.cli", "tail", "outcomes",
                             "--from-beginning"], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    read = {json.loads(line)["value"].get("order_id") for line in result.stdout.splitlines()
            if line.startswith("{")}
    missing = {order_id18(oid) for oid in ids} - read
    assert not missing, f"the ops principal's tail lacks these Orders' outcomes: {missing}"


def test_kafkas_own_tools_with_the_admin_client_properties(secured):
    """The client.properties the connection config writes works for Kafka's Java tools."""
    from ops.kafka_tools import ensure_tools

    p = secured
    assert p.security is not None
    properties = p.security.write_client_properties(p.bootstrap)
    assert properties.stat().st_mode & 0o077 == 0
    bin_dir = ensure_tools()
    group = p.kafka.topic("sfprov-sink")
    described = subprocess.run(
        [str(bin_dir / "kafka-consumer-groups"), "--bootstrap-server", p.bootstrap,
         "--command-config", str(properties), "--describe", "--group", group],
        capture_output=True, text=True, timeout=120)
    assert described.returncode == 0, described.stderr[-2000:]
    assert p.kafka.outcomes in described.stdout
    listed = subprocess.run(
        [str(bin_dir / "kafka-acls"), "--bootstrap-server", p.bootstrap,
         "--command-config", str(properties), "--list", "--principal", "User:sfprov-sink"],
        capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr[-2000:]
    assert p.kafka.outcomes in listed.stdout and p.kafka.requests not in listed.stdout
