"""Least-privilege ACLs per process, generated from the topic declarations.

Each process runs as its own principal and may do only what its code does:

========== ============================================================================
connector  write requests, dead letters, replay gaps; read and write its offsets topic;
           its transactional id; the throwaway groups of its position reader; for the
           reconciliation passes: read requests and outcomes, describe the worker's group
worker     read requests in its group; write outcomes and dead letters; create, read and
           write its tables' changelogs (``<app id>-<table>-changelog``); create and read
           faust's leader topic ``<app id>-__assignor-__leader`` (its LeaderAssignor declares
           it and subscribes to it, nothing writes it); its group ``<app id>`` and those
           of its commit gate, changelog repair and stall watchdog (``<app id>-checkpoint``,
           ``-repair``, ``-watchdog``)
sink       read outcomes in its group ``<group>`` (and its lag gauge's,
           ``<group>-watchdog``); write dead letters
ops        read every topic (``sfprov tail``, ``dlq``, ``trace``, ``topics``); describe
           the worker's and sink's groups (``lag``); its throwaway groups
========== ============================================================================

A principal may also describe the configs of the topics its process checks at start-up
(``common.kafka.ensure_topics``, for its drift report) — only those: not the connector's
outcomes (read by its reconciliation passes alone), not faust's leader topic — and ``ops``
those of every declared topic (``sfprov topics``). The worker's and the sink's names are
granted LITERALLY, each one: environments sharing a cluster are told apart by ``WORKER_APP_ID`` and ``SINK_GROUP_ID``,
and a prefix ``sfprov-worker`` would also give staging's worker prod's ``sfprov-worker-prod``
(its group's offsets, its intents changelog). Only throwaway groups with a random suffix are
PREFIXED, on a prefix that ends in ``-``. Nothing may create the project's topics but an admin
(``make topics``), and ``replay``, ``reconcile`` and ``dlq requeue`` need more than ``ops``:
run them as a principal allowed to (see the README).

:func:`acls` builds the set; :func:`kafka_acls_lines` renders it as ``kafka-acls``
commands for a real cluster (``sfprov acls``); :func:`apply` creates it through the admin
API (the local secured broker). Creating never removes: a grant the set no longer holds (a
rule narrowed, a renamed ``WORKER_APP_ID``, ``SINK_GROUP_ID`` or ``KAFKA_TOPIC_PREFIX``)
stays on the cluster until removed. :func:`extra_bindings` lists the ALLOW rules of the
pipeline's principals that the set lacks (``sfprov acls --check``, as ``kafka-acls --remove``
commands: :func:`kafka_acls_remove_lines`) and :func:`prune` deletes them (``--prune``).
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any

from common.kafka import changelog_topics, declared_topics
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


def _topic(principal: str, name: str, *operations: str, checked: Collection[str]) -> list[Acl]:
    """``operations`` on the topic ``name``, and DESCRIBE_CONFIGS if ``name`` is one of the
    topics ``checked`` by the principal's process at start-up (its drift report)."""
    described = ("DESCRIBE_CONFIGS",) if name in checked else ()
    return [Acl(principal, "TOPIC", name, op) for op in (*operations, *described)]


