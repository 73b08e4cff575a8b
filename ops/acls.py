"""Least-privilege ACLs per process, generated from the topic declarations.

Each process runs as its own principal and may do only what its code does:

========== ============================================================================
connector  write requests, dead letters, replay gaps; read and write its offsets topic;
           its transactional id; the throwaway groups of its position reader; for the
           reconciliation passes: read requests and outcomes, describe the worker's group
worker     read requests in its group; write outcomes and dead letters; create, read and
           write its own topics (faust's changelogs ``<app id>-<table>-changelog`` and
           leader topic ``<app id>-__assignor-__leader``); its group ``<app id>`` and those
           of its commit gate, changelog repair and stall watchdog (``<app id>-checkpoint``,
           ``-repair``, ``-watchdog``)
sink       read outcomes in its group ``<group>`` (and its lag gauge's,
           ``<group>-watchdog``); write dead letters
ops        read every topic (``sfprov tail``, ``dlq``, ``trace``, ``topics``); describe
           the worker's and sink's groups (``lag``); its throwaway groups
========== ============================================================================

Every principal may also describe the configs of the topics it uses, so a process can
report topic drift at start-up. The worker's and the sink's names are granted LITERALLY, each
one: environments sharing a cluster are told apart by ``WORKER_APP_ID`` and ``SINK_GROUP_ID``,
and a prefix ``sfprov-worker`` would also give staging's worker prod's ``sfprov-worker-prod``
(its group's offsets, its intents changelog). Only throwaway groups with a random suffix are
PREFIXED, on a prefix that ends in ``-``. Nothing may create the project's topics but an admin
(``make topics``), and ``replay``, ``reconcile`` and ``dlq requeue`` need more than ``ops``:
run them as a principal allowed to (see the README).

:func:`acls` builds the set; :func:`kafka_acls_lines` renders it as ``kafka-acls``
commands for a real cluster (``sfprov acls``); :func:`apply` creates it through the admin
API (the local secured broker).
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from common.kafka import changelog_topics
from common.settings import ConnectorSettings, KafkaSettings, SinkSettings, WorkerSettings
from connectors.writer import transactional_id

OFFSET_READER_GROUP_PREFIX = "sfprov-offset-reader-"  # connectors.offsets.load_position
CLI_GROUP_PREFIX = "sfprov-cli-"  # ops.kafkaview.consumer
RECONCILE_GROUP_PREFIX = "sfprov-reconcile-"  # common.reconcile._consumer
# the worker's groups besides faust's own (the app id): "<app id><suffix>"
WORKER_GROUP_SUFFIXES = (
    "-checkpoint",  # streams.checkpoint.BrokerRangeReader (the commit gate's range reader)
    "-repair",  # streams.repair.ChangelogReader
    "-watchdog",  # common.lag.lag_reader (the stall watchdog and the lag gauges)
)
# the sink's groups besides its own: "<group><suffix>"
SINK_GROUP_SUFFIXES = ("-watchdog",)  # common.lag.lag_reader (its lag gauge)


def worker_topics(kafka: KafkaSettings, app_id: str) -> list[str]:
    """The topics the worker creates and uses besides the pipeline's: its tables' changelogs
    (common.kafka.changelog_topics, faust's ``Collection._changelog_topic_name``) and faust's
    leader topic (``faust.assignor.LeaderAssignor._leader_topic_name``). ``app_id``: with
    the topic prefix; faust's id is the app id itself (no ``version`` > 1 is set)."""
    return [*(spec.name for spec in changelog_topics(kafka, app_id)),
            f"{app_id}-__assignor-__leader"]


@dataclass(frozen=True, order=True)
class Acl:
    """One ALLOW rule: ``principal`` may ``operation`` the ``resource`` named ``name``
    (``pattern`` LITERAL: exactly that name; PREFIXED: every name starting with it)."""

    principal: str
    resource: str  # TOPIC, GROUP, TRANSACTIONAL_ID
    name: str
    operation: str  # READ, WRITE, CREATE, DESCRIBE, DESCRIBE_CONFIGS
    pattern: str = "LITERAL"


@dataclass(frozen=True)
class Principals:
    connector: str = "User:sfprov-connector"
    worker: str = "User:sfprov-worker"
    sink: str = "User:sfprov-sink"
    ops: str = "User:sfprov-ops"


def _topic(principal: str, name: str, *operations: str, pattern: str = "LITERAL") -> list[Acl]:
    return [Acl(principal, "TOPIC", name, op, pattern)
            for op in (*operations, "DESCRIBE_CONFIGS")]


def acls(kafka: KafkaSettings, principals: Principals = Principals(), *,
         worker: WorkerSettings | None = None, sink: SinkSettings | None = None,
         connector: ConnectorSettings | None = None) -> list[Acl]:
    """The ACL set of the pipeline whose topics ``kafka`` declares (sorted, no duplicates)."""
    worker = worker or WorkerSettings.load({})
    sink = sink or SinkSettings.load({})
    connector = connector or ConnectorSettings.load({})
    app_id, sink_group = kafka.topic(worker.app_id), kafka.topic(sink.group_id)
    c, w, s, o = principals.connector, principals.worker, principals.sink, principals.ops
    rules: list[Acl] = [
        *_topic(c, kafka.requests, "WRITE"),
        *_topic(c, kafka.dead_letters, "WRITE"),
        *_topic(c, kafka.replay_gaps, "READ", "WRITE"),  # READ: a gap re-armed at start
        *_topic(c, kafka.connector_offsets, "READ", "WRITE"),
        Acl(c, "TRANSACTIONAL_ID", transactional_id(kafka, connector.name, connector.channel),
            "WRITE"),
        Acl(c, "GROUP", OFFSET_READER_GROUP_PREFIX, "READ", "PREFIXED"),
        # the reconciliation passes (connectors.reconciler): read what was requested and
        # decided, and how far the worker's group has consumed
        *_topic(c, kafka.outcomes, "READ"),
        *_topic(c, kafka.requests, "READ"),
        Acl(c, "GROUP", RECONCILE_GROUP_PREFIX, "READ", "PREFIXED"),
        Acl(c, "GROUP", app_id, "DESCRIBE"),

        *_topic(w, kafka.requests, "READ"),
        *_topic(w, kafka.outcomes, "WRITE"),
        *_topic(w, kafka.dead_letters, "WRITE"),
        *[acl for name in worker_topics(kafka, app_id)
          for acl in _topic(w, name, "CREATE", "READ", "WRITE")],
        *[Acl(w, "GROUP", app_id + suffix, "READ") for suffix in ("", *WORKER_GROUP_SUFFIXES)],

        *_topic(s, kafka.outcomes, "READ"),
        *_topic(s, kafka.dead_letters, "WRITE"),
        *[Acl(s, "GROUP", sink_group + suffix, "READ") for suffix in ("", *SINK_GROUP_SUFFIXES)],

        *[acl for name in (kafka.requests, kafka.outcomes, kafka.dead_letters,
                           kafka.connector_offsets, kafka.replay_gaps)
          for acl in _topic(o, name, "READ")],
        Acl(o, "GROUP", CLI_GROUP_PREFIX, "READ", "PREFIXED"),
        Acl(o, "GROUP", app_id, "DESCRIBE"),
        Acl(o, "GROUP", sink_group, "DESCRIBE"),
    ]
    return sorted(set(rules))


_OPERATION_FLAGS = {"READ": "Read", "WRITE": "Write", "CREATE": "Create",
                    "DESCRIBE": "Describe", "DESCRIBE_CONFIGS": "DescribeConfigs"}
_RESOURCE_FLAGS = {"TOPIC": "--topic", "GROUP": "--group",
                   "TRANSACTIONAL_ID": "--transactional-id"}


def kafka_acls_lines(rules: Iterable[Acl], bootstrap: str,
                     command_config: str = "admin.properties") -> list[str]:
    """One ``kafka-acls --add`` command per principal and resource (operations merged)."""
    grouped: dict[tuple[str, str, str, str], list[str]] = {}
    for rule in rules:
        key = (rule.principal, rule.resource, rule.name, rule.pattern)
        grouped.setdefault(key, []).append(rule.operation)
    lines = []
    for (principal, resource, name, pattern), operations in grouped.items():
        parts = ["kafka-acls", "--bootstrap-server", bootstrap,
                 "--command-config", command_config, "--add",
                 "--allow-principal", principal]
        for op in sorted(set(operations)):
            parts += ["--operation", _OPERATION_FLAGS[op]]
        parts += [_RESOURCE_FLAGS[resource], name]
        if pattern == "PREFIXED":
            parts += ["--resource-pattern-type", "prefixed"]
        lines.append(" ".join(shlex.quote(p) for p in parts))
    return lines


def bindings(rules: Iterable[Acl]) -> list[Any]:
    """The rules as confluent-kafka ``AclBinding`` objects."""
    from confluent_kafka.admin import (
        AclBinding,
        AclOperation,
        AclPermissionType,
        ResourcePatternType,
        ResourceType,
    )

    return [AclBinding(ResourceType[r.resource], r.name, ResourcePatternType[r.pattern],
                       r.principal, "*", AclOperation[r.operation], AclPermissionType.ALLOW)
            for r in rules]


def apply(admin: Any, rules: Iterable[Acl], timeout: float = 30.0) -> int:
    """Create the ACLs (creating an existing one is a no-op); returns how many."""
    wanted = bindings(rules)
    if not wanted:
        return 0
    for future in admin.create_acls(wanted, request_timeout=timeout).values():
        future.result()
    return len(wanted)


# -- sfprov acls ------------------------------------------------------------------------

def command(args: Any) -> int:
    """Print (or ``--apply``) the ACLs of the pipeline configured in the environment."""
    from common.kafka import admin_client
    from ops.cli import kafka_settings
    from ops.kafkaview import QUIET

    kafka = kafka_settings(args)
    principals = Principals(connector=args.connector_principal, worker=args.worker_principal,
                            sink=args.sink_principal, ops=args.ops_principal)
    rules = acls(kafka, principals, worker=WorkerSettings.load(), sink=SinkSettings.load(),
                 connector=ConnectorSettings.load())
    if args.apply:
        count = apply(admin_client(kafka, **QUIET), rules)
        print(f"created {count} ACLs on {kafka.bootstrap_servers} (existing ones unchanged)")
        return 0
    print(f"# least-privilege ACLs of the sfprov pipeline, {len(rules)} rules; run as a "
          "principal allowed to alter ACLs")
    for line in kafka_acls_lines(rules, kafka.bootstrap_servers, args.command_config):
        print(line)
    return 0


def configure(p: Any) -> None:
    from ops.cli import add

    defaults = Principals()
    add(p, "--connector-principal", env="SFPROV_ACL_CONNECTOR", default=defaults.connector,
        help="principal of the source connector")
    add(p, "--worker-principal", env="SFPROV_ACL_WORKER", default=defaults.worker,
        help="principal of the provisioning worker")
    add(p, "--sink-principal", env="SFPROV_ACL_SINK", default=defaults.sink,
        help="principal of the Salesforce sink")
    add(p, "--ops-principal", env="SFPROV_ACL_OPS", default=defaults.ops,
        help="principal of read-only operators (sfprov tail, lag, trace)")
    p.add_argument("--command-config", default="admin.properties",
                   help="the admin's client.properties named in the printed commands")
    p.add_argument("--apply", action="store_true",
                   help="create the ACLs through the admin API as the configured principal "
                        "instead of printing kafka-acls commands")
    p.set_defaults(func=command)


COMMANDS = [
    ("acls", "The least-privilege ACLs of every process, as kafka-acls commands.", configure),
]
