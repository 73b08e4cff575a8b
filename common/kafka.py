"""Kafka helpers: the project's topics declared in one place, and their creation.

:func:`declared_topics` is the single source of truth for names, partitions and configs;
:func:`ensure_topics` creates what is missing and reports configs that drifted (it never
changes an existing topic behind the operator's back).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from common.errors import KafkaError
from common.settings import KafkaSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    replication_factor: int
    config: dict[str, str] = field(default_factory=dict)
    purpose: str = ""


def declared_topics(settings: KafkaSettings) -> list[TopicSpec]:
    rf = settings.replication_factor
    isr = str(settings.min_insync_replicas)
    long_keep = str(settings.outcomes_retention_ms)
    return [
        TopicSpec(settings.requests, settings.partitions, rf,
                  {"cleanup.policy": "delete",
                   "retention.ms": str(settings.requests_retention_ms),
                   "min.insync.replicas": isr},
                  "platform events from Salesforce, key OrderId__c"),
        TopicSpec(settings.outcomes, settings.partitions, rf,
                  {"cleanup.policy": "delete", "retention.ms": long_keep,
                   "min.insync.replicas": isr},
                  "provisioning outcomes, key order id"),
        TopicSpec(settings.dead_letters, 3, rf,
                  {"cleanup.policy": "delete", "retention.ms": long_keep,
                   "min.insync.replicas": isr},
                  "records no stage could process, reason in headers"),
        TopicSpec(settings.connector_offsets, 1, rf,
                  {"cleanup.policy": "compact", "retention.ms": "-1",
                   "min.insync.replicas": isr, "min.compaction.lag.ms": "0",
                   "segment.ms": str(24 * 3600 * 1000)},
                  "connector replay positions (compacted)"),
        TopicSpec(settings.replay_gaps, 1, rf,
                  {"cleanup.policy": "delete", "retention.ms": "-1",
                   "min.insync.replicas": isr},
                  "replay-id gaps the connector recorded"),
    ]


def admin_client(bootstrap_servers: str, **extra: Any) -> AdminClient:
    return AdminClient({"bootstrap.servers": bootstrap_servers, **extra})


@dataclass
class EnsureReport:
    created: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)
    drift: list[str] = field(default_factory=list)  # human-readable lines

    @property
    def ok(self) -> bool:
        return not self.drift


def ensure_topics(settings: KafkaSettings, *, timeout: float = 30.0,
                  admin: AdminClient | None = None) -> EnsureReport:
    """Create missing topics; report partition/config drift of existing ones. Idempotent."""
    admin = admin or admin_client(settings.bootstrap_servers)
    specs = declared_topics(settings)
    report = EnsureReport()
    try:
        metadata = admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        raise KafkaError(f"cannot reach Kafka at {settings.bootstrap_servers}: {exc}",
                         retryable=True) from exc
    missing = [s for s in specs if s.name not in metadata.topics]
    if missing:
        futures = admin.create_topics(
            [NewTopic(s.name, num_partitions=s.partitions, replication_factor=s.replication_factor,
                      config=s.config) for s in missing],
            operation_timeout=timeout, request_timeout=timeout)
        for name, fut in futures.items():
            try:
                fut.result()
                report.created.append(name)
            except KafkaException as exc:
                if exc.args and exc.args[0].name() == "TOPIC_ALREADY_EXISTS":
                    report.existing.append(name)
                else:
                    raise KafkaError(f"creating topic {name}: {exc}") from exc
    present = [s for s in specs if s.name in metadata.topics]
    report.existing.extend(s.name for s in present)
    report.drift.extend(describe_drift(admin, present, metadata, timeout=timeout))
    return report


def describe_drift(admin: AdminClient, specs: list[TopicSpec], metadata: Any, *,
                   timeout: float = 30.0) -> list[str]:
    """Lines describing where existing topics differ from their declaration."""
    lines: list[str] = []
    if not specs:
        return lines
    resources = [ConfigResource(ConfigResource.Type.TOPIC, s.name) for s in specs]
    configs = admin.describe_configs(resources, request_timeout=timeout)
    for spec, resource in zip(specs, resources, strict=True):
        actual_partitions = len(metadata.topics[spec.name].partitions)
        if actual_partitions != spec.partitions:
            lines.append(f"{spec.name}: partitions {actual_partitions}, declared {spec.partitions}")
        entries = configs[resource].result()
        for key, want in spec.config.items():
            have = entries[key].value if key in entries else None
            if have != want:
                lines.append(f"{spec.name}: {key}={have}, declared {want}")
    return lines
