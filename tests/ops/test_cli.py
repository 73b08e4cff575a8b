"""The operator CLI on a real broker: topics, tail (Avro → JSON), dlq list/requeue."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from bench.harness import provision_request
from common.avro import AvroSerde
from common.deadletter import dead_letter_headers

pytestmark = pytest.mark.broker
ROOT = Path(__file__).resolve().parents[2]


def sfprov(settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
           "KAFKA_TOPIC_PREFIX": settings.topic_prefix, "PYTHONPATH": str(ROOT),
           "KAFKA_PARTITIONS": str(settings.partitions),
           "SFPROV_ENV_FILE": os.devnull, "SFPROV_STATE_DIR": "/nonexistent"}
    return subprocess.run([sys.executable, "-m", "ops.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_topics_shows_declared_topics(kafka_settings):
    result = sfprov(kafka_settings, "topics")
    assert result.returncode == 0, result.stderr
    for topic in (kafka_settings.requests, kafka_settings.outcomes,
                  kafka_settings.connector_offsets):
        assert topic in result.stdout
    assert "compact" in result.stdout


def test_tail_decodes_avro_and_filters_by_order(kafka_settings):
    producer = Producer({"bootstrap.servers": kafka_settings.bootstrap_servers})
    for i, oid in enumerate(["801000000000001AAA", "801000000000002AAA"] * 2):
        producer.produce(kafka_settings.requests, key=oid,
                         value=provision_request(oid, f"{oid}-{i}"))
    producer.flush(10)
    result = sfprov(kafka_settings, "tail", "requests", "--from-beginning",
                    "--order-id", "801000000000002AAA")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(x) for x in result.stdout.splitlines()]
    assert [x["value"]["IdemKey__c"] for x in lines] == ["801000000000002AAA-1",
                                                         "801000000000002AAA-3"]


def test_dlq_list_and_requeue(kafka_settings):
    serde = AvroSerde("provisioning_outcome")
    value = serde.encode({"order_id": "801000000000009AAA", "status": "Failed",
                          "completed_at": int(time.time() * 1000)})
    producer = Producer({"bootstrap.servers": kafka_settings.bootstrap_servers})
    producer.produce(kafka_settings.dead_letters, key="801000000000009AAA", value=value,
                     headers=dead_letter_headers(stage="sink", reason="INVALID_FIELD: no such",
                                                 error_class="SalesforceRecordError",
                                                 error_code="INVALID_FIELD",
                                                 source_topic=kafka_settings.outcomes,
                                                 source_partition=0, source_offset=7))
    producer.produce(kafka_settings.dead_letters, key="x", value=b"\x00garbage",
                     headers=dead_letter_headers(stage="connector", reason="undecodable",
                                                 error_class="SerdeError"))
    producer.flush(10)
    listed = sfprov(kafka_settings, "dlq", "list")
    assert listed.returncode == 0, listed.stderr
    assert "INVALID_FIELD" in listed.stdout and "undecodable" in listed.stdout
    assert "2 dead letter(s)" in listed.stdout
    refused = sfprov(kafka_settings, "dlq", "requeue")  # neither --offset nor --all
    assert refused.returncode == 2 and "error: requeue needs --offset" in refused.stderr
    sink_line = next(line for line in listed.stdout.splitlines() if "INVALID_FIELD" in line)
    where = sink_line.split()[0]
    requeued = sfprov(kafka_settings, "dlq", "requeue", "--offset", where)
    assert requeued.returncode == 0 and "requeued 1" in requeued.stdout, requeued.stdout
    back = sfprov(kafka_settings, "tail", "outcomes", "--from-beginning")
    lines = [json.loads(x) for x in back.stdout.splitlines()]
    assert len(lines) == 1
    assert lines[0]["value"]["order_id"] == "801000000000009AAA"
    assert lines[0]["headers"]["sfprov.requeued_from"].startswith(kafka_settings.dead_letters)
    # its marker, on the broker: a later --all passes over it; list names where it went
    again = sfprov(kafka_settings, "dlq", "requeue", "--all")
    assert again.returncode == 0, again.stderr
    assert "requeued 0 record(s)" in again.stdout
    assert "passed over 1 dead letter(s) requeued before" in again.stdout, again.stdout
    relisted = sfprov(kafka_settings, "dlq", "list")
    assert "2 dead letter(s), 1 of them requeued" in relisted.stdout, relisted.stdout
    assert f"(requeued to {kafka_settings.outcomes}:" in relisted.stdout


def test_kafka_habits_bootstrap_server_flag_and_json_listings(kafka_settings):
    env_without_bootstrap = {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"}  # the flag must win
    result = sfprov_env(kafka_settings, env_without_bootstrap, "-b",
                        kafka_settings.bootstrap_servers, "topics", "--json")
    assert result.returncode == 0, result.stderr
    listed = {t["topic"]: t for t in json.loads(result.stdout)["topics"]}
    assert listed[kafka_settings.requests]["partitions"] == 3
    lag = sfprov_env(kafka_settings, env_without_bootstrap, "--bootstrap-server",
                     kafka_settings.bootstrap_servers, "lag", "--json")
    assert lag.returncode == 0, lag.stderr
    groups = json.loads(lag.stdout)["groups"]
    assert [g["process"] for g in groups] == ["worker", "sink"]
    assert all(g["lag"] == 0 for g in groups)
    dlq = sfprov(kafka_settings, "dlq", "--json")
    assert dlq.returncode == 0 and json.loads(dlq.stdout) == []


def test_lag_shows_no_committed_offset_as_kafka_consumer_groups_does(kafka_settings):
    """A group without a committed offset showed the log start as if committed there (the
    ops review): beside the sink's exit 64 'no committed offset', lag said 'committed 0'."""
    produce_requests(kafka_settings, {0: 3})
    lag = sfprov(kafka_settings, "lag", "--json")
    assert lag.returncode == 0, lag.stderr
    worker = json.loads(lag.stdout)["groups"][0]
    row = next(r for r in worker["partitions"] if r["partition"] == 0)
    assert row["committed"] is None and row["lag"] == 3
    text = sfprov(kafka_settings, "lag")
    line = next(x for x in text.stdout.splitlines() if x.strip().startswith("partition  0")
                and "worker" not in x)
    assert "committed         -" in line and "no committed offset" in line, text.stdout


