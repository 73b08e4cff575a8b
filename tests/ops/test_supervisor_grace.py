"""`make up`'s supervisor gives each child the time its drain may take before SIGKILL: it
waited a fixed 20 s, below the sink's SINK_DRAIN_TIMEOUT_S (30 s), and killed a sink still
flushing."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

from ops import stack, supervisor
from ops.stack import _pipeline_processes
from ops.supervisor import DEFAULT_GRACE_S, STOP_MARGIN_S, Child, stop_grace

# On SIGTERM: write "draining", take DRAIN seconds, write "drained", exit 0.
DRAINING = """
import signal, sys, time
def stop(*_):
    open(sys.argv[1], "a").write("draining\\n")
    time.sleep(float(sys.argv[2]))
    open(sys.argv[1], "a").write("drained\\n")
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
open(sys.argv[1], "a").write("ready\\n")
while True:
    time.sleep(0.1)
"""


@pytest.fixture(autouse=True)
def no_env_file(monkeypatch):
    """The child's environment is only what a test gives (no developer's .env)."""
    monkeypatch.setattr(supervisor, "environment", lambda: {})


SF_CALL_S = 30.0  # SF_TIMEOUT_S's default: the sink's call under way at its drain's end


def test_each_child_waits_its_own_drain_plus_a_margin():
    # WORKER_DRAIN_TIMEOUT_S default, and a guard query's thread joined at exit (SF_TIMEOUT_S)
    assert stop_grace("worker", {}) == 20.0 + SF_CALL_S + STOP_MARGIN_S
    # SINK_DRAIN_TIMEOUT_S default, and one call under way at its end (SF_TIMEOUT_S default)
    assert stop_grace("sink", {}) == 30.0 + SF_CALL_S + STOP_MARGIN_S
    # a transactional call under way, not retried once stopping (connectors.writer)
    assert stop_grace("connector", {}) == DEFAULT_GRACE_S + 30.0
    assert stop_grace("salesforce-sandbox", {}) == DEFAULT_GRACE_S
    assert stop_grace("sink", {"SINK_DRAIN_TIMEOUT_S": "50"}) == 50.0 + SF_CALL_S + STOP_MARGIN_S
    assert stop_grace("worker", {"WORKER_DRAIN_TIMEOUT_S": "2.5"}) == \
        2.5 + SF_CALL_S + STOP_MARGIN_S
    # a value the process refuses (it exits 64) leaves the default
    assert stop_grace("sink", {"SINK_DRAIN_TIMEOUT_S": "soon"}) == \
        30.0 + SF_CALL_S + STOP_MARGIN_S


def test_the_planned_pipeline_gets_more_than_its_drain():
    plan = {p["name"]: Child(**p) for p in _pipeline_processes({}, {})}
    assert plan["sink"].grace() >= 30.0 + SF_CALL_S + STOP_MARGIN_S
    assert plan["worker"].grace() >= 20.0 + STOP_MARGIN_S


def test_the_grace_follows_the_childs_environment(monkeypatch):
    """The setting as the child reads it: the supervisor's environment over .env, then the
    plan's overrides."""
    monkeypatch.setattr(supervisor, "environment", lambda: {"SINK_DRAIN_TIMEOUT_S": "40"})
    assert Child(name="sink", argv=[], env={}, log="").grace() == \
        40.0 + SF_CALL_S + STOP_MARGIN_S
    assert Child(name="sink", argv=[], env={"SINK_DRAIN_TIMEOUT_S": "5", "SF_TIMEOUT_S": "2"},
                 log="").grace() == 5.0 + 2.0 + STOP_MARGIN_S
    assert Child(name="sink", argv=[], env={}, log="", grace_s=3.0).grace() == 3.0


def _started(tmp_path, drain_s: float, env: dict[str, str]) -> tuple[Child, Path]:
    marks = tmp_path / "marks"
    child = Child(name="sink", argv=[sys.executable, "-c", DRAINING, str(marks), str(drain_s)],
                  env=env, log=str(tmp_path / "sink.log"))
    child.start()
    deadline = time.monotonic() + 30
    while not (marks.exists() and "ready" in marks.read_text()):
        assert time.monotonic() < deadline, "the child did not start"
        time.sleep(0.05)
    return child, marks


