"""The operator commands' guards, with fakes for the broker and Salesforce: replay's count of
the records a forward move skips, reconcile's view of the worker's progress, dlq requeue and
trace on what they could not read, topics on a missing topic."""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import time
import types
from typing import Any

import pytest
from confluent_kafka import KafkaError as CKafkaError
from confluent_kafka import KafkaException, TopicPartition

import common.reconcile as reconcile_module
from common import lag
from common.errors import KafkaError
from ops import cmd_dlq, cmd_kafka, cmd_orders, cmd_replay, kafkaview
from ops.kafkaview import Deliveries, Record

OID = "801000000000001AAA"


# -- replay: the skip count is a guard --------------------------------------------------------

class _Msg:
    def __init__(self, err: Any = None, partition: int = 0, offset: int = 0) -> None:
        self._err, self._partition, self._offset = err, partition, offset

    def error(self) -> Any:
        return self._err

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset


class _BrokenConsumer:
    """A read_committed consumer whose consume() gets librdkafka's 'Disconnected' event."""

    def assign(self, tps: Any) -> None: ...
    def unassign(self) -> None: ...
    def consume(self, n: int, timeout: float) -> list[_Msg]:
        return [_Msg(CKafkaError(CKafkaError._TRANSPORT), partition=-1)]
    def position(self, tps: Any) -> Any:
        return tps
    def close(self) -> None: ...


class _SilentConsumer(_BrokenConsumer):
    """One whose partition never gives a record (an open transaction, a leader away)."""

    def consume(self, n: int, timeout: float) -> list[_Msg]:
        return []

    def position(self, tps: Any) -> Any:
        return [TopicPartition(tp.topic, tp.partition, 100) for tp in tps]


class _ReadingConsumer(_BrokenConsumer):
    """One that reads offsets 100–599 of partition 0, then stands at 600."""

    def __init__(self) -> None:
        self.at = 100

    def consume(self, n: int, timeout: float) -> list[_Msg]:
        batch = [_Msg(None, 0, o) for o in range(self.at, min(self.at + n, 600))]
        self.at += len(batch)
        return batch

    def position(self, tps: Any) -> Any:
        return [TopicPartition(tp.topic, tp.partition, self.at) for tp in tps]


class _Future:
    def __init__(self, value: Any) -> None:
        self.value = value

    def result(self, *args: Any, **kwargs: Any) -> Any:
        return self.value


def fake_replay(monkeypatch: pytest.MonkeyPatch, to: int, low: int = 0) -> list[Any]:
    """replay against fakes: the worker group committed 100 on partition 0, the plan moves
    it to ``to``; the partition's log starts at ``low``; returns the offsets replay
    committed. (Also test_cli_review_fixes.)"""
    altered: list[Any] = []

    class Admin:
        def __init__(self, conf: Any) -> None: ...
        def list_topics(self, *args: Any, **kwargs: Any) -> None: ...
        def describe_consumer_groups(self, groups: list[str]) -> Any:
            return {groups[0]: _Future(types.SimpleNamespace(members=[]))}
        def alter_consumer_group_offsets(self, requests: Any) -> Any:
            altered.append([(tp.partition, tp.offset)
                            for tp in requests[0].topic_partitions])
            return {requests[0].group_id: _Future(types.SimpleNamespace(topic_partitions=[]))}

    settings = types.SimpleNamespace(requests="salesforce.order-provision-requested")
    monkeypatch.setattr(cmd_replay, "kafka_settings", lambda args: settings)
    monkeypatch.setattr(cmd_replay, "worker_group", lambda args: "sfprov-worker")
    monkeypatch.setattr(cmd_replay, "client_config", lambda s: {})
    monkeypatch.setattr(cmd_replay, "AdminClient", Admin)
    monkeypatch.setattr(cmd_replay, "group_positions", lambda s, c, g, t: [(0, 100, to)])
    monkeypatch.setattr(cmd_replay, "end_offsets", lambda c, t: {0: (low, max(to, low))},
                        raising=False)
    monkeypatch.setattr(cmd_replay, "rewind_consumer_positions",
                        lambda s, t, offsets=None, from_time_ms=None: {0: to})
    return altered


