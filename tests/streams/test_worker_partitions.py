"""The worker's partitions are the requests topic's, or it does not start.

The worker partitions its tables (their changelogs) and works out each Order's partition
(``owns()``, the ownership lease, the sweep) from ``KAFKA_PARTITIONS``; the connector's
producer uses the requests topic's real partition count. A requests topic with another
count — grown with ``kafka-topics --alter``, or made by an admin with another count — was
a drift *warning*: the changelogs were created with ``KAFKA_PARTITIONS`` (and Kafka cannot
shrink them), and for about half of the Order ids the worker computed another partition
than the one their events are on. Now the worker exits 64 with one line naming both counts
and what to set, before it creates anything; and ``ensure_topics`` creates a changelog
with the requests topic's count whenever that topic exists.

No broker: a fake admin client (the cluster's metadata, create and describe), given to the
real ``streams.__main__.main`` in a child process in place of ``common.kafka.connect``'s.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from concurrent.futures import Future
from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from common.envparse import ROOT
from common.kafka import changelog_topics, ensure_topics
from common.process import EXIT_CONFIG
from common.settings import KafkaSettings
from tests.streams.test_worker_late_signal import _env

REQUESTS = "salesforce.order-provision-requested"
APP = "sfprov-worker"
CHANGELOGS = [f"{APP}-idem-changelog", f"{APP}-intents-changelog"]


def _done(value: Any) -> Future:
    fut: Future = Future()
    fut.set_result(value)
    return fut


def _topic(partitions: int) -> SimpleNamespace:
    return SimpleNamespace(error=None, partitions={
        p: SimpleNamespace(id=p, leader=1, replicas=[1], isrs=[1]) for p in range(partitions)})


class FakeAdmin:
    """The topics that exist (name → partition count); what ``create_topics`` was asked
    to make is kept in ``created`` as (name, partitions)."""

    def __init__(self, topics: dict[str, int]) -> None:
        self.topics = {name: _topic(n) for name, n in topics.items()}
        self.configs: dict[str, dict[str, str]] = {}
        self.created: list[tuple[str, int]] = []

    def list_topics(self, timeout: float = 0) -> SimpleNamespace:
        return SimpleNamespace(topics=dict(self.topics))

    def create_topics(self, new: list[Any], **kwargs: Any) -> dict[str, Future]:
        for t in new:
            self.created.append((t.topic, t.num_partitions))
            self.topics[t.topic] = _topic(t.num_partitions)
            self.configs[t.topic] = dict(t.config)
        return {t.topic: _done(None) for t in new}

    def describe_configs(self, resources: list[Any], **kwargs: Any) -> dict[Any, Future]:
        return {r: _done({k: SimpleNamespace(value=v)
                          for k, v in self.configs.get(r.name, {}).items()})
                for r in resources}


# streams.__main__.main with the fake admin as the cluster (FAKE_TOPICS: name → partitions);
# past the start-up's topic check it prints what was created and stops (exit 3)
WORKER = textwrap.dedent("""
    import json, os, sys
    import common.kafka
    from tests.streams.test_worker_partitions import FakeAdmin
    admin = FakeAdmin(json.loads(os.environ["FAKE_TOPICS"]))
    common.kafka.connect = lambda conn, timeout=30.0: (admin, admin.list_topics())
    import streams.__main__ as worker_main
    worker_main.check_group_access = lambda *a, **k: None
    def past_the_check(_loop):
        print("CREATED " + json.dumps(admin.created), flush=True)
        os._exit(3)
    worker_main.use_event_loop = past_the_check
    code = worker_main.main(["worker"])
    print("CREATED " + json.dumps(admin.created), flush=True)
    sys.exit(code)