def produce_requests(settings, counts: dict[int, int]) -> None:
    producer = Producer({"bootstrap.servers": settings.bootstrap_servers,
                         "partitioner": "murmur2_random"})
    for partition, count in counts.items():
        for i in range(count):
            producer.produce(settings.requests, key="801000000000001AAA", partition=partition,
                             value=provision_request("801000000000001AAA", f"k-{partition}-{i}"))
    assert producer.flush(10) == 0


def commit_worker_group(settings, offsets: dict[int, int]) -> str:
    """The worker group's committed offsets on the requests topic, as if the worker had
    processed the records below them; the group's name (from replay's own plan)."""
    plan = sfprov(settings, "replay", "--from-offset", "0:0", "--json")
    assert plan.returncode == 0, plan.stderr
    group = json.loads(plan.stdout)["group"]
    committer = Consumer({"bootstrap.servers": settings.bootstrap_servers, "group.id": group,
                          "enable.auto.commit": False})
    committer.commit(offsets=[TopicPartition(settings.requests, p, o)
                              for p, o in offsets.items()], asynchronous=False)
    committer.close()
    return group


def partition_row(plan: subprocess.CompletedProcess[str], partition: int) -> dict:
    return next(p for p in json.loads(plan.stdout)["partitions"] if p["partition"] == partition)


def test_replay_only_plans_unless_execute(kafka_settings):
    produce_requests(kafka_settings, {0: 3})
    commit_worker_group(kafka_settings, {0: 3})  # the worker has processed all three
    plan = sfprov(kafka_settings, "replay", "--from-offset", "0:1", "--json")
    assert plan.returncode == 0, plan.stderr
    planned = json.loads(plan.stdout)
    assert planned["executed"] is False
    part0 = next(p for p in planned["partitions"] if p["partition"] == 0)
    assert part0["target"] == 1 and part0["rewind"] == 2 and part0["skip"] == 0
    again = json.loads(sfprov(kafka_settings, "replay", "--from-offset", "0:1",
                              "--json").stdout)
    assert again["partitions"] == planned["partitions"]  # nothing was changed
    done = sfprov(kafka_settings, "replay", "--from-offset", "0:1", "--execute")
    assert done.returncode == 0 and "rewound group" in done.stdout, done.stdout + done.stderr
    after = sfprov(kafka_settings, "replay", "--from-offset", "0:1", "--json")
    assert partition_row(after, 0)["current"] == 1
    # a relative time as the README writes it: the records were written just now
    recent = sfprov(kafka_settings, "replay", "--from-time", "-1h", "--json")
    assert recent.returncode == 0, recent.stderr
    part0 = next(p for p in json.loads(recent.stdout)["partitions"] if p["partition"] == 0)
    assert part0["target"] == 0