def replay_args(to: int, **extra: Any) -> argparse.Namespace:
    """replay's arguments: ``--from-offset 0:{to}`` executed, then ``extra``."""
    return argparse.Namespace(**{"execute": True, "dry_run": False, "wait": 0.0,
                                 "from_offset": (0, to), "from_time": None,
                                 "allow_skip": False, "json": False, **extra})


@pytest.fixture()
def replay_setup(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """replay against fakes: 500 records unread below 600, where the plan moves the group."""
    return fake_replay(monkeypatch, to=600)


def test_replay_refuses_when_the_skip_count_cannot_be_read(replay_setup, monkeypatch, capsys):
    """records_between swallowed the error and counted 0: replay moved the group past 500
    unprocessed requests without --allow-skip and said "rewound … by 0 records"."""
    monkeypatch.setattr(cmd_replay, "consumer", lambda s: _BrokenConsumer())
    with pytest.raises(KafkaError) as raised:
        cmd_replay.replay(replay_args(600))
    message = str(raised.value)
    assert "\n" not in message
    assert "partition 0" in message and "nothing was changed" in message, message
    assert replay_setup == []
    assert "rewound" not in capsys.readouterr().out


def test_replay_counts_the_records_it_would_skip(replay_setup, monkeypatch, capsys):
    monkeypatch.setattr(cmd_replay, "consumer", lambda s: _ReadingConsumer())
    assert cmd_replay.replay(replay_args(600)) == 3
    assert "past 500 record(s)" in capsys.readouterr().err
    assert replay_setup == []


def test_records_between_raises_on_a_partial_read(monkeypatch):
    """A read cut short is not a count: an error or a partition that stops short raises."""
    with pytest.raises(KafkaException):
        lag.records_between(_BrokenConsumer(), "t", 0, 100, 600)
    clock = itertools.count(0.0, 1.0)
    monkeypatch.setattr(lag, "time", types.SimpleNamespace(monotonic=lambda: next(clock)))
    with pytest.raises(TimeoutError):
        lag.records_between(_SilentConsumer(), "t", 0, 100, 600)


class _Committed:
    """The group's committed offsets (partition → offset)."""

    def __init__(self, offsets: dict[int, int]) -> None:
        self.offsets = offsets

    def committed(self, tps: Any, timeout: float = 0) -> Any:
        return [TopicPartition(tp.topic, tp.partition, self.offsets[tp.partition])
                for tp in tps]


def _with_marks(consumer: Any, marks: dict[int, tuple[int, int]]) -> Any:
    """``consumer`` answering the topic's partitions and their (low, high) watermarks."""
    consumer.list_topics = lambda topic, timeout=0: types.SimpleNamespace(topics={
        topic: types.SimpleNamespace(error=None, partitions=dict.fromkeys(marks))})
    consumer.get_watermark_offsets = lambda tp, timeout=0: marks[tp.partition]
    return consumer


def test_a_lag_read_cut_short_is_the_offset_distance_not_an_exact_zero():
    """A broker error while counting made the lag 0, reported exact: `sfprov lag` said 0,
    the gauge published 0 and the stall watchdog dropped the partition from its wait."""
    rows = lag.group_lag_detail(_Committed({0: 100}), _with_marks(_BrokenConsumer(),
                                                                   {0: (0, 600)}), "t")
    assert rows == [lag.PartitionLag(0, 100, 600, 500, False, True)]


def test_a_committed_offset_below_the_log_start_counts_from_the_log_start():
    """Retention removed offsets 100–4,999 while the group's offset stayed: 5,000 were
    counted left to read where 100 are."""
    class Reading(_BrokenConsumer):  # reads offsets 5,000–5,099, then stands at 5,100
        at = 5000

        def consume(self, n: int, timeout: float) -> list[_Msg]:
            batch = [_Msg(None, 0, o) for o in range(self.at, min(self.at + n, 5100))]
            self.at += len(batch)
            return batch

        def position(self, tps: Any) -> Any:
            return [TopicPartition(tp.topic, tp.partition, self.at) for tp in tps]

    rows = lag.group_lag_detail(_Committed({0: 100}), _with_marks(Reading(),
                                                                   {0: (5000, 5100)}), "t")
    assert rows == [lag.PartitionLag(0, 100, 5100, 100, True, True)]


# -- reconcile: a request waiting in the worker's lag is not stranded ----------------------

def test_reconcile_does_not_re_request_what_the_worker_has_not_reached(monkeypatch, capsys):
    """As the connector's passes do (consumed_by): reconcile once re-requested every Order
    whose request still waited behind the worker's lag."""
    now = time.time()
    changed = dt.datetime.fromtimestamp(now - 3600, dt.UTC).strftime(
        "%Y-%m-%dT%H:%M:%S.000+0000")

    class Salesforce:
        def count(self, soql: str) -> int:
            return 1

        def query(self, soql: str) -> list[dict[str, Any]]:
            return [{"Id": OID, "OrderNumber": "1", "LastModifiedDate": changed}]

    def read_topic(kafka: Any, topic: str, *args: Any, **kwargs: Any) -> Any:
        if topic == "requests":  # its request at 0:500; no outcome yet
            yield OID, {"CreatedDate": dt.datetime.fromtimestamp(now - 3590, dt.UTC),
                        "IdemKey__c": "k1"}, 0, 500

    groups: list[str] = []

    def requests_offsets(kafka: Any, group: str, client: Any = None) -> dict[int, int]:
        groups.append(group)
        return {0: 120}  # the worker has committed up to 120

    sent: list[str] = []

    def send_requests(settings: Any, ids: list[str]) -> Deliveries:
        sent.extend(ids)
        delivered = Deliveries()
        delivered.delivered = len(ids)
        return delivered

    monkeypatch.setattr(reconcile_module, "read_topic", read_topic)
    monkeypatch.setattr(reconcile_module, "_requests_offsets", requests_offsets)
    monkeypatch.setattr(cmd_orders, "_sf", lambda: Salesforce())
    monkeypatch.setattr(cmd_orders, "kafka_settings", lambda args: types.SimpleNamespace(
        requests="requests", outcomes="outcomes"))
    monkeypatch.setattr(cmd_orders, "worker_group", lambda args: "sfprov-worker",
                        raising=False)
    monkeypatch.setattr(cmd_orders, "send_requests", send_requests)
    args = argparse.Namespace(older_than="15m", dry_run=False, json=True)
    assert cmd_orders.reconcile(args) == 0
    assert sent == []
    assert groups == ["sfprov-worker"]
    assert json.loads(capsys.readouterr().out)["undecided"] == []


# -- dlq requeue: a record named and not requeued is a failure -----------------------------

LETTERS = [Record("dl", 0, 17, 0, OID, "x", {"stage": "connector", "source_topic": ""}, b"x"),
           Record("dl", 0, 18, 0, "801000000000002AAA", "y",
                  {"stage": "worker", "source_topic": "requests"}, b"y")]


@pytest.fixture()
def produced(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []

    class Producer:
        def __init__(self, conf: Any) -> None: ...
        def produce(self, topic: str, on_delivery: Any, **kwargs: Any) -> None:
            if topic != "dl":  # requeue markers (to the dead-letter topic) are not copies
                out.append((topic, kwargs.get("key")))
            on_delivery(None, types.SimpleNamespace(topic=lambda: topic, partition=lambda: 0,
                                                    offset=lambda: len(out)))
        def poll(self, timeout: float) -> None: ...
        def flush(self, timeout: float) -> int:
            return 0

    def scan(settings: Any, topic: str, schema: Any, match: Any = None, **kwargs: Any) -> Any:
        return (r for r in LETTERS if match(r))

    monkeypatch.setattr(cmd_dlq, "kafka_settings",
                        lambda args: types.SimpleNamespace(dead_letters="dl"))
    monkeypatch.setattr(cmd_dlq, "client_config", lambda s, **k: {})
    monkeypatch.setattr(cmd_dlq, "scan", scan)
    monkeypatch.setattr(cmd_dlq, "Producer", Producer)
    return out


def _dlq_args(*argv: str) -> argparse.Namespace:
    from ops.cli import build_parser

    return build_parser().parse_args(["dlq", *argv])


@pytest.mark.parametrize("offsets,requeued,named", [
    (["0:17"], 0, ["0:17", "not requeueable"]),     # a connector-stage dead letter
    (["0:99"], 0, ["0:99"]),                          # no dead letter there
    (["0:18", "0:99"], 1, ["0:99"]),                  # one of two
])
def test_dlq_requeue_fails_for_an_offset_not_requeued(produced, capsys, offsets, requeued,
                                                      named):
    argv = ["requeue"] + [a for o in offsets for a in ("--offset", o)]
    assert cmd_dlq.dlq(_dlq_args(*argv)) == 1
    out, err = capsys.readouterr()
    assert f"requeued {requeued} record(s)" in out
    assert len(produced) == requeued
    assert err.startswith("error: ") and all(n in err for n in named), err


def test_dlq_requeue_reads_an_offset_as_a_number(produced, capsys):
    assert cmd_dlq.dlq(_dlq_args("requeue", "--offset", "0:018")) == 0
    assert "requeued 1 record(s)" in capsys.readouterr().out
    assert produced == [("requests", b"801000000000002AAA")]


def test_dlq_requeue_all_passes_over_the_unrequeueable_ones(produced, capsys):
    assert cmd_dlq.dlq(_dlq_args("requeue", "--all")) == 0
    out, _err = capsys.readouterr()
    assert "requeued 1 record(s)" in out and "0:17" in out


# -- dlq requeue --all and trace: a partition that stops before its end --------------------

class _StalledMessage:
    def __init__(self, partition: int, offset: int) -> None:
        self.p, self.o = partition, offset

    def error(self) -> None:
        return None

    def topic(self) -> str:
        return "dl"

    def partition(self) -> int:
        return self.p

    def offset(self) -> int:
        return self.o

    def headers(self) -> list[tuple[str, bytes]]:
        return [("dlq.stage", b"worker"), ("dlq.source_topic", b"requests")]

    def value(self) -> bytes:
        return b"v"

    def key(self) -> bytes:
        return b"801000000000001AAA"

    def timestamp(self) -> tuple[int, int]:
        return (1, 0)


class _StallingConsumer:
    """Partition 0 gives its one record; partition 1 (its leader moving) gives nothing."""

    def __init__(self) -> None:
        self.queue = [_StalledMessage(0, 0)]
        self.pos = {0: 0, 1: 0}

    def assign(self, assignment: Any) -> None: ...

    def poll(self, timeout: float) -> Any:
        if self.queue:
            msg = self.queue.pop()
            self.pos[msg.p] = msg.o + 1
            return msg
        return None

    def position(self, tps: Any) -> Any:
        return [TopicPartition("dl", tp.partition, self.pos[tp.partition]) for tp in tps]

    def close(self) -> None: ...


def test_dlq_requeue_all_fails_when_a_partition_is_not_read_whole(produced, monkeypatch):
    """scan gave up on a partition after 12 s of nothing and requeue --all said "requeued 1"
    with partition 1's five dead letters never read."""
    clock = itertools.count(0.0, 1.0)
    monkeypatch.setattr(kafkaview, "time", types.SimpleNamespace(monotonic=lambda: next(clock)))
    monkeypatch.setattr(kafkaview, "consumer", lambda settings, **k: _StallingConsumer())
    monkeypatch.setattr(kafkaview, "end_offsets", lambda c, t: {0: (0, 1), 1: (0, 5)})
    monkeypatch.setattr(kafkaview, "Decoder", lambda settings, schema, topic:
                        types.SimpleNamespace(record=lambda m: Record(
                            m.topic(), m.p, m.o, 1, m.key().decode(), "v",
                            kafkaview.parse_headers(m.headers()), b"v")))
    monkeypatch.setattr(cmd_dlq, "scan", kafkaview.scan)
    with pytest.raises(KafkaError) as raised:
        cmd_dlq.dlq(_dlq_args("requeue", "--all"))
    assert "partitions [1]" in str(raised.value) and "\n" not in str(raised.value)
    assert produced == []  # nothing requeued from a partial read


def _trace_salesforce(opportunities: list[dict[str, Any]]) -> Any:
    class Salesforce:
        def query(self, soql: str) -> list[dict[str, Any]]:
            if "FROM Order" in soql:
                return [{"Id": OID, "Status": "Activated", "Activation_Status__c": "Activating",
                         "WHMCS_Order_Id__c": None, "OpportunityId": "006000000000001AAA",
                         "Account": {"WH_Account__c": "12"}}]
            return opportunities
    return Salesforce()


@pytest.fixture()
def trace_setup(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cmd_orders, "kafka_settings", lambda args: types.SimpleNamespace(
        requests="r", outcomes="o", dead_letters="d"))
    monkeypatch.setattr(cmd_orders, "_whmcs_orders",
                        lambda client_id, order_id: [{"id": 77, "client": client_id}])


def test_trace_fails_when_a_topic_is_not_read_whole(trace_setup, monkeypatch, capsys):
    def scan(settings: Any, topic: str, schema: Any, *, match: Any = None,
             complete: bool = False, **kwargs: Any) -> Any:
        if topic == "d" and complete:
            raise KafkaError("d: partitions [1] stopped before their end offsets [5]")
        return iter(())

    monkeypatch.setattr(cmd_orders, "scan", scan)
    monkeypatch.setattr(cmd_orders, "_sf", lambda: _trace_salesforce([{"Id": "006"}]))
    assert cmd_orders.trace(argparse.Namespace(order_id=OID, json=False)) == 1
    out, err = capsys.readouterr()
    [line] = err.strip().splitlines()
    assert line.startswith("error: ") and "partitions [1]" in line, line
    assert "whmcs orders" in out  # the rest of the trace is still shown


# -- trace: an Opportunity the query does not return ----------------------------------------

def test_trace_says_opportunity_not_found_and_still_reads_whmcs(trace_setup, monkeypatch,
                                                                 capsys):
    """sf.query(...)[0] on no rows once ended the Salesforce part in "cannot read: list
    index out of range" and skipped the WHMCS lookup."""
    monkeypatch.setattr(cmd_orders, "scan", lambda *a, **k: iter(()))
    monkeypatch.setattr(cmd_orders, "_sf", lambda: _trace_salesforce([]))
    assert cmd_orders.trace(argparse.Namespace(order_id=OID, json=True)) == 0
    traced = json.loads(capsys.readouterr().out)
    assert "salesforce_error" not in traced
    assert traced["salesforce_opportunity"] is None
    assert traced["whmcs_orders"] == [{"id": 77, "client": 12}]
    assert cmd_orders.trace(argparse.Namespace(order_id=OID, json=False)) == 0
    out = capsys.readouterr().out
    assert "Opportunity 006000000000001AAA: not found" in out and "cannot read" not in out
    assert "whmcs orders" in out


# -- topics: a missing topic ----------------------------------------------------------------

@pytest.mark.parametrize("as_json", [False, True])
def test_topics_fails_when_a_project_topic_is_missing(monkeypatch, capsys, as_json):
    names = ["requests", "outcomes", "dead-letters"]
    present = names[1:]  # the requests topic is missing

    class Config:
        def __init__(self, value: str) -> None:
            self.value = value

    class Admin:
        def __init__(self, conf: Any) -> None: ...
        def list_topics(self, timeout: float) -> Any:
            return types.SimpleNamespace(topics={n: None for n in present})
        def describe_configs(self, resources: Any) -> Any:
            return {r: _Future({"retention.ms": Config("1"), "cleanup.policy": Config("delete")})
                    for r in resources}

    monkeypatch.setattr(cmd_kafka, "kafka_settings", lambda args: types.SimpleNamespace())
    monkeypatch.setattr(cmd_kafka, "declared_topics",
                        lambda s: [types.SimpleNamespace(name=n) for n in names])
    monkeypatch.setattr(cmd_kafka, "client_config", lambda s, **k: {})
    monkeypatch.setattr(cmd_kafka, "AdminClient", Admin)
    monkeypatch.setattr(cmd_kafka, "consumer",
                        lambda s: types.SimpleNamespace(close=lambda: None))
    monkeypatch.setattr(cmd_kafka, "end_offsets", lambda c, t: {0: (0, 0)})
    monkeypatch.setattr(cmd_kafka, "describe_drift", lambda admin, present, md: [])
    assert cmd_kafka.topics(argparse.Namespace(json=as_json)) == 2
    out = capsys.readouterr().out
    if as_json:
        assert json.loads(out)["topics"][0] == {"topic": "requests", "missing": True}
    else:
        assert "MISSING" in out


# -- tail / trace: a tombstone is a record, not a traceback ------------------------------------

class _ValueMsg:
    def __init__(self, value: bytes | None, headers: Any) -> None:
        self._value, self._headers = value, headers

    def headers(self) -> Any:
        return self._headers

    def value(self) -> bytes | None:
        return self._value

    def key(self) -> bytes:
        return OID.encode()

    def topic(self) -> str:
        return "t.requests"

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return 5

    def timestamp(self) -> tuple[int, int]:
        return (1, 1700000000123)


@pytest.mark.parametrize("schema", ["provision_request", "provisioning_outcome",
                                    "connector_offset", None])
@pytest.mark.parametrize("headers", [None, [("sfprov.schema", b"sfprov.v1.ProvisionRequest")]])
def test_a_tombstone_is_shown_not_a_crash(schema, headers):
    """A null value made ``sfprov tail`` / ``trace`` die with a TypeError traceback."""
    from common.settings import KafkaSettings

    record = kafkaview.Decoder(KafkaSettings.load({}), schema, "t.requests").record(
        _ValueMsg(None, headers))
    assert isinstance(record, Record) and record.key == OID and record.raw_value is None
    if schema is not None:
        assert record.value == {"tombstone": True}
    json.dumps(record.as_json())


@pytest.mark.parametrize("value,shown", [
    ({"tombstone": True}, "no replay position committed yet"),
    ({"undecodable": "truncated Avro", "raw": "00"},
     "its last position record cannot be read: truncated Avro"),
])
def test_lag_shows_a_position_record_it_cannot_use(monkeypatch, capsys, value, shown):
    """The connector-offsets topic's last record for the key is a tombstone or undecodable:
    `sfprov lag` says so (it raised KeyError 'committed_at')."""
    import common.settings

    monkeypatch.setattr(cmd_kafka, "kafka_settings",
                        lambda args: types.SimpleNamespace(connector_offsets="offsets"))
    monkeypatch.setattr(common.settings.ConnectorSettings, "load", classmethod(
        lambda cls: types.SimpleNamespace(name="sfprov", channel="/event/X")))
    monkeypatch.setattr(cmd_kafka, "last_value", lambda *a: Record(
        "offsets", 0, 3, 0, "sfprov|/event/X", value, {}))
    cmd_kafka._print_connector_position(argparse.Namespace())
    assert shown in capsys.readouterr().out


# -- trace: requeue markers are not dead letters -----------------------------------------

def test_trace_keeps_requeue_markers_apart_from_dead_letters(trace_setup, monkeypatch, capsys):
    """A marker carries its dead letter's key (the Order id), so trace read it as one more
    dead letter: empty value, no stage, no reason, counted in --json's dead_letters."""
    from common.deadletter import dead_letter_headers, parse_headers, requeue_marker_headers

    letter = Record("d", 0, 5, 1000, OID, "", parse_headers(dead_letter_headers(
        stage="sink", reason="refused", error_class="x", source_topic="o")), b"v")
    marker = Record("d", 2, 9, 2000, OID, "",
                    parse_headers(requeue_marker_headers(0, 5, "o:1:40")), b"")

    def scan(settings: Any, topic: str, schema: Any, *, match: Any = None, **kw: Any) -> Any:
        return iter([r for r in (letter, marker) if match(r)] if topic == "d" else [])

    monkeypatch.setattr(cmd_orders, "scan", scan)
    monkeypatch.setattr(cmd_orders, "_sf", lambda: _trace_salesforce([{"Id": "006"}]))
    assert cmd_orders.trace(argparse.Namespace(order_id=OID, json=True)) == 0
    traced = json.loads(capsys.readouterr().out)
    assert [d["offset"] for d in traced["dead_letters"]] == [5]
    assert [m["headers"]["requeued_to"] for m in traced["requeue_markers"]] == ["o:1:40"]
    assert cmd_orders.trace(argparse.Namespace(order_id=OID, json=False)) == 0
    out = capsys.readouterr().out
    assert "dead letters (1):" in out and "requeued: dead letter 0:5, its copy at o:1:40" in out
