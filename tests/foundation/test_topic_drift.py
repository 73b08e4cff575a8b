"""Topic drift without a broker: the replication factor is compared with the declaration,
and a topic another process created first (TOPIC_ALREADY_EXISTS) is waited for and checked
like one this process created."""

from __future__ import annotations

import os
from concurrent.futures import Future
from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from common.kafka import (
    EnsureReport,
    TopicSpec,
    changelog_topics,
    declared_topics,
    dedupe_outlived,
    describe_drift,
    ensure_topics,
)
from common.settings import KafkaSettings, WorkerSettings


def _done(value: Any) -> Future:
    fut: Future = Future()
    fut.set_result(value)
    return fut


def _failed(code: int) -> Future:
    fut: Future = Future()
    fut.set_exception(KafkaException(KafkaError(code)))
    return fut


def _topic(replicas: list[list[int]], *, leader: int = 1) -> SimpleNamespace:
    """A topic's metadata: one partition per list of replica ids."""
    return SimpleNamespace(error=None, partitions={
        p: SimpleNamespace(id=p, leader=leader, replicas=r, isrs=r)
        for p, r in enumerate(replicas)})


def _entries(config: dict[str, str]) -> dict[str, SimpleNamespace]:
    return {key: SimpleNamespace(value=value) for key, value in config.items()}


class _Admin:
    """A fake admin client: ``configs`` per topic name answer ``describe_configs``."""

    def __init__(self, configs: dict[str, dict[str, str]]) -> None:
        self.configs = configs
        self.described: list[str] = []

    def describe_configs(self, resources: list[Any], **kwargs: Any) -> dict[Any, Future]:
        self.described.extend(r.name for r in resources)
        return {r: _done(_entries(self.configs[r.name])) for r in resources}


def test_fewer_replicas_than_declared_is_drift_and_min_isr_above_them_is_named():
    spec = TopicSpec("t", 2, 3, {"min.insync.replicas": "2"})
    metadata = SimpleNamespace(topics={"t": _topic([[1], [1]])})
    admin = _Admin({"t": {"min.insync.replicas": "2"}})
    drift = describe_drift(admin, [spec], metadata)   # type: ignore[arg-type]
    assert ("t: replication factor 1, declared 3 (fewer replicas than declared) — unsafe: a "
            "broker's loss can lose its records") in drift
    assert ("t: min.insync.replicas=2 exceeds its replication factor 1 "
            "(writes with acks=all cannot succeed) — unsafe: nothing can be written to it"
            ) in drift
    assert len(drift) == 2


def test_the_smallest_replica_count_across_partitions_is_reported():
    spec = TopicSpec("t", 3, 3, {})
    metadata = SimpleNamespace(topics={"t": _topic([[1, 2, 3], [1], [1, 2, 3]])})
    drift = describe_drift(_Admin({"t": {}}), [spec], metadata)   # type: ignore[arg-type]
    assert drift == ["t: replication factor 1, declared 3 (fewer replicas than declared) — "
                     "unsafe: a broker's loss can lose its records"]


def test_more_replicas_than_declared_is_drift_too():
    spec = TopicSpec("t", 1, 1, {})
    metadata = SimpleNamespace(topics={"t": _topic([[1, 2, 3]])})
    drift = describe_drift(_Admin({"t": {}}), [spec], metadata)   # type: ignore[arg-type]
    assert drift == ["t: replication factor 3, declared 1 (more replicas than declared)"]


def test_the_declared_replication_factor_is_no_drift():
    spec = TopicSpec("t", 2, 3, {"min.insync.replicas": "2"})
    metadata = SimpleNamespace(topics={"t": _topic([[1, 2, 3], [2, 3, 1]])})
    admin = _Admin({"t": {"min.insync.replicas": "2"}})
    assert describe_drift(admin, [spec], metadata) == []   # type: ignore[arg-type]


def test_a_broker_default_min_isr_above_the_replicas_is_named():
    """Not declared by the topic, but in effect (the broker's default): still unwritable."""
    spec = TopicSpec("t", 1, 1, {})
    metadata = SimpleNamespace(topics={"t": _topic([[1]])})
    admin = _Admin({"t": {"min.insync.replicas": "2"}})
    assert describe_drift(admin, [spec], metadata) == [   # type: ignore[arg-type]
        "t: min.insync.replicas=2 exceeds its replication factor 1 "
        "(writes with acks=all cannot succeed) — unsafe: nothing can be written to it"]


