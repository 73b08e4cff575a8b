"""`python -m ops.stack resume NAME` / `restart NAME` against a real supervisor start a process
that left with a final exit code (2, 3, 64) once the cause is fixed. Before, the supervisor
left such a process down for good: `resume` changed nothing (the name was never paused) and
`restart` saw the dead process as "paused" at once, resumed before the supervisor read the
pause, and waited 60 s for a process nobody started."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ops import stack

ROOT = Path(__file__).resolve().parents[2]

# Exits 3 (connector: fenced) whenever the file `cause` exists; else records its pid and runs.
CHILD = """
import os, sys, time
cause, pids = sys.argv[1], sys.argv[2]
while True:
    if os.path.exists(cause):
        sys.exit(3)
    if pids:
        open(pids, "a").write(f"{os.getpid()}\\n")
        pids = ""
    time.sleep(0.05)
"""


def wait_for(what: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := what()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
    return found


def connector(status: Path) -> dict[str, Any]:
    with contextlib.suppress(FileNotFoundError, ValueError):
        return {p["name"]: p for p in json.loads(status.read_text())["processes"]}["connector"]
    return {}


def running(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(")")[-1].split()[0] != "Z"


@pytest.fixture
def supervised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A real ``ops.supervisor`` running the child above as the connector, its cause set (so
    it exits 3 at once); ``ops.stack`` pointed at its state directory."""
    (tmp_path / "cause").touch()
    status = tmp_path / "supervisor.json"
    plan = tmp_path / "supervisor-plan.json"
    plan.write_text(json.dumps({"status_file": str(status), "processes": [
        {"name": "connector", "log": str(tmp_path / "connector.log"), "env": {},
         "argv": [sys.executable, "-c", CHILD, str(tmp_path / "cause"), str(tmp_path / "pids")],
         "final_exit_codes": stack.FINAL_EXIT_CODES["connector"], "grace_s": 5.0}]}))
    for name in ("STATUS", "CONTROL", "SUPERVISOR_PID", "PLAN"):
        monkeypatch.setattr(stack, name, tmp_path / getattr(stack, name).name)
    real_pause = stack.pause
    monkeypatch.setattr(stack, "pause",  # wait 10 s, not 60 s (restart calls it twice)
                        lambda names, paused=True, timeout_s=10.0:
                        real_pause(names, paused, timeout_s))
    proc = subprocess.Popen([sys.executable, "-m", "ops.supervisor", str(plan)], cwd=ROOT,
                            env={**os.environ, "SFPROV_STATE_DIR": str(tmp_path),
                                 "SFPROV_ENV_FILE": os.devnull,
                                 "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # as an earlier release wrote it: stack.supervisor_pid() knows it by its command line
    stack.SUPERVISOR_PID.write_text(str(proc.pid))
    try:
        yield status
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def exited_finally(status: Path) -> dict[str, Any]:
    """Wait until the connector exited 3, and see that the supervisor leaves it down."""
    child = wait_for(lambda: (c := connector(status)) and c["last_exit"] == 3
                     and c["pid"] is None and c)
    time.sleep(1.5)  # three rounds of the supervisor
    assert connector(status)["pid"] is None
    return child


def test_resume_starts_a_process_that_exited_finally(supervised, tmp_path, capsys):
    status = supervised
    exited_finally(status)
    (tmp_path / "cause").unlink()                     # the operator fixes the cause
    assert stack.main(["resume", "connector"]) == 0
    assert "resumed: connector" in capsys.readouterr().out
    first = connector(status)["pid"]
    assert first and running(first)
    assert wait_for(lambda: (tmp_path / "pids").exists()
                    and (tmp_path / "pids").read_text().split()) == [str(first)]

    (tmp_path / "cause").touch()                      # a final exit again, fixed again
    exited_finally(status)
    assert not running(first)
    (tmp_path / "cause").unlink()
    assert stack.main(["resume", "connector"]) == 0
    second = connector(status)["pid"]
    assert second and second != first and running(second)
    assert connector(status)["restarts"] == 0         # final exits are not restarts


def test_restart_starts_a_process_that_exited_finally(supervised, tmp_path):
    status = supervised
    exited_finally(status)
    (tmp_path / "cause").unlink()
    assert stack.main(["restart", "connector"]) == 0
    first = connector(status)["pid"]
    assert first and running(first)

    assert stack.main(["restart", "connector"]) == 0  # a running process: a new one
    second = connector(status)["pid"]
    assert second and second != first and running(second)
    assert not running(first)


class NoBroker:
    bootstrap = "-"

    def running_pid(self) -> None:
        return None


def test_status_tells_a_final_exit_and_a_pause(supervised, monkeypatch, capsys):
    status = supervised
    exited_finally(status)
    monkeypatch.setattr(stack, "broker", NoBroker)
    assert stack.status() == 0
    assert "last exit 3  (final exit: fix the cause, then restart it)" in capsys.readouterr().out
    assert stack.pause(["connector"]) == 0
    assert stack.status() == 0
    assert "last exit 3  (paused)" in capsys.readouterr().out


def fake_supervisor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **status: Any) -> None:
    """A status file as a supervisor writes it, and nobody acting on the control file."""
    monkeypatch.setattr(stack, "STATUS", tmp_path / "supervisor.json")
    monkeypatch.setattr(stack, "CONTROL", tmp_path / "supervisor-control.json")
    monkeypatch.setattr(stack, "supervisor_pid", lambda: 1)
    stack.STATUS.write_text(json.dumps(status))


def test_resume_says_when_the_process_exited_finally_again(tmp_path, monkeypatch, capsys):
    """The supervisor applied the resume (its kick) and the process is down after a final
    exit again: the cause is not fixed, and `resume` says so rather than waiting 60 s."""
    fake_supervisor(tmp_path, monkeypatch, paused=[], kicks={"connector": 1}, processes=[
        {"name": "connector", "pid": None, "last_exit": 3, "final": True, "log": "c.log"}])
    started = time.monotonic()
    assert stack.pause(["connector"], paused=False) == 1
    assert time.monotonic() - started < 5
    assert "connector started and exited again with 3, a final exit (see c.log)" \
        in capsys.readouterr().err
    assert json.loads(stack.CONTROL.read_text()) == {"paused": [], "kick": {"connector": 1}}


def test_a_pause_an_older_supervisor_does_not_acknowledge(tmp_path, monkeypatch, capsys):
    """A supervisor started before the acknowledgement existed (no "paused" in its status):
    `pause` of a process that is not running gives it time to read the pause (restart then
    works with it too), and an older control file (no "kick") is kept."""
    fake_supervisor(tmp_path, monkeypatch, processes=[{"name": "connector", "pid": None}])
    stack.CONTROL.write_text(json.dumps({"paused": ["worker"]}))
    started = time.monotonic()
    assert stack.pause(["connector"]) == 0
    assert time.monotonic() - started >= stack.UNACKNOWLEDGED_PAUSE_S
    assert json.loads(stack.CONTROL.read_text()) == {"paused": ["connector", "worker"]}


def test_pause_waits_until_the_supervisor_has_paused_it(supervised, tmp_path):
    """A process that is not running is paused only once the supervisor says so: a
    restart resumed before the supervisor had seen the pause."""
    status = supervised
    exited_finally(status)
    assert stack.pause(["connector"]) == 0
    assert json.loads(status.read_text())["paused"] == ["connector"]
    (tmp_path / "cause").unlink()
    time.sleep(1.0)
    assert connector(status)["pid"] is None           # paused: not started
    assert stack.pause(["connector"], paused=False) == 0
    assert connector(status)["pid"] is not None