def acls(kafka: KafkaSettings, principals: Principals = Principals(), *,
         worker: WorkerSettings | None = None, sink: SinkSettings | None = None,
         connector: ConnectorSettings | None = None) -> list[Acl]:
    """The ACL set of the pipeline whose topics ``kafka`` declares (sorted, no duplicates)."""
    worker = worker or WorkerSettings.load({})
    sink = sink or SinkSettings.load({})
    connector = connector or ConnectorSettings.load({})
    app_id, sink_group = kafka.topic(worker.app_id), kafka.topic(sink.group_id)
    c, w, s, o = principals.connector, principals.worker, principals.sink, principals.ops
    # the topics whose configs each process describes: those of its ensure_topics call
    # (connectors.__main__, streams.__main__, sinks.__main__); ops': ``sfprov topics``
    cc = {kafka.requests, kafka.dead_letters, kafka.connector_offsets, kafka.replay_gaps}
    changelogs = [spec.name for spec in changelog_topics(kafka, app_id)]
    [leader] = [name for name in worker_topics(kafka, app_id) if name not in changelogs]
    wc = {kafka.requests, kafka.outcomes, kafka.dead_letters, *changelogs}
    sc = {kafka.outcomes, kafka.dead_letters}
    oc = {spec.name for spec in declared_topics(kafka)}
    rules: list[Acl] = [
        *_topic(c, kafka.requests, "WRITE", checked=cc),
        *_topic(c, kafka.dead_letters, "WRITE", checked=cc),
        *_topic(c, kafka.replay_gaps, "READ", "WRITE", checked=cc),  # READ: a gap re-armed
        *_topic(c, kafka.connector_offsets, "READ", "WRITE", checked=cc),
        Acl(c, "TRANSACTIONAL_ID", transactional_id(kafka, connector.name, connector.channel),
            "WRITE"),
        Acl(c, "GROUP", OFFSET_READER_GROUP_PREFIX, "READ", "PREFIXED"),
        # the reconciliation passes (connectors.reconciler): read what was requested and
        # decided, and how far the worker's group has consumed
        *_topic(c, kafka.outcomes, "READ", checked=cc),
        *_topic(c, kafka.requests, "READ", checked=cc),
        Acl(c, "GROUP", RECONCILE_GROUP_PREFIX, "READ", "PREFIXED"),
        Acl(c, "GROUP", app_id, "DESCRIBE"),

        *_topic(w, kafka.requests, "READ", checked=wc),
        *_topic(w, kafka.outcomes, "WRITE", checked=wc),
        *_topic(w, kafka.dead_letters, "WRITE", checked=wc),
        *[acl for name in changelogs
          for acl in _topic(w, name, "CREATE", "READ", "WRITE", checked=wc)],
        # faust's LeaderAssignor declares its topic (CREATE) and subscribes to it (READ,
        # which implies DESCRIBE); nothing writes it
        *_topic(w, leader, "CREATE", "READ", checked=wc),
        *[Acl(w, "GROUP", app_id + suffix, "READ") for suffix in ("", *WORKER_GROUP_SUFFIXES)],

        *_topic(s, kafka.outcomes, "READ", checked=sc),
        *_topic(s, kafka.dead_letters, "WRITE", checked=sc),
        *[Acl(s, "GROUP", sink_group + suffix, "READ") for suffix in ("", *SINK_GROUP_SUFFIXES)],

        *[acl for name in (kafka.requests, kafka.outcomes, kafka.dead_letters,
                           kafka.connector_offsets, kafka.replay_gaps)
          for acl in _topic(o, name, "READ", checked=oc)],
        Acl(o, "GROUP", CLI_GROUP_PREFIX, "READ", "PREFIXED"),
        Acl(o, "GROUP", app_id, "DESCRIBE"),
        Acl(o, "GROUP", sink_group, "DESCRIBE"),
    ]
    return sorted(set(rules))


_RESOURCE_FLAGS = {"TOPIC": "--topic", "GROUP": "--group",
                   "TRANSACTIONAL_ID": "--transactional-id"}
# resources only a binding found on the cluster may name (sfprov acls --check)
_OTHER_RESOURCE_FLAGS = {"DELEGATION_TOKEN": "--delegation-token", "USER": "--user-principal"}


def _operation_flag(operation: str) -> str:
    """kafka-acls' name of an operation: ``DESCRIBE_CONFIGS`` → ``DescribeConfigs``."""
    return "".join(word.capitalize() for word in operation.split("_"))


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
            parts += ["--operation", _operation_flag(op)]
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


def extra_bindings(admin: Any, rules: Iterable[Acl], principals: Iterable[str],
                   timeout: float = 30.0) -> list[Any]:
    """The ALLOW bindings the cluster holds for ``principals`` that ``rules`` lacks (sorted
    ``AclBinding`` objects): grants left by an older generated set, a renamed app id,
    group or prefix, or added by hand. One ``describe_acls`` filtered on each principal —
    other principals' ACLs are never read. A DENY rule grants nothing and is left out; so
    are rules for ``User:*``, which are not these principals' own."""
    from confluent_kafka.admin import (
        AclBindingFilter,
        AclOperation,
        AclPermissionType,
        ResourcePatternType,
        ResourceType,
    )

    wanted = set(bindings(rules))
    extra: set[Any] = set()
    anything: Any = None  # a filter's "any name", "any host" (the stubs only say str)
    for principal in sorted(set(principals)):
        of_principal = AclBindingFilter(ResourceType.ANY, anything, ResourcePatternType.ANY,
                                        principal, anything, AclOperation.ANY,
                                        AclPermissionType.ALLOW)
        found = admin.describe_acls(of_principal, request_timeout=timeout).result()
        extra.update(b for b in found if b not in wanted)
    return sorted(extra)