@pytest.mark.parametrize("config,why", [
    ({"cleanup.policy": "compact"}, "its records are kept otherwise than the pipeline relies on"),
    ({"retention.ms": "3600000"}, "it keeps records for less than Salesforce's 72 hours"),
    ({"min.insync.replicas": "1"}, "an acknowledged write can be lost with its leader"),
    ({"retention.ms": "-1"}, None),  # longer than declared: drift, not unsafe
    ({"retention.ms": "300000000"}, None),  # shorter, still past 72 h: drift only
    ({"min.insync.replicas": "3"}, None),  # stricter: drift only
    # a size limit (the cluster's log.retention.bytes, or set later): deleted by size, a
    # busy day's events gone before 72 h — not even reported before
    ({"retention.bytes": "1048576"}, "its records are deleted by size, whatever "
                                     "retention.ms says"),
])
def test_a_drift_that_breaks_a_guarantee_is_unsafe(config, why):
    """A compacted or 1-hour requests topic, a lowered min.insync.replicas: reported like
    a longer retention, in a line `--drift-ok` let pass and each process only warned of —
    while KAFKA_REQUESTS_RETENTION_MS under 72 h is refused as a setting."""
    settings = KafkaSettings.load({}, bootstrap_servers="127.0.0.1:1", partitions=1,
                                  replication_factor=3, min_insync_replicas=2)
    [spec] = [s for s in declared_topics(settings) if s.name == settings.requests]
    metadata = SimpleNamespace(topics={spec.name: _topic([[1, 2, 3]])})
    admin = _Admin({spec.name: {**spec.config, **config}})
    [line] = describe_drift(admin, [spec], metadata)   # type: ignore[arg-type]
    if why is None:
        assert "unsafe" not in line, line
    else:
        assert line.endswith(f" — unsafe: {why}"), line


class _RacedAdmin(_Admin):
    """The topic is missing from the first metadata read; another process (or the broker's
    auto-creation, with its defaults: 1 partition, 1 replica) creates it before this one's
    CreateTopics, which answers TOPIC_ALREADY_EXISTS; its leader shows up a read later."""

    def __init__(self, name: str, configs: dict[str, dict[str, str]]) -> None:
        super().__init__(configs)
        self.name = name
        self.reads = 0

    def list_topics(self, timeout: float = 0) -> SimpleNamespace:
        self.reads += 1
        if self.reads == 1:
            return SimpleNamespace(topics={})
        return SimpleNamespace(topics={self.name: _topic([[1]], leader=-1 if self.reads == 2
                                                         else 1)})

    def create_topics(self, topics: list[Any], **kwargs: Any) -> dict[str, Future]:
        return {t.topic: _failed(KafkaError.TOPIC_ALREADY_EXISTS) for t in topics}


def test_a_topic_created_by_another_process_is_waited_for_and_checked_for_drift():
    settings = KafkaSettings.load({}, bootstrap_servers="127.0.0.1:1", partitions=4,
                                  replication_factor=3, min_insync_replicas=2)
    admin = _RacedAdmin(settings.requests,
                        {settings.requests: {"cleanup.policy": "delete",
                                             "retention.ms": str(settings.requests_retention_ms),
                                             "min.insync.replicas": "1"}})
    report = ensure_topics(settings, admin=admin, only=(settings.requests,),   # type: ignore[arg-type]
                           timeout=5)
    assert report.created == [] and report.existing == [settings.requests]
    assert admin.reads >= 3            # polled again until the partition had a leader
    assert admin.described == [settings.requests]
    name = settings.requests
    assert f"{name}: partitions 1, declared 4" in report.drift
    assert (f"{name}: replication factor 1, declared 3 (fewer replicas than declared) — "
            "unsafe: a broker's loss can lose its records") in report.drift
    assert (f"{name}: min.insync.replicas=1, declared 2 — unsafe: an acknowledged write can "
            "be lost with its leader") in report.drift
    assert len(report.unsafe) == 2  # the partitions and segment.ms: drift, not unsafe


