"""The ACL set is generated from the topic declarations: each process may do only its job."""

from __future__ import annotations

import shlex

from common.settings import ConnectorSettings, KafkaSettings, SinkSettings, WorkerSettings
from ops.acls import Acl, Principals, acls, kafka_acls_lines

KAFKA = KafkaSettings.load({"KAFKA_TOPIC_PREFIX": "prod."})
RULES = acls(KAFKA, worker=WorkerSettings.load({}), sink=SinkSettings.load({}),
             connector=ConnectorSettings.load({}))
P = Principals()


def allowed(principal: str, resource: str, name: str, rules: list[Acl] = RULES) -> set[str]:
    """Operations ``principal`` gets on ``name`` (literal rules, or prefixed ones matching)."""
    return {r.operation for r in rules if r.principal == principal and r.resource == resource
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
    for topic in ("prod.sfprov-worker-intents-changelog", "prod.sfprov-worker-__assignor-__leader"):
        assert allowed(P.worker, "TOPIC", topic) == {"CREATE", "READ", "WRITE",
                                                     "DESCRIBE_CONFIGS"}
    for group in ("prod.sfprov-worker", "prod.sfprov-worker-checkpoint",
                  "prod.sfprov-worker-repair", "prod.sfprov-worker-watchdog"):
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


def test_worker_and_sink_get_exactly_the_names_their_code_uses():
    worker = {(r.resource, r.name) for r in RULES if r.principal == P.worker}
    assert {name for resource, name in worker if resource == "GROUP"} == {
        "prod.sfprov-worker",  # faust's consumer (its group id is the app id)
        "prod.sfprov-worker-checkpoint",  # streams.checkpoint.BrokerRangeReader
        "prod.sfprov-worker-repair",  # streams.repair.ChangelogReader
        "prod.sfprov-worker-watchdog"}  # common.lag.lag_reader (stall watchdog, gauges)
    assert {name for resource, name in worker if resource == "TOPIC"} == {
        KAFKA.requests, KAFKA.outcomes, KAFKA.dead_letters,
        "prod.sfprov-worker-idem-changelog", "prod.sfprov-worker-intents-changelog",
        "prod.sfprov-worker-__assignor-__leader"}
    sink = {(r.resource, r.name) for r in RULES if r.principal == P.sink}
    assert {name for resource, name in sink if resource == "GROUP"} == {
        "prod.sfprov-sink", "prod.sfprov-sink-watchdog"}
    # no per-run names: nothing of theirs is granted by prefix
    assert not [r for r in RULES if r.principal in (P.worker, P.sink) and r.pattern != "LITERAL"]


def test_the_worker_topics_are_named_as_faust_names_them():
    from types import SimpleNamespace

    from faust.assignor.leader_assignor import LeaderAssignor
    from faust.tables.base import Collection

    app = SimpleNamespace(conf=SimpleNamespace(id="prod.sfprov-worker"))
    leader = LeaderAssignor.__dict__["_leader_topic_name"].__get__(
        SimpleNamespace(app=app), LeaderAssignor)
    changelogs = [Collection._changelog_topic_name(SimpleNamespace(app=app, name=table))
                  for table in ("idem", "intents")]  # streams.app's tables
    for topic in (leader, *changelogs):
        assert allowed(P.worker, "TOPIC", topic) == {"CREATE", "READ", "WRITE",
                                                     "DESCRIBE_CONFIGS"}, topic


def test_environments_sharing_a_cluster_cannot_reach_each_other():
    """Staging (``sfprov-worker``, ``sfprov-sink``) and prod (``sfprov-worker-prod``,
    ``sfprov-sink-prod``) on one cluster, told apart by WORKER_APP_ID and SINK_GROUP_ID:
    staging's principals get nothing of prod's (its group, offsets, intents changelog)."""
    for prefix in ("", "prod."):
        kafka = KafkaSettings.load({"KAFKA_TOPIC_PREFIX": prefix})
        staging = acls(kafka, worker=WorkerSettings.load({}), sink=SinkSettings.load({}),
                       connector=ConnectorSettings.load({}))
        for group in ("sfprov-worker-prod", "sfprov-worker-prod-checkpoint",
                      "sfprov-worker-prod-repair", "sfprov-worker-prod-watchdog"):
            assert allowed(P.worker, "GROUP", prefix + group, staging) == set(), group
        for topic in ("sfprov-worker-prod-intents-changelog",
                      "sfprov-worker-prod-idem-changelog",
                      "sfprov-worker-prod-__assignor-__leader"):
            assert allowed(P.worker, "TOPIC", prefix + topic, staging) == set(), topic
        for group in ("sfprov-sink-prod", "sfprov-sink-prod-watchdog"):
            assert allowed(P.sink, "GROUP", prefix + group, staging) == set(), group
        # and its own names still
        assert allowed(P.worker, "GROUP", prefix + "sfprov-worker", staging) == {"READ"}
        assert allowed(P.sink, "GROUP", prefix + "sfprov-sink", staging) == {"READ"}
