"""`sfprov` fails in one line, never a traceback: no broker at the address, a bad option value,
a bad value in the environment (which stops only the command that reads it). No broker is
needed: the address given is a free port nobody listens on."""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
from confluent_kafka import KafkaError as CKafkaError
from confluent_kafka import TopicPartition

from common.errors import KafkaError
from ops.cmd_orders import duration_arg
from ops.cmd_replay import alter_group_offsets, partition_offset_arg, time_arg

ROOT = Path(__file__).resolve().parents[2]


def env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "SFPROV_ENV_FILE": os.devnull,
            "SFPROV_STATE_DIR": "/nonexistent", **extra}


def sfprov(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ops.cli", *args], cwd=ROOT, env=env(**extra),
                          capture_output=True, text=True, timeout=120)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_no_broker_at_the_address_is_one_line_for_every_kafka_command():
    """librdkafka's KafkaException (list_topics, admin futures) once escaped main() as a
    traceback, after librdkafka's own FAIL log lines, for all of these."""
    bootstrap = f"127.0.0.1:{free_port()}"
    commands = {
        "topics": ["topics"], "tail": ["tail", "requests"], "lag": ["lag"],
        "trace": ["trace", "801000000000001AAA"], "dlq": ["dlq"],
        "requeue": ["dlq", "requeue", "--all"], "replay": ["replay", "--from-time", "-1h"],
        "demo": ["demo", "--count", "1"], "acls --apply": ["acls", "--apply"],
        # a bad SFPROV_TAIL_LAST is not read when --last is given: the broker is the error
        "tail --last": ["tail", "requests", "--last", "5"],
    }
    # each waits out list_topics' 10 s: run them side by side
    started = time.monotonic()
    running = {name: subprocess.Popen(
        [sys.executable, "-m", "ops.cli", "-b", bootstrap, *argv], cwd=ROOT,
        env=env(**({"SFPROV_TAIL_LAST": "many"} if name == "tail --last" else {})),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name, argv in commands.items()}
    for name, proc in running.items():
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 1, (name, stderr)
        assert "Traceback" not in stderr, (name, stderr)
        lines = stderr.strip().splitlines()
        assert len(lines) == 1, (name, stderr)
        assert lines[0].startswith(f"error: cannot reach Kafka at {bootstrap}: "), (name, stderr)
    assert time.monotonic() - started < 90  # no minute-long wait for a group coordinator


@pytest.mark.parametrize("argv,option", [
    (["replay", "--from-offset", "3"], "--from-offset"),
    (["replay", "--from-offset", "a:1"], "--from-offset"),
    (["replay", "--from-offset", "0:-1"], "--from-offset"),
    (["replay", "--from-time", "yesterday"], "--from-time"),
    (["replay", "--from-time=-infh"], "--from-time"),
    (["reconcile", "--older-than", "abc"], "--older-than"),
    (["reconcile", "--older-than", ""], "--older-than"),
])
def test_a_bad_option_value_is_a_usage_error_naming_the_option(argv, option):
    result = sfprov("-b", f"127.0.0.1:{free_port()}", *argv)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"sfprov {argv[0]}: error: argument {option}: "), result.stderr


@pytest.mark.parametrize("variable,value,argv,option", [
    ("SFPROV_TAIL_LAST", "many", ["tail", "requests"], "--last"),
    ("SFPROV_RECONCILE_OLDER_THAN", "abc", ["reconcile"], "--older-than"),
    ("SFPROV_REPLAY_WAIT_S", "soon", ["replay", "--from-offset", "0:0"], "--wait"),
])
def test_a_bad_env_default_stops_only_its_command(variable, value, argv, option):
    """Every subparser once parsed its env defaults while the parser was built: a bad
    SFPROV_TAIL_LAST stopped `sfprov lag`, `sfprov acls` and `sfprov --help` too."""
    bad = {variable: value}
    failed = sfprov(*argv, **bad)
    assert failed.returncode == 1, failed.stderr
    assert "Traceback" not in failed.stderr, failed.stderr
    lines = failed.stderr.strip().splitlines()
    assert len(lines) == 1 and variable in lines[0] and option in lines[0], failed.stderr
    assert repr(value) in lines[0]
    for other in (["--help"], [argv[0], "--help"], ["acls"]):
        fine = sfprov(*other, **bad)
        assert fine.returncode == 0, (other, fine.stderr)
        assert fine.stdout and not fine.stderr, (other, fine.stderr)


