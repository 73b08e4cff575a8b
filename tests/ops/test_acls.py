"""The ACL set is generated from the topic declarations: each process may do only its job."""

from __future__ import annotations

import shlex

from common.settings import ConnectorSettings, KafkaSettings, SinkSettings, WorkerSettings
from ops.acls import Acl, Principals, acls, kafka_acls_lines

KAFKA = KafkaSettings.load({"KAFKA_TOPIC_PREFIX": "prod."})
RULES = acls(KAFKA, worker=WorkerSettings.load({}), sink=SinkSettings.load({}),
             connector=ConnectorSettings.load({}))
P = Principals()


def allowed(principal: str, resource: str, name: str) -> set[str]:
    """Operations ``principal`` gets on ``name`` (literal rules, or prefixed ones matching)."""
    return {r.operation for r in RULES if r.principal == principal and r.resource == resource
            and (r.name == name if r.pattern == "LITERAL" else name.startswith(r.name))}


def test_connector_writes_requests_offsets_gaps_dead_letters_in_its_transaction():
    assert allowed(P.connector, "TOPIC", KAFKA.dead_letters) == {"WRITE", "DESCRIBE_CONFIGS"}
    # gaps: written, and the last one read back at start-up (its pass planned again)
    assert allowed(P.connector, "TOPIC", KAFKA.replay_gaps) == {"READ", "WRITE",
                                                                "DESCRIBE_CONFIGS"}
    # requests: written, and read by the reconciliation passes, as the outcomes
    assert allowed(P.connector, "TOPIC", KAFKA.requests) == {"READ", "WRITE",
                                                             "DESCRIBE_CONFIGS"}
    assert allowed(P.connector, "TOPIC", KAFKA.connector_offsets) == {
        "READ", "WRITE", "DESCRIBE_CONFIGS"}
    assert allowed(P.connector, "TOPIC", KAFKA.outcomes) == {"READ", "DESCRIBE_CONFIGS"}
    assert allowed(P.connector, "GROUP", "prod.sfprov-worker") == {"DESCRIBE"}
    assert allowed(P.connector, "GROUP", "sfprov-reconcile-1a2b3c4d") == {"READ"}
    assert allowed(P.connector, "TRANSACTIONAL_ID",
                   "prod.sfprov-connector|event.OrderProvisionRequested__e") == {"WRITE"}
    assert allowed(P.connector, "TRANSACTIONAL_ID", "prod.other|event.X") == set()


def test_worker_reads_requests_writes_outcomes_and_owns_its_changelogs():
    assert allowed(P.worker, "TOPIC", KAFKA.requests) == {"READ", "DESCRIBE_CONFIGS"}
    assert "WRITE" not in allowed(P.worker, "TOPIC", KAFKA.requests)
    for topic in (KAFKA.outcomes, KAFKA.dead_letters):
        assert allowed(P.worker, "TOPIC", topic) == {"WRITE", "DESCRIBE_CONFIGS"}
    changelog = "prod.sfprov-worker-idem-changelog"
    assert allowed(P.worker, "TOPIC", changelog) == {"CREATE", "READ", "WRITE",
                                                      "DESCRIBE_CONFIGS"}
    for group in ("prod.sfprov-worker", "prod.sfprov-worker-checkpoint",
                  "prod.sfprov-worker-watchdog"):
        assert allowed(P.worker, "GROUP", group) == {"READ"}
    assert allowed(P.worker, "GROUP", "prod.sfprov-sink") == set()
    assert allowed(P.worker, "TOPIC", KAFKA.connector_offsets) == set()


def test_sink_reads_outcomes_writes_dead_letters_and_nothing_else():
    assert allowed(P.sink, "TOPIC", KAFKA.outcomes) == {"READ", "DESCRIBE_CONFIGS"}
    assert allowed(P.sink, "TOPIC", KAFKA.dead_letters) == {"WRITE", "DESCRIBE_CONFIGS"}
    assert allowed(P.sink, "TOPIC", KAFKA.requests) == set()
    assert allowed(P.sink, "GROUP", "prod.sfprov-sink") == {"READ"}
    assert allowed(P.sink, "GROUP", "prod.sfprov-sink-watchdog") == {"READ"}  # its lag gauge
    assert not any(r.operation == "CREATE" for r in RULES if r.principal == P.sink)


def test_ops_only_reads():
    ops = [r for r in RULES if r.principal == P.ops]
    assert {r.operation for r in ops} == {"READ", "DESCRIBE", "DESCRIBE_CONFIGS"}
    for topic in (KAFKA.requests, KAFKA.outcomes, KAFKA.dead_letters, KAFKA.connector_offsets,
                  KAFKA.replay_gaps):
        assert allowed(P.ops, "TOPIC", topic) == {"READ", "DESCRIBE_CONFIGS"}
    assert allowed(P.ops, "GROUP", "prod.sfprov-worker") == {"DESCRIBE"}  # sfprov lag
    assert allowed(P.ops, "GROUP", "sfprov-cli-1a2b3c4d") == {"READ"}


def test_nothing_is_granted_on_a_wildcard_or_the_cluster():
    assert all(r.name not in ("*", "") and r.resource != "CLUSTER" for r in RULES)
    assert len(RULES) == len(set(RULES))


def test_kafka_acls_lines_merge_operations_and_quote_names():
    rules = [Acl("User:c", "TOPIC", "t", "WRITE"), Acl("User:c", "TOPIC", "t", "DESCRIBE_CONFIGS"),
             Acl("User:c", "TRANSACTIONAL_ID", "c|event.X", "WRITE"),
             Acl("User:w", "GROUP", "app", "READ", "PREFIXED")]
    lines = kafka_acls_lines(rules, "b:9096", "admin.properties")
    assert [shlex.split(line) for line in lines] == [
        ["kafka-acls", "--bootstrap-server", "b:9096", "--command-config", "admin.properties",
         "--add", "--allow-principal", "User:c", "--operation", "DescribeConfigs",
         "--operation", "Write", "--topic", "t"],
        ["kafka-acls", "--bootstrap-server", "b:9096", "--command-config", "admin.properties",
         "--add", "--allow-principal", "User:c", "--operation", "Write",
         "--transactional-id", "c|event.X"],
        ["kafka-acls", "--bootstrap-server", "b:9096", "--command-config", "admin.properties",
         "--add", "--allow-principal", "User:w", "--operation", "Read", "--group", "app",
         "--resource-pattern-type", "prefixed"]]