def test_a_drain_within_its_grace_is_not_killed(tmp_path, monkeypatch):
    monkeypatch.setattr(supervisor, "STOP_MARGIN_S", 1.0)
    child, marks = _started(tmp_path, 2.0, {"SINK_DRAIN_TIMEOUT_S": "3", "SF_TIMEOUT_S": "0.1"})
    proc = child.proc
    assert proc is not None
    child.stop()
    assert proc.returncode == 0
    assert marks.read_text().split() == ["ready", "draining", "drained"]


def test_a_drain_past_its_grace_is_killed_then(tmp_path, monkeypatch):
    """The grace is the child's, not a fixed 20 s: past drain + margin it is SIGKILLed."""
    monkeypatch.setattr(supervisor, "STOP_MARGIN_S", 1.0)
    child, marks = _started(tmp_path, 60.0, {"SINK_DRAIN_TIMEOUT_S": "0.5",
                                             "SF_TIMEOUT_S": "0.5"})
    proc = child.proc
    assert proc is not None
    started = time.monotonic()
    child.stop()
    assert proc.returncode == -9
    assert time.monotonic() - started < 10
    assert marks.read_text().split() == ["ready", "draining"]


def test_make_down_waits_for_every_childs_grace(tmp_path, monkeypatch):
    """The supervisor stops its children one after another: `make down` waits for the sum of
    their graces before it SIGKILLs what is left (it waited 60 s)."""
    processes = [{"name": n, "argv": [], "env": {}, "log": ""}
                 for n in ("salesforce-sandbox", "whmcs-sandbox", "connector", "worker", "sink")]
    monkeypatch.setattr(stack, "PLAN", tmp_path / "plan.json")
    stack.PLAN.write_text(json.dumps({"processes": processes}))
    total = 3 * DEFAULT_GRACE_S + 30.0 + 20.0 + 30.0 + 2 * SF_CALL_S + 2 * STOP_MARGIN_S
    assert stack.stop_timeout() >= total
    stack.PLAN.unlink()
    assert stack.stop_timeout() == 60.0


def test_make_down_waits_for_the_graces_make_up_planned(tmp_path, monkeypatch):
    """`WORKER_DRAIN_TIMEOUT_S=300 make up`, then a plain `make down`: down computed the
    graces from its own environment (the worker's 20 + 20 s), printed "stopped" and SIGKILLed
    the worker half way through its drain. `up` records each child's grace in the plan."""
    monkeypatch.setattr(supervisor, "environment", lambda: stack.environment())
    monkeypatch.setenv("SFPROV_ENV_FILE", os.devnull)
    monkeypatch.setenv("SF_CLIENT_ID", "a-real-org")                 # no sandboxes
    for name in ("KAFKA_LOCAL_SECURE", "SINK_DRAIN_TIMEOUT_S", "SF_EVENTS_ENABLED"):
        monkeypatch.delenv(name, raising=False)
    for name in ("STATE", "LOGS", "PLAN", "PIPELINE_ENV"):
        monkeypatch.setattr(stack, name, tmp_path / getattr(stack, name).name)
    monkeypatch.setenv("WORKER_DRAIN_TIMEOUT_S", "300")
    stack.PLAN.write_text(json.dumps({"processes": stack.plan(stack.environment())}))
    monkeypatch.delenv("WORKER_DRAIN_TIMEOUT_S")                     # plain `make down`
    graces = {"connector": DEFAULT_GRACE_S + 30.0,
              "worker": 300.0 + SF_CALL_S + STOP_MARGIN_S,
              "sink": 30.0 + SF_CALL_S + STOP_MARGIN_S}
    assert stack.stop_timeout() >= sum(graces.values()) + 10.0
    assert stack.stop_timeout(["worker"]) >= graces["worker"] + 10.0  # restart's pause