""")


def _run_worker(tmp_path, topics: dict[str, int], **env: str) -> tuple[int, list[str], list]:
    environ = _env(tmp_path, "127.0.0.1:1", LOG_FORMAT="TEXT",
                   FAKE_TOPICS=json.dumps(topics), **env)
    done = subprocess.run([sys.executable, "-c", WORKER], cwd=ROOT, env=environ,
                          capture_output=True, text=True, timeout=120)
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    created = [json.loads(line[len("CREATED "):]) for line in lines
               if line.startswith("CREATED ")]
    assert created, "\n".join(lines[-20:])
    return done.returncode, [ln for ln in lines if not ln.startswith("CREATED ")], \
        [tuple(c) for c in created[0]]


def test_a_requests_topic_with_more_partitions_than_kafka_partitions_stops_the_worker(
        tmp_path):
    code, lines, created = _run_worker(tmp_path, {REQUESTS: 12})  # KAFKA_PARTITIONS: 6
    assert code == EXIT_CONFIG, lines
    assert created == [], "a changelog was created before the check"
    assert len(lines) == 1, lines
    assert "12 partitions" in lines[0] and "KAFKA_PARTITIONS is 6" in lines[0], lines
    assert "set KAFKA_PARTITIONS=12" in lines[0], lines


def test_matching_counts_create_the_changelogs_with_the_requests_topics_count(tmp_path):
    code, lines, created = _run_worker(tmp_path, {REQUESTS: 12}, KAFKA_PARTITIONS="12")
    assert code == 3, lines  # past the check: on to the faust worker
    assert {name: n for name, n in created if name in CHANGELOGS} == \
        dict.fromkeys(CHANGELOGS, 12)


def test_a_changelog_partitioned_otherwise_than_the_requests_stops_the_worker(tmp_path):
    """The requests topic grew after the changelogs were made (KAFKA_PARTITIONS raised to
    match it): the tables' partitions are not the requests' any more."""
    code, lines, created = _run_worker(tmp_path, {REQUESTS: 12, CHANGELOGS[0]: 6},
                                       KAFKA_PARTITIONS="12")
    assert code == EXIT_CONFIG, lines
    assert created == [], "the other changelog was created before the check"
    assert len(lines) == 1, lines
    assert CHANGELOGS[0] in lines[0] and "6 partitions" in lines[0], lines
    assert f"{REQUESTS} has 12" in lines[0], lines


def _settings(**env: str) -> KafkaSettings:
    return KafkaSettings.load(env, bootstrap_servers="127.0.0.1:1")


def test_ensure_topics_refuses_a_mismatch_before_creating_anything():
    from common.kafka import PartitionMismatch

    kafka = _settings()
    admin = FakeAdmin({kafka.requests: 12})
    with pytest.raises(PartitionMismatch) as raised:
        ensure_topics(kafka, admin=admin, only=(kafka.requests, kafka.outcomes),  # type: ignore[arg-type]
                      extra=changelog_topics(kafka, kafka.topic(APP)),
                      refuse_partition_mismatch=True, timeout=3)
    assert admin.created == []
    assert str(raised.value).startswith(f"the requests topic {kafka.requests} has 12 "
                                        "partitions, KAFKA_PARTITIONS is 6: set "
                                        "KAFKA_PARTITIONS=12")


def test_changelogs_take_the_requests_topics_count_whatever_kafka_partitions_says():
    """Belt and braces: a caller that does not refuse (``make topics`` with the changelogs
    as extras, a bench) still creates the changelogs as the requests are partitioned, and
    the requests topic's count is reported as drift."""
    kafka = _settings()
    admin = FakeAdmin({kafka.requests: 12})
    report = ensure_topics(kafka, admin=admin, only=(kafka.requests,),  # type: ignore[arg-type]
                           extra=changelog_topics(kafka, kafka.topic(APP)), timeout=3)
    assert sorted(admin.created) == [(name, 12) for name in CHANGELOGS]
    # as made, for `make topics`' listing (it printed the declared 6)
    assert report.partitions == {kafka.requests: 12, **dict.fromkeys(CHANGELOGS, 12)}
    assert f"{kafka.requests}: partitions 12, declared 6" in report.drift[0]
    # and as found on the next run: the requests topic's count, no drift of theirs
    again = ensure_topics(kafka, admin=admin, only=(kafka.requests,),  # type: ignore[arg-type]
                          extra=changelog_topics(kafka, kafka.topic(APP)), timeout=3)
    assert again.partitions == report.partitions and again.created == []
    assert not any("changelog" in line for line in again.drift), again.drift
    assert not any("changelog" in line and "partitions" in line for line in report.drift)


