"""Where a sink group with no committed offset starts (``SINK_START_POSITION``, sinks.start).

A new ``SINK_GROUP_ID`` or ``KAFKA_TOPIC_PREFIX``, or offsets the broker expired, used to
make the sink read the outcomes topic from its earliest record and write a year of history
again over what Salesforce holds since. Each test here runs on the real broker; the last
one runs the sink process against the Salesforce sandbox, and shows with ``earliest``
what the refusal prevents.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import OFFSET_INVALID, Consumer, KafkaError, KafkaException, TopicPartition

from common.errors import ConfigError
from common.settings import KafkaSettings, SinkSettings
from sandbox.salesforce.harness import running_sandbox
from sinks.app import Sink
from sinks.start import NEW_INSTALLATION_S, refusal
from tests.sinks.fakes import FakeCollections
from tests.sinks.helpers import committed_total, outcome, produce
from tests.sinks.sandbox_support import sink_env, start_sink

HOUR_MS = 3_600_000


def now_ms() -> int:
    return int(time.time() * 1000)


def settings(**overrides: Any) -> SinkSettings:
    base = {"linger_s": 0.05, "http_port": 0, "retry_backoff_s": 0.05,
            "session_timeout_ms": 6000}
    base.update(overrides)
    return SinkSettings.load({}, **base)


def outcomes(prefix: str, n: int, *, hours_ago: float = 0.0) -> list[dict[str, Any]]:
    when = dt.datetime.now(dt.UTC) - dt.timedelta(hours=hours_ago)
    return [outcome(f"801{prefix}{i:012d}", "Provisioned", n=i, completed_at=when,
                    requested_at=when - dt.timedelta(seconds=5)) for i in range(n)]


def written_orders(fake: FakeCollections) -> set[str]:
    return {record_id for sobject, record_id in fake.records if sobject == "Order"}


def committed(kafka: KafkaSettings, group_id: str) -> list[int]:
    """The group's committed offset of each outcomes partition (OFFSET_INVALID: none)."""
    consumer = Consumer({"bootstrap.servers": kafka.bootstrap_servers,
                         "group.id": kafka.topic(group_id)})
    try:
        meta = consumer.list_topics(kafka.outcomes, timeout=10).topics[kafka.outcomes]
        asked = [TopicPartition(kafka.outcomes, p) for p in sorted(meta.partitions)]
        return [tp.offset for tp in consumer.committed(asked, timeout=10)]
    finally:
        consumer.close()


# -- the setting ------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "parsed"), [
    ("earliest", "earliest"), (" LATEST ", "latest"),
    ("2026-12-01T09:30:00Z", "2026-12-01T09:30:00Z"),
    ("2026-12-01T10:30:00+01:00", "2026-12-01T09:30:00Z"),
    ("2026-12-01T09:30:00.250Z", "2026-12-01T09:30:00.250000Z"),
])
def test_the_setting_reads_earliest_latest_or_a_time_with_its_offset(raw: str,
                                                                       parsed: str) -> None:
    assert SinkSettings.load({"SINK_START_POSITION": raw}).start_position == parsed


@pytest.mark.parametrize(("raw", "why"), [
    ("2026-12-01T09:30:00", "no UTC offset"), ("yesterday", "expected earliest, latest"),
    ("0", "expected earliest, latest"), ("2026-12-01Z", "no time of day"),
    ("1969-12-31T23:59:59.999Z", "before 1970"),  # -1 ms: Kafka's "the log's end"
])
def test_a_bad_setting_names_itself(raw: str, why: str) -> None:
    with pytest.raises(ConfigError, match=f"SINK_START_POSITION: invalid value: .*{why}"):
        SinkSettings.load({"SINK_START_POSITION": raw})
    assert SinkSettings.load({"SINK_START_POSITION": " "}).start_position == ""  # blank: unset


def test_the_refusal_names_the_group_the_records_and_the_choices() -> None:
    line = refusal("p.sfprov-sink", "p.provisioning.outcomes", {0: (0, 40), 2: (5, 7)})
    assert line.startswith("SINK_START_POSITION: group p.sfprov-sink has no committed offset "
                           "on p.provisioning.outcomes [0] offsets 0–39, [2] offsets 5–6 "
                           "(42 record(s))")
    for choice in ("ISO-8601 time", "earliest", "latest"):
        assert choice in line
    assert "\n" not in line


class SilentCoordinator:
    """A consumer whose group coordinator never answers (a failover, a paused broker)."""

    def __init__(self, sink: Sink) -> None:
        self.sink, self.asked = sink, 0

    def committed(self, partitions: list[TopicPartition], timeout: float) -> list[Any]:
        self.asked += 1
        # the poll loop waits in this callback: /livez must see it alive all the while
        assert time.monotonic() - self.sink._heartbeat < 1.0
        time.sleep(min(timeout, 0.2))
        raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "coordinator away"))


