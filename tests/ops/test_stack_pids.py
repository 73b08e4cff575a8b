"""`make down` / `make up` signal only the processes they recorded, and `restart` always
resumes.

Pid files outlive a restart of the machine; their pids do not. `down` trusted them: it
SIGTERMed whatever process had the supervisor's old pid and SIGKILLed the process group of
every pid in the old supervisor.json — unrelated processes of the user. A supervisor killed
alone left its children running, and `up` started a second set beside them. `restart` gave
up on a stop slower than its 60 s pause (a worker drains for 20 s plus 20 s, a sink 30 + 20)
and never resumed: the process stayed down for good.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ops import stack

ROOT = Path(__file__).resolve().parents[2]

# A pipeline child's stand-in: runs until SIGTERM, then takes `sys.argv[1]` seconds to stop.
CHILD = """
import signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: (time.sleep(float(sys.argv[1])), sys.exit(0)))
while True:
    time.sleep(0.1)
"""


def running(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat")
    with contextlib.suppress(OSError):
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return False


def wait_for(what: Callable[[], Any], timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := what()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
    return found


def orphan(argv: list[str], started: list[int]) -> int:
    """A process in its own session that is not our child (as after a restart of the
    machine, or once its supervisor is gone): ``setsid`` forks it off a shell that exits."""
    out = subprocess.run(["sh", "-c", 'setsid "$@" >/dev/null 2>&1 </dev/null & echo $!', "sh",
                          *argv], capture_output=True, text=True, check=True).stdout
    pid = int(out)
    started.append(pid)
    wait_for(lambda: running(pid) and Path(f"/proc/{pid}/cmdline").read_bytes()
             .split(b"\0")[0] == argv[0].encode())
    return pid


def test_down_signals_no_process_that_took_a_recorded_pid(state, capsys):
    """After a restart of the machine: the supervisor's pid and its children's belong to
    other processes now. Only a child recorded by an earlier release (no start time) whose
    command line is the plan's is still taken for the supervisor's, and stopped."""
    took_supervisors = orphan(["sleep", "300"], state)
    took_workers = orphan(["sleep", "301"], state)
    took_sinks = orphan(["sleep", "302"], state)        # an entry of an earlier release
    leftover = orphan([sys.executable, "-c", CHILD, "0"], state)
    stack.PLAN.write_text(json.dumps({"processes": [
        {"name": n, "argv": [sys.executable, "-m", m, "run"], "env": {}, "log": "", "grace_s": 1}
        for n, m in (("worker", "streams"), ("sink", "sinks"))] + [
        {"name": "connector", "argv": [sys.executable, "-c", CHILD, "0"], "env": {}, "log": "",
         "grace_s": 1}]}))
    stack.SUPERVISOR_PID.write_text(str(took_supervisors))   # as an earlier release wrote it
    stack.STATUS.write_text(json.dumps({"pid": took_supervisors, "processes": [
        {"name": "worker", "pid": took_workers, "start": "0b0e-old-boot:4343"},
        {"name": "sink", "pid": took_sinks},
        {"name": "connector", "pid": leftover}]}))
    stack.PIPELINE_ENV.write_text("KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092\n")

    assert stack.down() == 0
    time.sleep(0.3)
    assert running(took_supervisors), "down() signalled the process that has the supervisor's old pid"
    assert running(took_workers), "down() killed the process that has the worker's old pid"
    assert running(took_sinks), "down() killed an unverified pid of an earlier release's file"
    assert not running(leftover)                  # verified by its command line: stopped
    out = capsys.readouterr()
    assert f"pid {took_workers} is not the worker the supervisor started" in out.err
    assert f"pid {took_sinks} is not the sink" in out.err
    assert f"stopping leftover connector (pid {leftover})" in out.out
    assert not stack.SUPERVISOR_PID.exists() and not stack.PIPELINE_ENV.exists()

    stack.SUPERVISOR_PID.write_text(f"{took_supervisors} 0b0e-old-boot:4242")
    assert stack.supervisor_pid() is None                    # a start that is not its own


def test_up_stops_the_children_a_killed_supervisor_left(state, monkeypatch, capsys):
    """The supervisor SIGKILLed alone: its children run on (their own sessions, their
    ports). `up` stops them before it starts a new supervisor; `down` stops that one."""
    stranger = orphan(["sleep", "303"], state)
    plan = [{"name": n, "argv": [sys.executable, "-c", CHILD, "0.5"], "env": {},
             "log": str(stack.STATE / f"{n}.log"), "grace_s": 5.0} for n in ("worker", "sink")]
    stack.PLAN.write_text(json.dumps({"processes": plan, "status_file": str(stack.STATUS)}))
    old = subprocess.Popen([sys.executable, "-m", "ops.supervisor", str(stack.PLAN)], cwd=ROOT,
                           env={**os.environ, "PYTHONPATH": str(ROOT)}, start_new_session=True)
    state.append(old.pid)

    def all_started() -> dict[str, Any]:
        with contextlib.suppress(FileNotFoundError, ValueError):
            status = json.loads(stack.STATUS.read_text())
            return dict(status) if all(p["pid"] for p in status["processes"]) else {}
        return {}

    children = wait_for(all_started)
    pids = [p["pid"] for p in children["processes"]]
    state.extend(pids)
    stack.SUPERVISOR_PID.write_text(str(old.pid))
    old.kill()
    old.wait()
    assert all(running(pid) for pid in pids)
    # a stale entry besides: its pid is another process's now
    stack.STATUS.write_text(json.dumps({**children, "processes": [
        *children["processes"], {"name": "connector", "pid": stranger, "start": "x:1"}]}))

    # everything of `up` but its children: no broker, no topics, an empty plan
    monkeypatch.setattr(stack, "uses_local_broker", lambda env: False)
    monkeypatch.setattr(stack, "subprocess", types.SimpleNamespace(
        run=lambda *a, **k: subprocess.CompletedProcess(a, 0), Popen=subprocess.Popen,
        STDOUT=subprocess.STDOUT, DEVNULL=subprocess.DEVNULL))
    monkeypatch.setattr(stack, "plan", lambda env: [])
    assert stack.supervisor_pid() is None
    assert stack.up() == 0
    new = stack.supervisor_pid()
    assert new is not None
    state.append(new)
    assert not any(running(pid) for pid in pids), "up() left the old supervisor's children"
    assert running(stranger)
    out = capsys.readouterr().out
    assert all(f"stopping leftover {n} (pid {pid})" in out for n, pid in zip(
        ("worker", "sink"), pids, strict=True))
    assert "killed leftover" not in out                       # they stopped within grace

    assert stack.SUPERVISOR_PID.read_text().split()[0] == str(new)
    assert len(stack.SUPERVISOR_PID.read_text().split()) == 2  # with its start
    assert stack.down() == 0
    assert not running(new)


def test_restart_resumes_even_when_the_stop_outlasts_the_pause(state, monkeypatch, capsys):
    """A worker slower to stop than restart's pause waits (here 2 s for a 4 s drain; for
    real 60 s for a worker's 40 s plus a sink's 50 s): the resume runs all the same, and
    restart reports the slow stop."""
    status = stack.STATUS
    stack.PLAN.write_text(json.dumps({"status_file": str(status), "processes": [
        {"name": "worker", "argv": [sys.executable, "-c", CHILD, "4"], "env": {},
         "log": str(stack.STATE / "worker.log"), "grace_s": 10.0}]}))
    sup = subprocess.Popen([sys.executable, "-m", "ops.supervisor", str(stack.PLAN)], cwd=ROOT,
                           env={**os.environ, "PYTHONPATH": str(ROOT)}, start_new_session=True)
    state.append(sup.pid)
    try:
        stack.SUPERVISOR_PID.write_text(str(sup.pid))

        def worker() -> dict[str, Any]:
            with contextlib.suppress(FileNotFoundError, ValueError):
                return dict(json.loads(status.read_text())["processes"][0])
            return {}

        first = wait_for(lambda: worker().get("pid"))
        real_pause = stack.pause
        monkeypatch.setattr(stack, "pause", lambda names, paused=True, timeout_s=2.0:
                            real_pause(names, paused, timeout_s))
        monkeypatch.setattr(stack, "stop_timeout", lambda names=None: 2.0)
        assert stack.restart(["worker"]) == 1
        assert "still running after 2 s: worker" in capsys.readouterr().err
        # the supervisor finishes the stop (4 s), then starts it again: resumed
        again = wait_for(lambda: worker().get("pid") not in (None, first), timeout=30)
        assert again and json.loads(status.read_text())["paused"] == []
    finally:
        sup.send_signal(signal.SIGTERM)
        sup.wait(60)


def test_restart_waits_for_the_named_processes_graces(state, monkeypatch):
    stack.PLAN.write_text(json.dumps({"processes": [
        {"name": n, "argv": [], "env": {}, "log": ""} for n in ("connector", "worker", "sink")]}))
    calls: list[tuple[bool, float]] = []

    def pause(names: list[str], paused: bool = True, timeout_s: float = 60.0) -> int:
        calls.append((paused, timeout_s))
        return 0

    monkeypatch.setattr(stack, "pause", pause)
    assert stack.restart(["worker", "sink"]) == 0
    assert calls[0][0] and calls[0][1] >= 40.0 + 50.0, calls   # both drains plus margins
    assert calls[1][0] is False
    assert stack.stop_timeout(["connector"]) == 60.0


PORT_VARIABLES = ("SF_SANDBOX_HTTP_PORT", "SF_SANDBOX_GRPC_PORT", "WHMCS_SANDBOX_PORT",
                  "REGISTRY_SANDBOX_PORT", "CONNECTOR_HTTP_PORT", "WORKER_HTTP_PORT",
                  "SINK_HTTP_PORT")


@pytest.mark.parametrize("taken", ["REGISTRY_SANDBOX_PORT", "SF_SANDBOX_GRPC_PORT",
                                   "WORKER_HTTP_PORT"])
def test_up_starts_nothing_on_a_port_another_program_holds(state, monkeypatch, capsys, taken):
    """A Confluent Schema Registry on 8081 (say): the registry sandbox could not bind it and
    was restarted for ever, while `make up` took the other registry's answers for its
    health and reported it healthy. `up` names the port and starts no supervisor."""
    from ops.kafka_local import free_port

    for variable in PORT_VARIABLES:
        monkeypatch.setenv(variable, str(free_port()))
    for variable in ("SF_CLIENT_ID", "SCHEMA_REGISTRY_URL", "KAFKA_BOOTSTRAP_SERVERS"):
        monkeypatch.delenv(variable, raising=False)           # sandbox mode, the registry on
    monkeypatch.setattr(stack, "broker", lambda: types.SimpleNamespace(security=None,
                                                                       stop=lambda: False))
    monkeypatch.setattr(stack, "uses_local_broker", lambda env: False)

    def popen(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("up() started the supervisor")

    monkeypatch.setattr(stack, "subprocess", types.SimpleNamespace(
        run=lambda *a, **k: subprocess.CompletedProcess(a, 0), Popen=popen,
        STDOUT=subprocess.STDOUT, DEVNULL=subprocess.DEVNULL))
    with socket.socket() as other:                            # the other program
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        monkeypatch.setenv(taken, str(port))
        assert stack.up() == 1
    assert capsys.readouterr().err == f"error: port {port} ({taken}) is already in use\n"
    assert not stack.PLAN.exists() and not stack.SUPERVISOR_PID.exists()
    assert stack.busy_port(stack.plan(dict(os.environ))) is None   # once it is free


def test_up_starts_no_broker_when_a_port_is_taken(state, monkeypatch, capsys):
    """The port check comes before the local broker's start: a failed `up` used to leave a
    broker running (and topics created) for the user to stop."""
    from ops.kafka_local import free_port

    for variable in PORT_VARIABLES:
        monkeypatch.setenv(variable, str(free_port()))
    for variable in ("SF_CLIENT_ID", "SCHEMA_REGISTRY_URL", "KAFKA_BOOTSTRAP_SERVERS"):
        monkeypatch.delenv(variable, raising=False)

    def start() -> None:
        raise AssertionError("up() started the broker")

    monkeypatch.setattr(stack, "broker", lambda: types.SimpleNamespace(
        security=None, stop=lambda: False, start=start, running_pid=lambda: None))
    monkeypatch.setattr(stack, "uses_local_broker", lambda env: True)
    monkeypatch.setattr(stack, "secure_broker_ready", lambda b: None)
    monkeypatch.setattr(stack, "subprocess", types.SimpleNamespace(
        run=lambda *a, **k: (_ for _ in ()).throw(AssertionError("up() created topics")),
        Popen=lambda *a, **k: (_ for _ in ()).throw(AssertionError("supervisor started")),
        STDOUT=subprocess.STDOUT, DEVNULL=subprocess.DEVNULL))
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        monkeypatch.setenv("WHMCS_SANDBOX_PORT", str(port))
        assert stack.up() == 1
    assert capsys.readouterr().err == f"error: port {port} (WHMCS_SANDBOX_PORT) is already in use\n"


def test_down_says_when_the_supervisor_outlasts_its_wait(state, monkeypatch, capsys):
    """Past the plan's graces `down` kills what is left: it said "stopped" all the same."""
    sent: list[tuple[int, int]] = []
    monkeypatch.setattr(stack, "supervisor_pid", lambda: 4242)        # it never exits
    monkeypatch.setattr(stack, "stop_timeout", lambda names=None: 0.3)
    monkeypatch.setattr(stack.os, "kill", lambda pid, sig: sent.append((pid, sig)))
    killed: list[bool] = []
    monkeypatch.setattr(stack, "stop_leftovers", lambda entries, grace: killed.append(grace))
    assert stack.down() == 0
    out = capsys.readouterr()
    assert sent == [(4242, signal.SIGTERM)] and killed == [False]
    assert "the supervisor (4242) did not stop its processes within 0 s: killing what is " \
           "left" in out.err
    assert "pipeline processes stopped" not in out.out