def test_an_older_than_beyond_ten_years_is_a_usage_error_naming_the_limit(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """``--older-than 1e9d`` ended in a traceback ("year out of range", building the pass's
    SOQL) once Salesforce answered."""
    from ops import cli, cmd_orders

    monkeypatch.setenv("SFPROV_ENV_FILE", os.devnull)
    monkeypatch.setenv("SFPROV_STATE_DIR", "/nonexistent")

    class Salesforce:  # Orders Activating, none older: the pass would go on to Kafka
        def count(self, _soql: str) -> int:
            return 3

        def query(self, _soql: str) -> list[dict[str, str]]:
            return []
    monkeypatch.setattr(cmd_orders, "_sf", Salesforce)
    with pytest.raises(SystemExit) as exited:
        cli.main(["-b", f"127.0.0.1:{free_port()}", "reconcile", "--older-than", "1e9d",
                  "--dry-run"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        "sfprov reconcile: error: argument --older-than: '1e9d' is more than the limit of "
        "315360000 s (10 years)")
    assert duration_arg("3650d") == "3650d"  # the limit itself


def test_the_option_parsers():
    assert partition_offset_arg("2:17") == (2, 17)
    assert partition_offset_arg(" 0:0 ") == (0, 0)
    assert abs(time_arg("-2h") - (time.time() - 7200) * 1000) < 5000
    assert time_arg("2026-11-20T08:00Z") == time_arg("2026-11-20T08:00:00+00:00") \
        == time_arg("2026-11-20T08:00")  # UTC without a zone
    assert duration_arg("15m") == "15m" and duration_arg("90") == "90"
    for parse, text in ((partition_offset_arg, "3"), (partition_offset_arg, ":"),
                        (partition_offset_arg, "-1:3"), (time_arg, ""), (time_arg, "-infd"),
                        (time_arg, "yesterday"), (duration_arg, "-5m"), (duration_arg, "m"),
                        (duration_arg, "infs")):
        with pytest.raises(argparse.ArgumentTypeError):
            parse(text)


class _Answered:
    """One alter_consumer_group_offsets answer: the partitions with the error the broker set
    on each (a coordinator that moves mid-call cannot be had from the test broker)."""

    def __init__(self, errors: list[int | None]) -> None:
        self.topic_partitions = [
            types.SimpleNamespace(partition=p, error=None if code is None else CKafkaError(code))
            for p, code in enumerate(errors)]

    def result(self) -> _Answered:
        return self


class _Admin:
    def __init__(self, *answers: list[int | None]) -> None:
        self.answers = list(answers)

    def alter_consumer_group_offsets(self, requests: list) -> dict:
        [request] = requests
        return {request.group_id: _Answered(self.answers.pop(0))}


def test_a_refused_offset_commit_is_asked_again_only_while_the_coordinator_moves():
    tps = [TopicPartition("requests", p, 0) for p in range(2)]
    moving = _Admin([CKafkaError.NOT_COORDINATOR, CKafkaError.NOT_COORDINATOR], [None, None])
    alter_group_offsets(moving, "g", tps, "rewinding g")  # type: ignore[arg-type]
    assert moving.answers == []  # asked again, then committed
    denied = _Admin([None, CKafkaError.GROUP_AUTHORIZATION_FAILED])
    with pytest.raises(KafkaError) as refused:
        alter_group_offsets(denied, "g", tps, "rewinding g")  # type: ignore[arg-type]
    assert str(refused.value).startswith("rewinding g: the broker refused the commit of "
                                         "partition 1: Broker: Group authorization failed")


class _Salesforce:
    """One Order whose Account carries ``client`` as its WHMCS client id."""

    def __init__(self, client: str) -> None:
        self.client = client

    def query(self, soql: str) -> list[dict]:
        if "FROM Order" not in soql:
            return []
        return [{"Id": "801000000000001AAA", "Status": "Activated", "OpportunityId": None,
                 "Account": {"WH_Account__c": self.client}}]


@pytest.mark.parametrize("client,whmcs", [
    ("WH-1042", {"error": "Account.WH_Account__c 'WH-1042' is not a WHMCS client id"}),
    ("12.0", [12])])
def test_trace_reads_the_whmcs_client_id_as_the_worker_does(client, whmcs, monkeypatch,
                                                             tmp_path, capsys):
    """An Account whose WH_Account__c is not a WHMCS client id ended `sfprov trace` in a
    ValueError traceback (``int(float('WH-1042'))``); the worker fails such an Order with
    INVALID_WHMCS_CLIENT, and trace now says the same."""
    from ops import cli, cmd_orders, stack

    monkeypatch.setenv("SFPROV_ENV_FILE", os.devnull)
    monkeypatch.setattr(stack, "PIPELINE_ENV", tmp_path / "pipeline.env")
    monkeypatch.setattr(cmd_orders, "scan", lambda *a, **k: iter(()))
    monkeypatch.setattr(cmd_orders, "_sf", lambda: _Salesforce(client))
    monkeypatch.setattr(cmd_orders, "_whmcs_orders", lambda client_id, order_id: [client_id])
    assert cli.main(["trace", "801000000000001AAA", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["whmcs_orders"] == whmcs


def test_acls_says_no_broker_as_soon_as_the_other_commands():
    """`sfprov acls --check/--apply/--prune` waited out the ACL requests' 30 s before the
    one line (31 s); every other command says it after list_topics' 10 s."""
    bootstrap = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    running = {flag: subprocess.Popen(
        [sys.executable, "-m", "ops.cli", "-b", bootstrap, "acls", flag], cwd=ROOT, env=env(),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for flag in ("--check", "--apply", "--prune")}
    for flag, proc in running.items():
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 1, (flag, stderr)
        lines = stderr.strip().splitlines()
        assert len(lines) == 1, (flag, stderr)
        assert lines[0].startswith(f"error: cannot reach Kafka at {bootstrap}: "), (flag, stderr)
    assert time.monotonic() - started < 15, f"{time.monotonic() - started:.0f} s"


def test_help_lists_every_command_and_env_fallbacks():
    out = subprocess.run([sys.executable, "-m", "ops.cli", "--help"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60).stdout
    for command in ("topics", "tail", "lag", "trace", "replay", "reconcile", "dlq", "demo"):
        assert command in out
    assert "[env: KAFKA_BOOTSTRAP_SERVERS]" in out
    assert "-b HOST:PORT, --bootstrap-server HOST:PORT" in out


@pytest.mark.parametrize("variable,value,argv", [
    ("SFPROV_TAIL_LAST", "many", ["-m", "ops.cli", "tail", "requests"]),
    ("KAFKA_PARTITIONS", "zero", ["-m", "ops.cli", "topics"]),
    ("WORKER_MAX_IN_FLIGHT", "-1", ["-m", "streams", "worker"]),
])
def test_a_bad_env_value_is_one_line_not_a_traceback(variable, value, argv):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SFPROV_ENV_FILE": os.devnull,
           "SFPROV_STATE_DIR": "/nonexistent", variable: value}
    result = subprocess.run([sys.executable, *argv], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and variable in lines[0], result.stderr