def test_without_a_requests_topic_the_changelogs_take_kafka_partitions():
    kafka = _settings(KAFKA_PARTITIONS="4")
    admin = FakeAdmin({})
    ensure_topics(kafka, admin=admin, only=(kafka.requests,),  # type: ignore[arg-type]
                  extra=changelog_topics(kafka, kafka.topic(APP)),
                  refuse_partition_mismatch=True, timeout=3)
    assert sorted(admin.created) == sorted([(kafka.requests, 4)]
                                           + [(name, 4) for name in CHANGELOGS])


class RacingAdmin(FakeAdmin):
    """Another client makes the requests topic with ``raced`` partitions between this
    client's metadata read and its create: the create answers "already exists"."""

    def __init__(self, topics: dict[str, int], requests: str, raced: int) -> None:
        super().__init__(topics)
        self.requests, self.raced = requests, raced

    def create_topics(self, new: list[Any], **kwargs: Any) -> dict[str, Future]:
        if any(t.topic == self.requests for t in new):
            self.topics[self.requests] = _topic(self.raced)
            rest = [t for t in new if t.topic != self.requests]
            out = super().create_topics(rest, **kwargs) if rest else {}
            failed: Future = Future()
            failed.set_exception(KafkaException(
                KafkaError(KafkaError.TOPIC_ALREADY_EXISTS, "exists")))
            return {**out, self.requests: failed}
        return super().create_topics(new, **kwargs)


def test_a_requests_topic_raced_in_with_another_count_stops_the_worker_before_its_changelogs():
    """The connector (another KAFKA_PARTITIONS) or the broker's auto-creation made the
    requests topic with 12 partitions as the worker, with 6, was about to: the changelogs
    must not be made beside it (half the Orders looked up on the wrong partition)."""
    from common.kafka import PartitionMismatch

    kafka = _settings()
    admin = RacingAdmin({}, kafka.requests, 12)
    with pytest.raises(PartitionMismatch, match="set KAFKA_PARTITIONS=12"):
        ensure_topics(kafka, admin=admin, only=(kafka.requests, kafka.outcomes),  # type: ignore[arg-type]
                      extra=changelog_topics(kafka, kafka.topic(APP)),
                      refuse_partition_mismatch=True, timeout=3)
    assert not any(name in CHANGELOGS for name, _n in admin.created), admin.created


def test_changelogs_without_their_requests_topic_are_refused_when_counts_differ():
    """The requests topic renamed (or deleted) while the changelogs stay: it would be made
    with KAFKA_PARTITIONS, unlike them."""
    from common.kafka import PartitionMismatch

    kafka = _settings()  # KAFKA_PARTITIONS: 6
    admin = FakeAdmin(dict.fromkeys(CHANGELOGS, 12))
    with pytest.raises(PartitionMismatch) as raised:
        ensure_topics(kafka, admin=admin, only=(kafka.requests,),  # type: ignore[arg-type]
                      extra=changelog_topics(kafka, kafka.topic(APP)),
                      refuse_partition_mismatch=True, timeout=3)
    assert admin.created == []
    assert "set KAFKA_PARTITIONS=12" in str(raised.value)
    assert "does not exist" in str(raised.value)


def test_changelogs_without_their_requests_topic_and_the_same_count_are_fine():
    kafka = _settings(KAFKA_PARTITIONS="12")
    admin = FakeAdmin(dict.fromkeys(CHANGELOGS, 12))
    ensure_topics(kafka, admin=admin, only=(kafka.requests,),  # type: ignore[arg-type]
                  extra=changelog_topics(kafka, kafka.topic(APP)),
                  refuse_partition_mismatch=True, timeout=3)
    assert admin.created == [(kafka.requests, 12)]
