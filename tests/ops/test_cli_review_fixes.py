"""The operator CLI's option checks and figures a review found wrong, with fakes for the
broker and the sandbox (no broker needed):

* ``dlq --stage`` took any value (``--stage Worker`` matched nothing: ``requeued 0``, exit 0);
* ``lag`` printed committed + records as the partition's ``end`` (103 where the log ends at
  106, as ``kafka-consumer-groups`` says);
* ``demo --count 0`` told the operator to wipe the sandbox (``make clean up``);
* ``tail --last -3`` showed nothing, exit 0;
* ``replay`` called an offset distance beyond 1,000 offsets a count of records;
* ``trace``, ``tail --order-id`` and ``dlq --order-id`` took any text as an Order id
  (``trace abc`` exited 1 through SystemExit, non-ASCII letters passed ``str.isalnum``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import types
from typing import Any

import pytest
from confluent_kafka import TopicPartition

import ops.cli as cli
from common import lag
from ops import cmd_dlq, cmd_kafka, cmd_orders, cmd_replay, kafkaview
from tests.ops.test_cli_guards import fake_replay, replay_args

ID15 = "8015g00000XyZab"
ID18 = "801000000000001AAA"


@pytest.fixture(autouse=True)
def quiet_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No machine's stack, .env or SFPROV_* variables leak in."""
    monkeypatch.setattr(cli, "load_local_stack_env", lambda *_argv: None)
    monkeypatch.setenv("SFPROV_ENV_FILE", os.devnull)
    monkeypatch.setenv("SFPROV_STATE_DIR", "/nonexistent")
    for name in ("SFPROV_DLQ_STAGE", "SFPROV_TAIL_LAST", "SFPROV_DEMO_COUNT",
                 "SFPROV_ORDER_ID"):
        monkeypatch.delenv(name, raising=False)


def _refuse(*_args: Any, **_kwargs: Any) -> Any:
    raise AssertionError("a Kafka client or the sandbox was contacted")