def test_the_requests_topic_rolls_daily_so_no_event_outlives_the_dedupe_memory():
    """With the broker's weekly roll the oldest events lived ~37 days with the defaults, past
    the worker's 35-day dedupe memory: a replay of them was decided again (recovery review)."""
    from common.kafka import REQUESTS_SEGMENT_MS, dedupe_outlived

    settings = KafkaSettings.load({})
    requests = next(s for s in declared_topics(settings) if s.name == settings.requests)
    assert requests.config["segment.ms"] == str(REQUESTS_SEGMENT_MS) == "86400000"
    assert dedupe_outlived(settings.requests_retention_ms,
                           WorkerSettings.load({}).dedupe_ttl_days) == ""


@pytest.mark.parametrize("retention_days,ttl_days,named", [
    (-1, 35, "for ever"),
    (40, 35, "at least 41.1"),
    (34, 35, "at least 35.1"),  # a day's segment and the check's hour on top
])
def test_a_retention_the_dedupe_memory_does_not_cover_is_named(retention_days, ttl_days, named):
    from common.kafka import dedupe_outlived

    retention = -1 if retention_days == -1 else retention_days * 86_400_000
    line = dedupe_outlived(retention, ttl_days)
    assert named in line and "WORKER_DEDUPE_TTL_DAYS" in line and "\n" not in line


def test_the_dedupe_warning_reads_the_requests_topics_own_retention():
    """A requests topic kept for ever (retention.ms=-1: a drift, not unsafe) with the setting
    at its 30-day default: the warning read the setting and said nothing, while a replay of
    events older than the dedupe memory may get second outcome records."""
    from common.kafka import dedupe_outlived

    settings = KafkaSettings.load({}, bootstrap_servers="127.0.0.1:1", partitions=1)
    [spec] = [s for s in declared_topics(settings) if s.name == settings.requests]
    admin = _Admin({spec.name: {**spec.config, "retention.ms": "-1"}})
    actual: dict[str, dict[str, str | None]] = {}
    describe_drift(admin, [spec], SimpleNamespace(topics={spec.name: _topic([[1]])}),   # type: ignore[arg-type]
                   actual=actual)
    report = EnsureReport(configs=actual)
    retention = report.retention_ms(spec.name, settings.requests_retention_ms)
    assert retention == -1
    ttl = WorkerSettings.load({}).dedupe_ttl_days
    assert dedupe_outlived(settings.requests_retention_ms, ttl) == ""  # the setting's view
    line = dedupe_outlived(retention, ttl, source="the requests topic's retention.ms")
    assert "the requests topic's retention.ms: for ever (-1)" in line, line
    # a topic created now (not described): the setting
    assert EnsureReport().retention_ms(spec.name, 7) == 7


def test_the_advised_dedupe_memory_is_enough_at_every_boundary():
    """The advice rounded up is taken as enough: 1.4 days was a hair under 120,960,000 ms."""
    import re as _re

    from common.kafka import dedupe_outlived

    for tenths in range(1, 4000, 7):
        for extra_ms in (0, 1, 3_599_999):
            retention = tenths * 8_640_000 - 90_000_000 + extra_ms  # less the day and hour
            if retention < 1:
                continue
            line = dedupe_outlived(retention, 0.1)
            advised = float(_re.search(r"at least ([0-9.]+)", line).group(1))
            assert dedupe_outlived(retention, advised) == "", (retention, advised)


@pytest.mark.parametrize("change,code", [
    ({"cleanup.policy": "compact", "retention.ms": "3600000"}, 3),  # unsafe: even --drift-ok
    ({"retention.ms": "-1"}, 0),  # drift --drift-ok lets pass
])
def test_ops_topics_refuses_unsafe_drift_even_with_drift_ok(monkeypatch, capsys, change, code):
    """compose's topics service (`--drift-ok`) exited 0 on a compacted, 1-hour requests
    topic, and every pipeline service started on it; `make up` went on too (it stops on 1
    and 3)."""
    import ops.topics as topics

    settings = KafkaSettings.load({"KAFKA_BOOTSTRAP_SERVERS": "x:1"})
    _ops_topics_on(monkeypatch, settings, {settings.requests: change})
    assert topics.main(["--drift-ok"]) == code
    out, err = capsys.readouterr()
    assert f"drift: {settings.requests}: retention.ms=" in out
    assert ("break a guarantee" in err) == (code == 3), err


