"""Topics are declared once; creating them is idempotent and drift is reported."""

from __future__ import annotations

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource

from common.kafka import declared_topics, ensure_topics
from common.settings import KafkaSettings

pytestmark = pytest.mark.broker


def test_ensure_topics_is_idempotent_and_reports_drift(kafka_bootstrap, unique_name):
    settings = KafkaSettings.load({}, bootstrap_servers=kafka_bootstrap,
                                  topic_prefix=unique_name("t") + ".", partitions=4,
                                  requests_retention_ms=-1)
    first = ensure_topics(settings)
    # a create retried after its first attempt reached the controller reports "existing"
    assert sorted(first.created + first.existing) == sorted(
        s.name for s in declared_topics(settings))
    assert first.ok
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    md = admin.list_topics(timeout=10)
    assert len(md.topics[settings.requests].partitions) == 4
    res = ConfigResource(ConfigResource.Type.TOPIC, settings.connector_offsets)
    cfg = admin.describe_configs([res])[res].result()
    assert cfg["cleanup.policy"].value == "compact"
    res = ConfigResource(ConfigResource.Type.TOPIC, settings.requests)
    assert admin.describe_configs([res])[res].result()["retention.ms"].value == "-1"

    second = ensure_topics(settings)
    assert second.created == [] and second.ok

    drifted = KafkaSettings.load({}, bootstrap_servers=kafka_bootstrap,
                                 topic_prefix=settings.topic_prefix, partitions=4,
                                 requests_retention_ms=7 * 24 * 3600 * 1000)
    report = ensure_topics(drifted)
    assert report.created == []
    assert any(settings.requests in line and "retention.ms" in line for line in report.drift)


class _FormingCluster:
    """A real admin client whose first CreateTopics loses one topic's answer the way a
    forming cluster does (the bootstrap connection destroyed under the request)."""

    def __init__(self, admin: AdminClient) -> None:
        self.admin, self.calls = admin, 0

    def __getattr__(self, name):
        return getattr(self.admin, name)

    def create_topics(self, topics, **kwargs):
        from concurrent.futures import Future

        from confluent_kafka import KafkaError, KafkaException

        self.calls += 1
        if self.calls > 1:
            return self.admin.create_topics(topics, **kwargs)
        lost, rest = topics[0], topics[1:]
        futures = self.admin.create_topics(rest, **kwargs) if rest else {}
        failed: Future = Future()
        failed.set_exception(KafkaException(KafkaError(KafkaError._DESTROY_BROKER)))
        return {lost.topic: failed, **futures}


def test_a_topic_lost_to_a_forming_cluster_is_created_on_a_second_try(kafka_bootstrap,
                                                                       unique_name):
    settings = KafkaSettings.load({}, bootstrap_servers=kafka_bootstrap,
                                  topic_prefix=unique_name("t") + ".", partitions=2)
    admin = _FormingCluster(AdminClient({"bootstrap.servers": kafka_bootstrap}))
    report = ensure_topics(settings, admin=admin)
    assert admin.calls == 2
    assert sorted(report.created) == sorted(s.name for s in declared_topics(settings))
    assert settings.requests in admin.list_topics(timeout=10).topics


class _ControllerAway:
    """The real admin client, whose first ``describe_configs`` times out waiting for the
    controller (a chaos run: the sink started while the controller's node was paused)."""

    def __init__(self, admin: AdminClient) -> None:
        self.admin = admin
        self.calls = 0

    def __getattr__(self, name: str):
        return getattr(self.admin, name)

    def describe_configs(self, resources, **kwargs):
        from concurrent.futures import Future

        from confluent_kafka import KafkaError, KafkaException

        self.calls += 1
        if self.calls > 1:
            return self.admin.describe_configs(resources, **kwargs)
        failed: Future = Future()
        failed.set_exception(KafkaException(KafkaError(
            KafkaError._TIMED_OUT, "Failed while waiting for controller: Local: Timed out")))
        return {resource: failed for resource in resources}


def test_describing_configs_while_the_controller_is_away_is_tried_again(kafka_bootstrap,
                                                                          unique_name):
    settings = KafkaSettings.load({}, bootstrap_servers=kafka_bootstrap,
                                  topic_prefix=unique_name("t") + ".", partitions=2)
    ensure_topics(settings)
    admin = _ControllerAway(AdminClient({"bootstrap.servers": kafka_bootstrap}))
    report = ensure_topics(settings, admin=admin)   # every topic there: only the describe
    assert admin.calls == 2
    assert report.ok and not report.created
    assert sorted(report.existing) == sorted(s.name for s in declared_topics(settings))