def test_replay_refuses_to_move_the_group_past_unprocessed_records(kafka_settings):
    """A target above the committed offset skips events the worker never decided; replay
    once did it and said "rewound by 0 records"."""
    produce_requests(kafka_settings, {0: 3, 1: 2})
    commit_worker_group(kafka_settings, {0: 1})  # partition 1: nothing committed, 2 to read
    ahead = sfprov(kafka_settings, "replay", "--from-offset", "0:3")
    assert ahead.returncode == 3, ahead.stdout + ahead.stderr
    assert "would rewind" not in ahead.stdout
    [line] = ahead.stderr.strip().splitlines()
    assert line.startswith("refusing: ") and "past 2 record(s)" in line, line
    assert "partition 0: 2" in line and "--allow-skip" in line, line
    executed = sfprov(kafka_settings, "replay", "--from-offset", "0:3", "--execute", "--json")
    assert executed.returncode == 3, executed.stderr
    assert json.loads(executed.stdout)["executed"] is False
    # a time after the last record: every partition to its end, both skip
    future = sfprov(kafka_settings, "replay", "--from-time", "2099-01-01T00:00Z", "--execute")
    assert future.returncode == 3, future.stdout + future.stderr
    assert "past 4 record(s)" in future.stderr and "partition 1: 2" in future.stderr
    unchanged = sfprov(kafka_settings, "replay", "--from-offset", "0:1", "--json")
    assert unchanged.returncode == 0, unchanged.stderr
    assert partition_row(unchanged, 0)["current"] == 1  # nothing was changed
    allowed = sfprov(kafka_settings, "replay", "--from-offset", "0:3", "--execute",
                     "--allow-skip")
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr
    assert "skipped 2 record(s)" in allowed.stdout, allowed.stdout
    moved = sfprov(kafka_settings, "replay", "--from-offset", "0:3", "--json")
    assert moved.returncode == 0 and partition_row(moved, 0)["current"] == 3, moved.stderr


@pytest.mark.parametrize("target,message", [
    ("7:0", "has no partition 7"),  # once planned as nothing, silently
    ("0:99", "offset 99 is outside partition 0"),
])
def test_replay_refuses_a_partition_or_offset_the_topic_does_not_have(kafka_settings, target,
                                                                       message):
    produce_requests(kafka_settings, {0: 3})
    result = sfprov(kafka_settings, "replay", "--from-offset", target)
    assert result.returncode == 1, result.stdout + result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and message in line, line


def test_dlq_requeue_counts_what_the_broker_took(kafka_settings):
    """A record the broker refuses is a failure, not "requeued" (flush() alone says 0 left)."""
    producer = Producer({"bootstrap.servers": kafka_settings.bootstrap_servers})
    for order, source in (("801000000000009AAA", kafka_settings.outcomes),
                          ("801000000000008AAA", "no such topic!")):  # a name Kafka refuses
        producer.produce(kafka_settings.dead_letters, key=order, value=b"v",
                         headers=dead_letter_headers(stage="sink", reason="x",
                                                     error_class="SalesforceRecordError",
                                                     source_topic=source,
                                                     source_partition=0, source_offset=1))
    producer.flush(10)
    result = sfprov(kafka_settings, "dlq", "requeue", "--all")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "requeued 1 record(s)" in result.stdout, result.stdout
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: 1 record(s) not requeued"), line
    assert "no such topic!" in line and "Invalid topic" in line, line
    back = sfprov(kafka_settings, "tail", "outcomes", "--from-beginning")
    assert [json.loads(x)["key"] for x in back.stdout.splitlines()] == ["801000000000009AAA"]


