"""The ACL set is generated from the topic declarations: each process may do only its job."""

from __future__ import annotations

import ast
import os
import shlex
import types
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

from common.kafka import changelog_topics, declared_topics
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
    # outcomes: read by the reconciliation passes only; its start-up check (ensure_topics)
    # does not cover them, so no DescribeConfigs
    assert allowed(P.connector, "TOPIC", KAFKA.outcomes) == {"READ"}
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
    for changelog in ("prod.sfprov-worker-idem-changelog", "prod.sfprov-worker-intents-changelog"):
        assert allowed(P.worker, "TOPIC", changelog) == {"CREATE", "READ", "WRITE",
                                                          "DESCRIBE_CONFIGS"}
    # faust's LeaderAssignor only declares (creates) its topic and subscribes to it (READ,
    # which implies DESCRIBE); nothing writes it, and the worker's drift check skips it
    assert allowed(P.worker, "TOPIC", "prod.sfprov-worker-__assignor-__leader") == {
        "CREATE", "READ"}
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
    for topic in changelogs:
        assert allowed(P.worker, "TOPIC", topic) == {"CREATE", "READ", "WRITE",
                                                     "DESCRIBE_CONFIGS"}, topic
    assert allowed(P.worker, "TOPIC", leader) == {"CREATE", "READ"}


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


# -- DescribeConfigs: only on the topics each process's start-up check covers -------------

ROOT = Path(__file__).resolve().parents[2]


def _ensured_topics(module: str) -> set[str]:
    """The topics ``module``'s one ``ensure_topics`` call covers (its ``only=`` names of the
    Kafka settings, and ``extra=changelog_topics(…)``), for :data:`KAFKA` and the default
    worker app id — read from its source, so a changed call changes this test's answer."""
    tree = ast.parse((ROOT / module).read_text())
    calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call)
             and getattr(node.func, "id", getattr(node.func, "attr", None)) == "ensure_topics"]
    assert len(calls) == 1, module
    names: set[str] = set()
    for keyword in calls[0].keywords:
        if keyword.arg == "only":
            assert isinstance(keyword.value, ast.Tuple), module
            names |= {getattr(KAFKA, item.attr) for item in keyword.value.elts
                      if isinstance(item, ast.Attribute)}
            assert len(names) == len(keyword.value.elts), module
        elif keyword.arg == "extra":
            assert isinstance(keyword.value, ast.Call)
            assert getattr(keyword.value.func, "id", None) == "changelog_topics", module
            names |= {spec.name for spec in changelog_topics(KAFKA, "prod.sfprov-worker")}
    return names


def described(principal: str, rules: list[Acl] = RULES) -> set[str]:
    return {r.name for r in rules if r.principal == principal and r.resource == "TOPIC"
            and r.operation == "DESCRIBE_CONFIGS"}


def test_describe_configs_only_on_the_topics_a_process_checks_at_start():
    """DescribeConfigs is for the drift report of each process's ``ensure_topics``: the
    connector was granted it on outcomes (only read by its reconciliation passes) and the
    worker on faust's leader topic, neither of which its check covers."""
    assert described(P.connector) == _ensured_topics("connectors/__main__.py") == {
        KAFKA.requests, KAFKA.dead_letters, KAFKA.connector_offsets, KAFKA.replay_gaps}
    assert described(P.worker) == _ensured_topics("streams/__main__.py") == {
        KAFKA.requests, KAFKA.outcomes, KAFKA.dead_letters,
        "prod.sfprov-worker-idem-changelog", "prod.sfprov-worker-intents-changelog"}
    assert described(P.sink) == _ensured_topics("sinks/__main__.py") == {
        KAFKA.outcomes, KAFKA.dead_letters}
    # sfprov topics describes every declared topic's config
    assert described(P.ops) == {spec.name for spec in declared_topics(KAFKA)}


# -- sfprov acls --check / --prune: what the cluster grants beyond the generated set ------

