"""The worker creates its tables' changelogs before it joins (common.kafka.changelog_topics):
the names must be faust's own, and the topics compacted with the declared min ISR."""

from __future__ import annotations

import gc
import weakref

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource
from prometheus_client import REGISTRY

from common.kafka import changelog_topics, ensure_topics
from common.settings import CommonSettings, KafkaSettings, WhmcsSettings, WorkerSettings

WHMCS = {"WHMCS_API_URL": "http://127.0.0.1:9/includes/api.php",
         "WHMCS_API_IDENTIFIER": "id", "WHMCS_API_SECRET": "secret"}


@pytest.mark.broker  # the Worker's own clients connect as it is built
def test_the_declared_changelogs_are_the_names_faust_gives_the_worker_tables(tmp_path,
                                                                            kafka_bootstrap):
    from streams.app import Worker

    kafka = KafkaSettings.load({}, bootstrap_servers=kafka_bootstrap, topic_prefix="t1.")
    worker = WorkerSettings.load({})
    built = Worker(kafka=kafka, worker=worker, whmcs=WhmcsSettings.load(WHMCS),
                   sf_client=None,  # type: ignore[arg-type]
                   common=CommonSettings.load({}, state_dir=tmp_path))
    faust_names = sorted(t.changelog_topic.get_topic_name() for t in built.app.tables.values())
    declared = sorted(s.name for s in changelog_topics(kafka, kafka.topic(worker.app_id)))
    assert declared == faust_names == ["t1.sfprov-worker-idem-changelog",
                                       "t1.sfprov-worker-intents-changelog"]

    # nothing module-level (faust's signals, the gauges) keeps a Worker, or its Kafka
    # clients, once its owner lets go of it: they went on connecting to the session's
    # broker after it stopped
    built.ops.inflight.started((0, 1), since=None)
    assert REGISTRY.get_sample_value("sfprov_worker_events_in_flight") == 1
    gone = weakref.ref(built)
    del built
    gc.collect()
    assert gone() is None
    assert REGISTRY.get_sample_value("sfprov_worker_events_in_flight") == 0


@pytest.mark.broker  # the Worker's own clients connect as it is built
def test_a_member_is_not_dropped_from_a_rebalance_while_its_lease_holds(tmp_path,
                                                                       kafka_bootstrap):
    """The coordinator drops a member that has not rejoined within the rebalance timeout
    (faust's default 60 s); the ownership lease, counted from heartbeats alone, lasts the
    session timeout minus the margin (a third by default): with a session of 150 s a
    paused member kept writing to WHMCS for up to 40 s after its partitions had moved."""
    from streams.app import Worker

    kafka = KafkaSettings.load({}, bootstrap_servers=kafka_bootstrap, topic_prefix="t2.")
    for session in ("20", "150"):
        worker = WorkerSettings.load({"WORKER_SESSION_TIMEOUT_S": session})
        built = Worker(kafka=kafka, worker=worker, whmcs=WhmcsSettings.load(WHMCS),
                       sf_client=None,  # type: ignore[arg-type]
                       common=CommonSettings.load({}, state_dir=tmp_path / session))
        lease_s = worker.session_timeout_s - worker.lease_margin
        assert built.app.conf.broker_rebalance_timeout >= lease_s, session
        assert built.app.conf.broker_rebalance_timeout >= 60.0  # faust's, never shorter
        del built
        gc.collect()


@pytest.mark.broker
def test_the_worker_topics_are_created_with_their_changelogs_and_led(kafka_bootstrap,
                                                                      unique_name):
    kafka = KafkaSettings.load({}, bootstrap_servers=kafka_bootstrap,
                               topic_prefix=unique_name("cl") + ".", partitions=3)
    specs = changelog_topics(kafka, kafka.topic("sfprov-worker"))
    report = ensure_topics(kafka, only=(kafka.requests,), extra=specs)
    # a create retried after its first attempt reached the controller reports "existing"
    assert sorted(report.created + report.existing) == sorted(
        [kafka.requests, *(s.name for s in specs)])
    # returned only once each partition has a leader: visible to the next client at once
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    md = admin.list_topics(timeout=10)
    for spec in specs:
        assert len(md.topics[spec.name].partitions) == 3
        res = ConfigResource(ConfigResource.Type.TOPIC, spec.name)
        config = admin.describe_configs([res])[res].result()
        assert config["cleanup.policy"].value == "compact"
        assert config["min.insync.replicas"].value == str(kafka.min_insync_replicas)
    again = ensure_topics(kafka, only=(kafka.requests,), extra=specs)
    assert again.created == [] and again.ok