@pytest.fixture()
def no_clients(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any Kafka client (or the Salesforce sandbox) the command would make fails the test."""
    from ops import sandboxes

    for module, name in ((cmd_kafka, "scan"), (cmd_dlq, "scan"), (cmd_dlq, "Producer"),
                         (cmd_kafka, "consumer"), (cmd_kafka, "AdminClient"),
                         (cmd_orders, "scan"), (cmd_orders, "Producer"),
                         (kafkaview, "consumer"), (kafkaview, "group_reader"),
                         (sandboxes, "admin")):
        monkeypatch.setattr(module, name, _refuse)


def _usage_error(argv: list[str], capsys: pytest.CaptureFixture[str], option: str) -> str:
    with pytest.raises(SystemExit) as exited:
        cli.main(["-b", "127.0.0.1:1", *argv])
    err = capsys.readouterr().err
    assert exited.value.code == 2, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"sfprov {argv[0]}: error: argument {option}: "), err
    return last


def _bad_env(argv: list[str], capsys: pytest.CaptureFixture[str], variable: str,
             option: str) -> str:
    assert cli.main(["-b", "127.0.0.1:1", *argv]) == 1
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {variable}: "), err
    assert option in lines[0], err
    return lines[0]


# -- 1. dlq --stage ------------------------------------------------------------------------

@pytest.mark.parametrize("argv", [["dlq", "--stage", "Worker"],
                                  ["dlq", "requeue", "--all", "--stage", "Worker"],
                                  ["dlq", "list", "--stage", ""]])
def test_dlq_stage_outside_the_three_is_a_usage_error(no_clients, capsys, argv):
    line = _usage_error(argv, capsys, "--stage")
    assert "connector" in line and "worker" in line and "sink" in line


def test_dlq_stage_from_the_environment_is_checked(no_clients, monkeypatch, capsys):
    monkeypatch.setenv("SFPROV_DLQ_STAGE", "Worker")
    line = _bad_env(["dlq", "requeue", "--all"], capsys, "SFPROV_DLQ_STAGE", "--stage")
    assert "'Worker'" in line


@pytest.mark.parametrize("stage", ["connector", "worker", "sink"])
def test_dlq_takes_each_stage(stage):
    assert cli.build_parser().parse_args(["dlq", "--stage", stage]).stage == stage


# -- 2. lag: the real log end, the lag in records ---------------------------------------------

class _Topics:
    """A read_committed consumer's view: one partition whose log ends at 106."""

    def list_topics(self, topic: str, timeout: float = 10.0) -> Any:
        return types.SimpleNamespace(topics={topic: types.SimpleNamespace(
            error=None, partitions={0: None})})

    def get_watermark_offsets(self, tp: Any, timeout: float = 10.0) -> tuple[int, int]:
        return 0, 106

    def close(self) -> None: ...


class _Reader:
    """The group committed 100 on partition 0."""

    def committed(self, tps: list[TopicPartition], timeout: float = 10.0) -> Any:
        return [TopicPartition(tp.topic, tp.partition, 100) for tp in tps]

    def close(self) -> None: ...


@pytest.fixture()
def three_records_three_markers(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """committed 100, log end 106: 3 records and 3 commit markers in between."""
    counted: list[tuple[int, int]] = []

    def records_between(c: Any, topic: str, partition: int, start: int, end: int) -> int:
        counted.append((start, end))
        return 3

    monkeypatch.setattr(lag, "records_between", records_between)
    monkeypatch.setattr(kafkaview, "group_reader", lambda settings, group, **k: _Reader())
    monkeypatch.setattr(cmd_kafka, "consumer", lambda settings, **k: _Topics())
    monkeypatch.setattr(cmd_kafka, "kafka_settings", lambda args: types.SimpleNamespace(
        requests="requests-topic", outcomes="outcomes-topic"))
    monkeypatch.setattr(cmd_kafka, "worker_group", lambda args: "sfprov-worker")
    monkeypatch.setattr(cmd_kafka, "sink_group", lambda args: "sfprov-sink")
    monkeypatch.setattr(cmd_kafka, "_connector_position",
                        lambda args: {"name": "c", "replay_id": None})
    return counted


def test_lag_prints_the_log_end_and_the_records_left(three_records_three_markers, capsys):
    assert cmd_kafka.lag(argparse.Namespace(json=False)) == 0
    out = capsys.readouterr().out
    assert re.search(r"committed\s+100\s+end\s+106\s+lag\s+3\b", out), out
    assert "103" not in out, out
    assert re.search(r"worker \(group sfprov-worker\) on requests-topic: lag 3\b", out), out
    assert "markers included" not in out, out  # counted in records: exact


def test_lag_says_when_a_lag_is_in_offsets(three_records_three_markers, monkeypatch, capsys):
    """A partition further behind than EXACT_LAG_LIMIT is not read through: its lag is the
    offset distance, commit markers included, and each such row says so."""
    monkeypatch.setattr(lag, "EXACT_LAG_LIMIT", 5)  # 6 behind
    # a committed record among them (the first at 100): not only aborted offsets
    monkeypatch.setattr(lag, "has_record_between", lambda *a, **k: True)
    assert cmd_kafka.lag(argparse.Namespace(json=False)) == 0
    out = capsys.readouterr().out
    assert re.search(r"committed\s+100\s+end\s+106\s+lag\s+6  \(offsets: markers included\)$",
                     out, re.MULTILINE), out
    assert three_records_three_markers == []  # nothing read


def test_lag_json_end_is_the_log_end(three_records_three_markers, capsys):
    assert cmd_kafka.lag(argparse.Namespace(json=True)) == 0
    data = json.loads(capsys.readouterr().out)
    for group in data["groups"]:
        assert group["lag"] == 3
        assert group["partitions"] == [
            {"partition": 0, "committed": 100, "end": 106, "lag": 3, "lag_exact": True}]


def test_group_lag_keeps_its_shape_for_the_gauges_and_the_watchdog(
        three_records_three_markers):
    """The worker's stall watchdog and the lag gauges read end − committed as the records
    left: group_lag's rows stay (partition, committed, committed + records)."""
    assert lag.group_lag(_Reader(), _Topics(), "requests-topic") == [(0, 100, 103)]
    assert three_records_three_markers == [(100, 106)]


# -- 3. demo --count ------------------------------------------------------------------------

@pytest.mark.parametrize("count", ["0", "-1", "two"])
def test_demo_count_must_be_positive(no_clients, capsys, count):
    line = _usage_error(["demo", "--count", count], capsys, "--count")
    assert "make clean" not in line


def test_demo_count_from_the_environment_is_checked(no_clients, monkeypatch, capsys):
    monkeypatch.setenv("SFPROV_DEMO_COUNT", "0")
    _bad_env(["demo"], capsys, "SFPROV_DEMO_COUNT", "--count")
    assert "make clean" not in capsys.readouterr().out


# -- 4. tail --last -------------------------------------------------------------------------

def test_tail_last_negative_is_a_usage_error(no_clients, capsys):
    _usage_error(["tail", "requests", "--last", "-3"], capsys, "--last")


def test_tail_last_negative_from_the_environment_is_checked(no_clients, monkeypatch, capsys):
    monkeypatch.setenv("SFPROV_TAIL_LAST", "-3")
    _bad_env(["tail", "requests"], capsys, "SFPROV_TAIL_LAST", "--last")


def test_tail_last_zero_means_only_new_records():
    """``--last 0 -f``: none of the records already there, then each new one (README)."""
    args = cli.build_parser().parse_args(["tail", "requests", "--last", "0", "-f"])
    assert args.last == 0 and args.follow


# -- 5. replay: a skip beyond the exact limit is offsets, not records ------------------------

class _NoReads:
    """A consumer that must not be read: beyond 1,000 offsets the skip is not counted."""

    def assign(self, tps: Any) -> None:
        raise AssertionError("records counted beyond EXACT_LAG_LIMIT")

    def close(self) -> None: ...


@pytest.fixture()
def far_move(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The worker group committed 100 on partition 0; the plan moves it to 5,100."""
    altered = fake_replay(monkeypatch, to=5100)
    monkeypatch.setattr(cmd_replay, "consumer", lambda s: _NoReads())
    return altered


def test_replay_refusal_does_not_call_offsets_records(far_move, capsys):
    assert cmd_replay.replay(replay_args(5100)) == 3
    out, err = capsys.readouterr()
    assert far_move == []
    assert not re.search(r"5000 (unprocessed )?record", out + err), (out, err)
    assert "about 5000 offsets (commit markers included)" in err, err


def test_replay_allow_skip_result_does_not_call_offsets_records(far_move, capsys):
    assert cmd_replay.replay(replay_args(5100, allow_skip=True)) == 0
    out, _err = capsys.readouterr()
    assert far_move == [[(0, 5100)]]
    assert not re.search(r"5000 (unprocessed )?record", out), out
    assert "about 5000 offsets (commit markers included)" in out, out


def test_replay_json_says_the_skip_is_not_exact(far_move, capsys):
    assert cmd_replay.replay(replay_args(5100, allow_skip=True, json=True)) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["skip"] == 5000 and data["skip_exact"] is False
    assert data["partitions"][0]["skip"] == 5000
    assert data["partitions"][0]["skip_exact"] is False


# -- 6. Order ids -----------------------------------------------------------------------------

@pytest.mark.parametrize("argv,option", [
    (["trace", "abc"], "ORDER_ID"),
    (["trace", "801000000000001ÄAA"], "ORDER_ID"),  # isalnum() took it
    (["trace", "801000000000001AA"], "ORDER_ID"),   # 17 characters
    (["tail", "requests", "--order-id", "abc"], "--order-id"),
    (["dlq", "--order-id", "801' OR Id != '"], "--order-id"),
    (["dlq", "requeue", "--all", "--order-id", "x"], "--order-id"),
])
def test_a_bad_order_id_is_a_usage_error(no_clients, capsys, argv, option):
    _usage_error(argv, capsys, option)


@pytest.mark.parametrize("argv", [["tail", "requests"], ["dlq"]])
def test_a_bad_order_id_from_the_environment_is_checked(no_clients, monkeypatch, capsys,
                                                        argv):
    monkeypatch.setenv("SFPROV_ORDER_ID", "abc")
    _bad_env(argv, capsys, "SFPROV_ORDER_ID", "--order-id")


@pytest.mark.parametrize("order_id", [ID15, ID18])
def test_the_documented_order_id_forms_parse(order_id):
    parser = cli.build_parser()
    assert parser.parse_args(["trace", order_id]).order_id == order_id
    assert parser.parse_args(["tail", "outcomes", "--order-id", order_id]).order_id == order_id
    assert parser.parse_args(["dlq", "--order-id", order_id]).order_id == order_id
    assert parser.parse_args(["trace", "801XN0000000001YAA"]).order_id == "801XN0000000001YAA"