def test_an_assignment_waiting_for_the_group_offsets_stays_alive_and_stops_on_sigterm(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The assignment's wait for the group's committed offsets (the rebalance callback: no
    poll meanwhile) kept /livez's poll-loop heartbeat still — "wedged" after 60 s — and
    ignored SIGTERM until its budget ran out, then exited 1 (regression review). Now each
    attempt beats, and a stop ends it within one attempt: Stopped, exit 0, nothing
    committed."""
    from common.kafka import Stopped, stop_waits

    kafka = KafkaSettings.load({}, bootstrap_servers="127.0.0.1:9")  # never reached
    sink = Sink(kafka, settings(), FakeCollections())
    sink.consumer.close()
    fake = SilentCoordinator(sink)
    sink._heartbeat -= 120  # the loop's last turn, long before the callback
    timer = threading.Timer(2.0, stop_waits)  # SIGTERM, as Startup's handler asks it
    timer.start()
    began = time.monotonic()
    try:
        with pytest.raises(Stopped):
            sink._on_assign(fake, [TopicPartition(kafka.outcomes, p)  # type: ignore[arg-type]
                                   for p in range(3)])
    finally:
        timer.cancel()
        stop_waits(False)
        sink.dead_letters.close()
    assert fake.asked >= 2  # asked again after the first silence
    assert time.monotonic() - began < 2.0 + 10.0 + 1.0  # within one attempt of the stop
    assert sink.ops.live()[0]
    assert not sink.started and sink._assigned == []


# -- on the broker ------------------------------------------------------------------------


@pytest.mark.broker
def test_history_with_no_committed_offset_is_refused_before_anything_is_written(
        kafka_settings: KafkaSettings) -> None:
    produce(kafka_settings, outcomes("0", 30, hours_ago=2), timestamp_ms=now_ms() - 2 * HOUR_MS)
    fake = FakeCollections()
    with pytest.raises(ConfigError, match=r"SINK_START_POSITION: group .*\(30 record\(s\)\)"):
        Sink(kafka_settings, settings(), fake).run(timeout=60, exit_when_idle=True)
    assert fake.calls == []
    assert committed(kafka_settings, "sfprov-sink") == [OFFSET_INVALID] * 3  # nothing decided


@pytest.mark.broker
def test_records_younger_than_an_hour_are_a_new_installation_read_from_the_first(
        kafka_settings: KafkaSettings) -> None:
    assert NEW_INSTALLATION_S == 3600.0
    records = outcomes("1", 30, hours_ago=0.5)
    produce(kafka_settings, records, timestamp_ms=now_ms() - HOUR_MS // 2)
    fake = FakeCollections()
    stats = Sink(kafka_settings, settings(), fake).run(timeout=60, exit_when_idle=True)
    assert stats.consumed == 30
    assert written_orders(fake) == {r["order_id"] for r in records}


@pytest.mark.broker
def test_earliest_writes_the_history(kafka_settings: KafkaSettings) -> None:
    records = outcomes("2", 30, hours_ago=2)
    produce(kafka_settings, records, timestamp_ms=now_ms() - 2 * HOUR_MS)
    fake = FakeCollections()
    stats = Sink(kafka_settings, settings(start_position="earliest"), fake).run(
        timeout=60, exit_when_idle=True)
    assert stats.consumed == 30
    assert written_orders(fake) == {r["order_id"] for r in records}


@pytest.mark.broker
def test_latest_skips_the_history_and_writes_what_comes_after(
        kafka_settings: KafkaSettings) -> None:
    produce(kafka_settings, outcomes("3", 30, hours_ago=2), timestamp_ms=now_ms() - 2 * HOUR_MS)
    fake = FakeCollections()
    stats = Sink(kafka_settings, settings(start_position="latest"), fake).run(
        timeout=60, exit_when_idle=True)
    assert stats.consumed == 0 and fake.calls == []
    assert committed_total(kafka_settings, settings()) == 30  # the start, committed
    later = outcomes("4", 5)
    produce(kafka_settings, later)
    stats = Sink(kafka_settings, settings(), fake).run(timeout=60, exit_when_idle=True)
    assert stats.consumed == 5
    assert written_orders(fake) == {r["order_id"] for r in later}


@pytest.mark.broker
def test_a_time_starts_at_the_first_outcome_from_then_on(kafka_settings: KafkaSettings) -> None:
    older, newer = outcomes("5", 20, hours_ago=3), outcomes("6", 20, hours_ago=1.5)
    produce(kafka_settings, older, timestamp_ms=now_ms() - 3 * HOUR_MS)
    produce(kafka_settings, newer, timestamp_ms=now_ms() - 3 * HOUR_MS // 2)
    stopped = dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)
    fake = FakeCollections()
    position = stopped.isoformat().replace("+00:00", "Z")
    stats = Sink(kafka_settings, settings(start_position=position), fake).run(
        timeout=60, exit_when_idle=True)
    assert stats.consumed == 20
    assert written_orders(fake) == {r["order_id"] for r in newer}


@pytest.mark.broker
def test_an_empty_partition_commits_its_start_so_a_later_history_is_read(
        kafka_settings: KafkaSettings) -> None:
    """A sink that joined, then died before its first write (or was stopped for hours),
    finds the offsets it started at, not an unset group: it reads on, and refuses nothing."""
    fake = FakeCollections()
    Sink(kafka_settings, settings(), fake).run(timeout=60, exit_when_idle=True)
    assert committed(kafka_settings, "sfprov-sink") == [0, 0, 0]
    records = outcomes("7", 30, hours_ago=2)
    produce(kafka_settings, records, timestamp_ms=now_ms() - 2 * HOUR_MS)
    stats = Sink(kafka_settings, settings(), fake).run(timeout=60, exit_when_idle=True)
    assert stats.consumed == 30
    assert written_orders(fake) == {r["order_id"] for r in records}


@pytest.mark.broker
def test_a_committed_offset_wins_over_the_setting(kafka_settings: KafkaSettings) -> None:
    produce(kafka_settings, outcomes("8", 10))
    fake = FakeCollections()
    Sink(kafka_settings, settings(), fake).run(timeout=60, exit_when_idle=True)
    more = outcomes("9", 10, hours_ago=2)
    produce(kafka_settings, more, timestamp_ms=now_ms() - 2 * HOUR_MS)
    stats = Sink(kafka_settings, settings(start_position="latest"), FakeCollections()).run(
        timeout=60, exit_when_idle=True)
    assert stats.consumed == 10  # from the committed offsets, not from the end


@pytest.mark.broker
def test_a_new_group_does_not_set_salesforce_back(kafka_settings: KafkaSettings,
                                                  tmp_path: Path) -> None:
    """The whole story against the Salesforce sandbox: an Opportunity provisioned two hours
    ago, moved on by customer service; a sink under a new SINK_GROUP_ID exits 64 with the
    line and leaves it; the same sink told ``earliest`` sets it back to Active (the rewrite
    the refusal prevents, so this test can see it)."""
    with running_sandbox(tmp_path / "sf") as sandbox:
        orders = sandbox.seed(accounts=5, orders=6)["orders"]
        when = dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)
        records = [outcome(o["order_id"], "Provisioned", opportunity_id=o["opportunity_id"],
                           n=i, completed_at=when, requested_at=when)
                   for i, o in enumerate(orders)]
        produce(kafka_settings, records, timestamp_ms=now_ms() - 2 * HOUR_MS)
        log = tmp_path / "sink.log"

        def run(**extra: str) -> int:
            env = sink_env(kafka_settings, sandbox.env(), **extra)
            proc = start_sink(env, log, "--exit-when-idle", "--timeout", "90")
            try:
                return proc.wait(timeout=120)
            finally:
                proc.kill()
                proc.wait()

        assert run(SINK_START_POSITION="earliest") == 0, log.read_text()[-3000:]
        opportunity = orders[0]["opportunity_id"]

        def stage() -> str:
            return str(sandbox.query(f"SELECT StageName FROM Opportunity WHERE Id = "
                                     f"'{opportunity}'")["records"][0]["StageName"])

        assert stage() == "Active"
        sandbox.update("Opportunity", opportunity, {"StageName": "△Cancelling"})

        assert run(SINK_GROUP_ID="sfprov-sink-new") == 64
        lines = [line for line in log.read_text().splitlines() if "SINK_START_POSITION" in line]
        assert lines and "sfprov-sink-new has no committed offset" in lines[-1], lines
        assert stage() == "△Cancelling"

        assert run(SINK_GROUP_ID="sfprov-sink-new", SINK_START_POSITION="earliest") == 0
        assert stage() == "Active"  # what happened before the refusal


def test_a_refused_offset_fetch_names_the_sinks_principal() -> None:
    """The start decision's refusal named "the sink's principal", not the principal, which
    is what such a line is for (the regression review)."""
    from common.errors import KafkaAccessError
    from sinks.start import starts

    class Refused:
        def committed(self, partitions: list[TopicPartition], timeout: float) -> list[Any]:
            raise KafkaException(KafkaError(KafkaError.GROUP_AUTHORIZATION_FAILED, "no"))

    with pytest.raises(KafkaAccessError, match="refused User:sfprov-sink to read the "
                                               "committed offsets of t .group g."):
        starts(Refused(), "t", [0], group="g", position="",  # type: ignore[arg-type]
               principal="User:sfprov-sink")
