"""`make down` says so when it has to kill (README): a child past its grace, or the local
broker past its 30 s, is SIGKILLed — and the operator is told, in the child's log, in the
supervisor's log and on `make down`'s own output. It was killed silently: down printed
"pipeline processes stopped" after a worker's drain was abandoned half way. No broker: the
"children" are Python one-liners that ignore SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from ops import stack, supervisor
from ops.kafka_local import LocalBroker
from ops.supervisor import Child, process_start

ROOT = Path(__file__).resolve().parents[2]
# Ignores SIGTERM: only a SIGKILL stops it. Says "ready" once it does.
STUBBORN = ("import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('ready', flush=True); time.sleep(120)")


def wait_for_text(path: Path, text: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not (path.exists() and text in path.read_text()):
        assert time.monotonic() < deadline, f"no {text!r} in {path}"
        time.sleep(0.05)


def running(pid: int) -> bool:
    return process_start(pid) is not None


def test_a_child_killed_after_its_grace_says_so_in_its_log_and_on_stdout(tmp_path, capsys):
    log = tmp_path / "worker.log"
    child = Child(name="worker", argv=[sys.executable, "-c", STUBBORN], env={}, log=str(log),
                  grace_s=0.5)
    child.start()
    wait_for_text(log, "ready")
    proc = child.proc
    assert proc is not None
    assert child.stop() == 0.5                      # the grace it waited before the SIGKILL
    assert proc.returncode == -signal.SIGKILL
    line = "=== worker did not stop within 0.5s: killed (SIGKILL)"
    assert line in log.read_text()
    assert line in capsys.readouterr().out          # the supervisor's own log (supervisor.log)


def test_a_child_that_stops_in_time_is_not_reported(tmp_path, capsys):
    log = tmp_path / "sink.log"
    child = Child(name="sink", argv=[sys.executable, "-c", "import time; time.sleep(120)"],
                  env={}, log=str(log), grace_s=10.0)
    child.start()
    assert child.stop() is None
    assert "killed" not in log.read_text() and "killed" not in capsys.readouterr().out


def test_down_names_each_child_the_supervisor_had_to_kill(state, capsys):
    """A real supervisor: the worker ignores SIGTERM (a drain that hangs), the connector
    stops at once. `down` warns about the worker alone, after the supervisor exited."""
    plan = [{"name": "connector", "argv": [sys.executable, "-c", "import time; time.sleep(120)"],
             "env": {}, "log": str(stack.STATE / "connector.log"), "grace_s": 5.0},
            {"name": "worker", "argv": [sys.executable, "-c", STUBBORN], "env": {},
             "log": str(stack.STATE / "worker.log"), "grace_s": 0.5}]
    stack.STATE.mkdir(parents=True, exist_ok=True)
    stack.PLAN.write_text(json.dumps({"processes": plan, "status_file": str(stack.STATUS)}))
    out = open(stack.STATE / "supervisor.log", "ab")  # noqa: SIM115 - as up() hands it over
    sup = subprocess.Popen([sys.executable, "-m", "ops.supervisor", str(stack.PLAN)], cwd=ROOT,
                           env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=out,
                           stderr=subprocess.STDOUT, start_new_session=True)
    out.close()
    state.append(sup.pid)
    stack.SUPERVISOR_PID.write_text(f"{sup.pid} {process_start(sup.pid)}")
    wait_for_text(stack.STATE / "worker.log", "ready")
    assert stack.down() == 0
    sup.wait(10)
    captured = capsys.readouterr()
    assert "warning: worker did not stop within 0.5 s: killed" in captured.err
    assert "connector" not in captured.err
    assert f"pipeline processes stopped (supervisor {sup.pid})" in captured.out
    assert "worker did not stop within 0.5s: killed (SIGKILL)" in (
        stack.STATE / "supervisor.log").read_text()
    assert not supervisor.killed_file(stack.STATUS).exists()   # said once, not at the next down
    assert stack.down() == 0
    assert "killed" not in capsys.readouterr().err


def test_the_local_broker_killed_after_its_grace_says_so(tmp_path, capsys):
    home = tmp_path / "broker"
    home.mkdir()
    b = LocalBroker(home, port=19092, controller_port=19093, state_dir=tmp_path)
    proc = subprocess.Popen([sys.executable, "-c", STUBBORN], stdout=subprocess.PIPE,
                            start_new_session=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        b.pid_file.write_text(f"{proc.pid} {process_start(proc.pid)}")
        assert b.stop(grace=0.5) is True
        assert not running(proc.pid)                # (stop reaped it: no returncode to read)
        err = capsys.readouterr().err
        assert "warning: kafka did not stop within 0.5 s: killed" in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_the_readme_states_the_brokers_grace():
    """`make down` gives the local broker LocalBroker.stop's default grace; the README says
    so (it said 20 s for everything but the worker and the sink)."""
    import inspect

    grace = inspect.signature(LocalBroker.stop).parameters["grace"].default
    readme = (ROOT / "README.md").read_text()
    assert f"the local broker {grace:g} s" in readme