def test_ops_topics_checks_the_workers_changelogs_too(monkeypatch, capsys):
    """`make topics` and compose's topics service checked only the declared topics: a
    changelog keeping tombstones an hour (unsafe: a store left behind resumes entries the
    changelog deleted) was found by the worker alone, once started on it."""
    import ops.topics as topics

    settings = KafkaSettings.load({"KAFKA_BOOTSTRAP_SERVERS": "x:1"})
    intents = changelog_topics(settings, settings.topic("sfprov-worker"))[1].name
    _ops_topics_on(monkeypatch, settings, {intents: {"delete.retention.ms": "3600000"}})
    assert topics.main(["--drift-ok"]) == 3
    out, err = capsys.readouterr()
    assert f"drift: {intents}: delete.retention.ms=" in out and "unsafe" in out
    assert f"  {intents} " in out  # listed with the others
    assert "changelogs of WORKER_APP_ID=sfprov-worker" in out  # which ones: say so
    assert "break a guarantee" in err


def _ops_topics_on(monkeypatch: pytest.MonkeyPatch, settings: KafkaSettings,
                   changes: dict[str, dict[str, str]]) -> None:
    """``ops.topics`` against a cluster holding every topic it declares, the worker's
    changelogs included, as declared but for ``changes``."""
    import common.kafka as kafka
    import ops.topics as topics

    monkeypatch.delenv("WORKER_APP_ID", raising=False)
    monkeypatch.setenv("SFPROV_ENV_FILE", os.devnull)  # no .env of the checkout
    specs = [*declared_topics(settings), *changelog_topics(settings,
                                                           settings.topic("sfprov-worker"))]
    metadata = SimpleNamespace(topics={s.name: _topic([[1]] * s.partitions) for s in specs})
    actual = {s.name: dict(s.config) for s in specs}
    for name, change in changes.items():
        actual[name].update(change)

    class Admin:
        def list_topics(self, timeout: float = 0) -> SimpleNamespace:
            return metadata

        def describe_configs(self, resources: list[Any], **_kw: Any) -> dict[Any, Future]:
            return {r: _done(_entries(actual[r.name])) for r in resources}

    monkeypatch.setattr(kafka, "connect", lambda conn, timeout=30.0: (Admin(), metadata))
    monkeypatch.setattr(topics, "kafka_settings", lambda: settings)


def test_a_changelog_keeping_tombstones_shorter_than_declared_is_unsafe():
    """A worker store left behind 6 h is resumed from its offset (STALE_STORE_S: half the
    declared day) while the changelog dropped its tombstones after 1 h: an intent settled
    and forgotten comes back pending. Only a warning before."""
    settings = KafkaSettings.load({}, bootstrap_servers="127.0.0.1:1", partitions=1)
    spec = changelog_topics(settings, "sfprov-worker")[1]
    metadata = SimpleNamespace(topics={spec.name: _topic([[1]])})
    admin = _Admin({spec.name: {**spec.config, "delete.retention.ms": "3600000"}})
    [line] = describe_drift(admin, [spec], metadata)   # type: ignore[arg-type]
    assert line.endswith(" — unsafe: a worker store left behind longer than half of it "
                         "keeps entries the changelog deleted meanwhile"), line
    admin = _Admin({spec.name: {**spec.config, "delete.retention.ms": "172800000"}})
    [line] = describe_drift(admin, [spec], metadata)   # type: ignore[arg-type]
    assert "unsafe" not in line  # longer: drift only


def test_a_requests_topic_rolling_weekly_outlives_the_dedupe_memory():
    """30 days' retention and weekly segments (a topic made before daily ones) keep events
    up to ~37 days, past WORKER_DEDUPE_TTL_DAYS=35: the warning counted the declared day."""
    thirty_days = 30 * 24 * 3600 * 1000
    assert dedupe_outlived(thirty_days, 35) == ""
    line = dedupe_outlived(thirty_days, 35, segment_ms=7 * 24 * 3600 * 1000)
    assert "up to 37.1 days (retention, its last segment" in line, line