def prune(admin: Any, extra: Iterable[Any], timeout: float = 30.0,
          ) -> tuple[list[Any], list[tuple[Any, str]]]:
    """Delete exactly the bindings ``extra`` (:func:`extra_bindings`), each through a filter
    that names all of its fields, so nothing else can match. Returns what the broker
    removed and, for each binding it refused to remove, the reason."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AclBindingFilter

    filters = {AclBindingFilter(b.restype, b.name, b.resource_pattern_type, b.principal,
                                b.host, b.operation, b.permission_type): b for b in extra}
    if not filters:
        return [], []
    removed: set[Any] = set()
    failed: list[tuple[Any, str]] = []
    for acl_filter, future in admin.delete_acls(list(filters), request_timeout=timeout).items():
        try:
            removed.update(future.result())
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            reason = err.str() if isinstance(err, KafkaError) else str(exc)
            failed.append((filters[acl_filter], reason))
    return sorted(removed), failed


def describe_binding(binding: Any) -> str:
    """One ALLOW binding in a line: ``User:w Read on GROUP sfprov-worker (PREFIXED)``."""
    host = "" if binding.host == "*" else f" from {binding.host}"
    return (f"{binding.principal} {_operation_flag(binding.operation.name)} on "
            f"{binding.restype.name} {binding.name} ({binding.resource_pattern_type.name})"
            f"{host}")


def kafka_acls_remove_lines(found: Iterable[Any], bootstrap: str,
                            command_config: str = "admin.properties") -> list[str]:
    """One ``kafka-acls --remove --force`` command per binding found on the cluster
    (:func:`extra_bindings`: ALLOW ones), removing exactly it; a resource kafka-acls cannot
    name is a ``#`` comment."""
    lines = []
    for b in found:
        parts = ["kafka-acls", "--bootstrap-server", bootstrap,
                 "--command-config", command_config, "--remove", "--force",
                 "--allow-principal", b.principal]
        if b.host != "*":
            parts += ["--allow-host", b.host]
        parts += ["--operation", _operation_flag(b.operation.name)]
        resource = b.restype.name
        if resource == "CLUSTER":
            parts += ["--cluster"]
        elif resource in _RESOURCE_FLAGS or resource in _OTHER_RESOURCE_FLAGS:
            parts += [{**_RESOURCE_FLAGS, **_OTHER_RESOURCE_FLAGS}[resource], b.name]
        else:
            lines.append(f"# not removable with kafka-acls: {describe_binding(b)}")
            continue
        if b.resource_pattern_type.name == "PREFIXED":
            parts += ["--resource-pattern-type", "prefixed"]
        lines.append(" ".join(shlex.quote(p) for p in parts))
    return lines


# -- sfprov acls ------------------------------------------------------------------------

#: How long ``sfprov acls --apply/--check/--prune`` waits for a broker to answer at all
#: before the ACL requests (each given 30 s): the other commands' 10 s.
REACH_TIMEOUT_S = 10.0


def command(args: Any) -> int:
    """Print (or ``--apply``) the ACLs of the pipeline configured in the environment;
    ``--check``/``--prune`` the ones its principals hold beyond them."""
    from common.kafka import admin_client
    from ops.cli import kafka_settings
    from ops.kafkaview import QUIET

    kafka = kafka_settings(args)
    principals = Principals(connector=args.connector_principal, worker=args.worker_principal,
                            sink=args.sink_principal, ops=args.ops_principal)
    rules = acls(kafka, principals, worker=WorkerSettings.load(), sink=SinkSettings.load(),
                 connector=ConnectorSettings.load())
    admin = (admin_client(kafka, **QUIET)
             if args.apply or args.check or args.prune else None)
    if admin is not None:
        # no broker: the one line of every command (ops.cli.main) after list_topics' 10 s, as
        # the others say it (ops.cmd_replay), not after the ACL requests' own 30 s
        admin.list_topics(timeout=REACH_TIMEOUT_S)
    if args.apply:
        count = apply(admin, rules)
        print(f"created {count} ACLs on {kafka.bootstrap_servers} (existing ones unchanged)")
        if not (args.check or args.prune):
            return 0
    if args.check or args.prune:
        names = sorted({principals.connector, principals.worker, principals.sink,
                        principals.ops})
        extra = extra_bindings(admin, rules, names)
        whose = f"of {', '.join(names)} on {kafka.bootstrap_servers}"
        if not extra:
            print(f"# no ACLs {whose} beyond the {len(rules)} generated")
            return 0
        if args.check:
            print(f"# {len(extra)} ACLs {whose} beyond the {len(rules)} generated; remove "
                  "them as a principal allowed to alter ACLs (or: sfprov acls --prune)")
            for line in kafka_acls_remove_lines(extra, kafka.bootstrap_servers,
                                                args.command_config):
                print(line)
            return 2
        removed, failed = prune(admin, extra)
        for binding in removed:
            print(f"removed {describe_binding(binding)}")
        print(f"removed {len(removed)} ACL{'' if len(removed) == 1 else 's'} {whose} "
              f"beyond the {len(rules)} generated")
        for binding, reason in failed:
            print(f"error: cannot remove {describe_binding(binding)}: {reason}",
                  file=sys.stderr)
        return 1 if failed else 0
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
    stale = p.add_mutually_exclusive_group()
    stale.add_argument("--check", action="store_true",
                       help="list the ALLOW ACLs the cluster holds for these principals "
                            "beyond the generated ones (stale grants) as kafka-acls --remove "
                            "commands; exit 2 if there are any, 0 if none")
    stale.add_argument("--prune", action="store_true",
                       help="delete those ACLs through the admin API and print each one "
                            "removed (run --check first: the settings must be the "
                            "pipeline's, or its live grants are the ones found extra)")
    p.set_defaults(func=command)


COMMANDS = [
    ("acls", "The least-privilege ACLs of every process, as kafka-acls commands; "
             "--check/--prune the stale ones the cluster still holds.", configure),
]