def sfprov_env(settings, extra: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
           "KAFKA_TOPIC_PREFIX": settings.topic_prefix, "PYTHONPATH": str(ROOT),
           "KAFKA_PARTITIONS": str(settings.partitions),
           "SFPROV_ENV_FILE": os.devnull, "SFPROV_STATE_DIR": "/nonexistent", **extra}
    return subprocess.run([sys.executable, "-m", "ops.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


# A worker that joins the group after replay's "no members" check and before its commit:
# the broker's real description (empty), then a real member, then replay goes on.
JOIN_AFTER_THE_CHECK = """
import sys, time
from confluent_kafka import Consumer
from confluent_kafka.admin import AdminClient
from ops import cli, cmd_replay

bootstrap, topic = sys.argv[1], sys.argv[2]
members = []

class MemberJoinsAfterTheCheck(AdminClient):
    def describe_consumer_groups(self, group_ids, **kwargs):
        futures = super().describe_consumer_groups(group_ids, **kwargs)
        for group, future in futures.items():
            assert not future.result().members
            member = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                               "enable.auto.commit": False})
            member.subscribe([topic])
            deadline = time.monotonic() + 60
            while not member.assignment() and time.monotonic() < deadline:
                member.poll(0.2)
            assert member.assignment(), "the member never joined"
            members.append(member)
        return futures

cmd_replay.AdminClient = MemberJoinsAfterTheCheck
try:
    code = cli.main(sys.argv[3:])
finally:
    for member in members:
        member.close()
sys.exit(code)
"""


def test_replay_execute_fails_when_the_broker_refuses_the_commit(kafka_settings):
    """alter_consumer_group_offsets' future does not raise when the broker refuses the commit
    partition by partition (a member joined after the check: Unknown member): replay once
    printed "rewound …" and exited 0 with nothing moved."""
    produce_requests(kafka_settings, {0: 3})
    group = commit_worker_group(kafka_settings, {0: 3})
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SFPROV_ENV_FILE": os.devnull,
           "SFPROV_STATE_DIR": "/nonexistent",
           "KAFKA_PARTITIONS": str(kafka_settings.partitions)}
    result = subprocess.run(
        [sys.executable, "-c", JOIN_AFTER_THE_CHECK, kafka_settings.bootstrap_servers,
         kafka_settings.requests, "-b", kafka_settings.bootstrap_servers,
         "--prefix", kafka_settings.topic_prefix, "replay", "--from-offset", "0:1",
         "--execute"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "rewound" not in result.stdout, result.stdout
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"error: rewinding the worker group {group}: "), line
    assert "refused the commit of partitions 0, 1, 2: Broker: Unknown member" in line, line
    assert "stop the worker" in line, line
    unchanged = sfprov(kafka_settings, "replay", "--from-offset", "0:1", "--json")
    assert unchanged.returncode == 0, unchanged.stderr
    assert partition_row(unchanged, 0)["current"] == 3  # nothing was changed


ID15 = "8015g00000XyZab"
ID18 = "8015g00000XyZabAAF"  # connectors.decode.order_id18(ID15): the form records carry


def test_an_order_is_found_by_its_15_character_id(kafka_settings):
    """Records carry the 18-character id (key, value, dead-letter header): trace, tail
    --order-id and dlq --order-id once compared the 15-character form as text, finding none."""
    producer = Producer({"bootstrap.servers": kafka_settings.bootstrap_servers})
    producer.produce(kafka_settings.requests, key=ID18, value=provision_request(ID18, "k-1"))
    producer.produce(kafka_settings.requests, key="801000000000001AAA",
                     value=provision_request("801000000000001AAA", "other"))
    outcome = AvroSerde("provisioning_outcome").encode(
        {"order_id": ID18, "status": "Failed", "completed_at": int(time.time() * 1000)})
    producer.produce(kafka_settings.outcomes, key=ID18, value=outcome)
    producer.produce(kafka_settings.dead_letters, key="some-event-uuid", value=b"x",
                     headers=dead_letter_headers(stage="worker", reason="bad",
                                                 error_class="X", order_id=ID18))
    assert producer.flush(10) == 0
    tail = sfprov(kafka_settings, "tail", "requests", "--from-beginning", "--order-id", ID15)
    assert tail.returncode == 0, tail.stderr
    assert [json.loads(x)["value"]["IdemKey__c"] for x in tail.stdout.splitlines()] == ["k-1"]
    dlq = sfprov(kafka_settings, "dlq", "list", "--order-id", ID15, "--json")
    assert dlq.returncode == 0, dlq.stderr
    assert [d["key"] for d in json.loads(dlq.stdout)] == ["some-event-uuid"]
    trace = sfprov(kafka_settings, "trace", ID15, "--json")
    assert trace.returncode == 0, trace.stderr
    traced = json.loads(trace.stdout)
    assert traced["order_id"] == ID18
    assert [e["value"]["IdemKey__c"] for e in traced["events"]] == ["k-1"]
    assert [o["key"] for o in traced["outcomes"]] == [ID18]
    assert [d["key"] for d in traced["dead_letters"]] == ["some-event-uuid"]


def test_tail_last_counts_records_not_transaction_markers(kafka_settings):
    """On a transactional topic every commit marker takes an offset: --last N once started
    at end − N, so --last 1 printed nothing and --last 3 one or two records."""
    producer = Producer({"bootstrap.servers": kafka_settings.bootstrap_servers,
                         "transactional.id": f"{kafka_settings.topic_prefix}tail-test"})
    producer.init_transactions(30)
    for i in range(5):
        producer.begin_transaction()
        producer.produce(kafka_settings.requests, key=ID18, partition=0,
                         value=provision_request(ID18, f"t-{i}"))
        producer.commit_transaction(30)
    producer.begin_transaction()  # an aborted one at the end: offsets, no records
    producer.produce(kafka_settings.requests, key=ID18, partition=0,
                     value=provision_request(ID18, "aborted"))
    producer.abort_transaction(30)
    for last, expected in ((1, ["t-4"]), (3, ["t-2", "t-3", "t-4"]),
                           (10, [f"t-{i}" for i in range(5)])):
        tail = sfprov(kafka_settings, "tail", "requests", "--last", str(last))
        assert tail.returncode == 0, tail.stderr
        assert [json.loads(x)["value"]["IdemKey__c"] for x in tail.stdout.splitlines()] \
            == expected, (last, tail.stdout)