class FakeAdmin:
    """``describe_acls`` answers from ``on_broker`` as a broker filters (principal, host,
    permission); ``delete_acls`` removes the bindings each filter names exactly."""

    def __init__(self, on_broker: list[Any]) -> None:
        self.on_broker = list(on_broker)
        self.described: list[Any] = []
        self.deleted: list[Any] = []

    @staticmethod
    def _matches(f: Any, b: Any) -> bool:
        from confluent_kafka.admin import (
            AclOperation,
            AclPermissionType,
            ResourcePatternType,
            ResourceType,
        )
        return ((f.restype == ResourceType.ANY or f.restype == b.restype)
                and f.name in (None, b.name)
                and (f.resource_pattern_type == ResourcePatternType.ANY
                     or f.resource_pattern_type == b.resource_pattern_type)
                and f.principal in (None, b.principal) and f.host in (None, b.host)
                and (f.operation == AclOperation.ANY or f.operation == b.operation)
                and (f.permission_type == AclPermissionType.ANY
                     or f.permission_type == b.permission_type))

    def list_topics(self, *args: Any, **kwargs: Any) -> Any:
        """The reachability check ``sfprov acls`` makes first: the broker answers."""
        return types.SimpleNamespace(topics={}, brokers={1: object()})

    def describe_acls(self, acl_filter: Any, **kwargs: Any) -> Future:
        self.described.append(acl_filter)
        future: Future = Future()
        future.set_result([b for b in self.on_broker if self._matches(acl_filter, b)])
        return future

    def delete_acls(self, filters: list[Any], **kwargs: Any) -> dict[Any, Future]:
        out = {}
        for acl_filter in filters:
            self.deleted.append(acl_filter)
            hit = [b for b in self.on_broker if self._matches(acl_filter, b)]
            self.on_broker = [b for b in self.on_broker if b not in hit]
            out[acl_filter] = Future()
            out[acl_filter].set_result(hit)
        return out


@pytest.fixture
def cluster(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[FakeAdmin, list[Any], Any]]:
    """A fake cluster holding the generated ACLs of ``-b b:9096 --prefix prod.``, the worker's
    group PREFIXED rule of before 08e415b, a DENY of the worker's and another principal's
    grant; ``sfprov acls`` talks to it."""
    from confluent_kafka.admin import AclBinding, AclOperation, AclPermissionType

    import common.kafka
    from ops.acls import bindings

    monkeypatch.setenv("SFPROV_ENV_FILE", os.devnull)
    monkeypatch.setenv("SFPROV_STATE_DIR", "/nonexistent")
    kafka = KafkaSettings.load(None, bootstrap_servers="b:9096", topic_prefix="prod.")
    generated = acls(kafka, worker=WorkerSettings.load(), sink=SinkSettings.load(),
                     connector=ConnectorSettings.load())
    app_id = kafka.topic(WorkerSettings.load().app_id)
    [old] = bindings([Acl(P.worker, "GROUP", app_id, "READ", "PREFIXED")])
    [deny] = bindings([Acl(P.worker, "TOPIC", KAFKA.connector_offsets, "READ")])
    deny = AclBinding(deny.restype, deny.name, deny.resource_pattern_type, deny.principal,
                      deny.host, AclOperation.READ, AclPermissionType.DENY)
    [foreign] = bindings([Acl("User:someone-else", "GROUP", "x", "READ", "PREFIXED")])
    admin = FakeAdmin([*bindings(generated), old, deny, foreign])
    monkeypatch.setattr(common.kafka, "admin_client", lambda *a, **k: admin)
    yield admin, bindings(generated), old


def sfprov_acls(*argv: str) -> int:
    from ops.cli import main

    return main(["-b", "b:9096", "--prefix", "prod.", "acls", *argv])


def test_check_lists_a_stale_grant_as_a_remove_command_and_exits_2(cluster, capsys):
    admin, generated, old = cluster
    assert sfprov_acls("--check") == 2
    out = capsys.readouterr().out
    commands = [shlex.split(line) for line in out.splitlines() if not line.startswith("#")]
    assert commands == [
        ["kafka-acls", "--bootstrap-server", "b:9096", "--command-config", "admin.properties",
         "--remove", "--force", "--allow-principal", P.worker, "--operation", "Read",
         "--group", old.name, "--resource-pattern-type", "prefixed"]]
    # one filter per principal of the pipeline, never the whole cluster's ACLs
    assert sorted(f.principal for f in admin.described) == sorted(
        {P.connector, P.worker, P.sink, P.ops})
    assert admin.deleted == []

    admin.on_broker.remove(old)
    assert sfprov_acls("--check") == 0
    out = capsys.readouterr().out
    assert not [line for line in out.splitlines() if not line.startswith("#")]


def test_prune_deletes_the_stale_grant_only(cluster, capsys):
    from confluent_kafka.admin import AclPermissionType

    admin, generated, old = cluster
    assert sfprov_acls("--prune") == 0
    assert [f._to_tuple() for f in admin.deleted] == [old._to_tuple()]
    assert old not in admin.on_broker and set(generated) <= set(admin.on_broker)
    assert any(b.permission_type == AclPermissionType.DENY for b in admin.on_broker)
    out = capsys.readouterr().out
    assert "removed 1 ACL" in out and old.name in out
    # nothing left to prune
    assert sfprov_acls("--check") == 0
