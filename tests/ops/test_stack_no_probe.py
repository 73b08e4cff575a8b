"""`make up` and a process with its probes off (``*_HTTP_PORT=0``: no health URL).

``wait_healthy`` waited only for processes with a health URL and ``print_map`` called every
other one healthy: with ``WORKER_HTTP_PORT=0`` and a bad setting the worker exited 64 (a
final exit code) and `make up` printed ``worker healthy`` and returned 0. Now such a process
counts once the supervisor lists it running, the same process, for ``STARTED_S``; a final
exit is named for every process; the map says ``running (no probe port)``, not ``healthy``.
Nothing here starts a process: the supervisor's status file is the test's to write.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

from ops import stack
from ops.supervisor import Child, process_start


@pytest.fixture
def status(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(stack, "STATUS", tmp_path / "supervisor.json")
    return stack.STATUS


def write(status: Path, *entries: dict) -> None:
    status.write_text(json.dumps({"pid": 1, "processes": list(entries)}))


def no_probe(name: str = "worker") -> dict:
    url = stack._health_url(stack.WorkerSettings, {"WORKER_HTTP_PORT": "0"})
    assert url == ""
    return {"name": name, "argv": ["x"], "env": {}, "log": f"{name}.log", "health_url": url}


def test_a_final_exit_of_a_process_without_probe_port_fails_make_up(status, capsys):
    write(status, {"name": "worker", "pid": None, "start": None, "restarts": 0,
                   "last_exit": 64, "log": "w.log", "health_url": "", "final": True})
    started = time.monotonic()
    unhealthy = stack.wait_healthy([no_probe()], timeout=5.0)
    assert time.monotonic() - started < 1.5, "waited for a process that exited finally"
    assert unhealthy == {"worker": "exited with 64, a final exit code"}
    stack.print_map([no_probe()], unhealthy)
    out = capsys.readouterr().out
    assert not any(line.split()[:2] == ["worker", "healthy"] for line in out.splitlines()), out
    assert "error: not healthy: worker (exited with 64, a final exit code)" in out


def test_a_process_without_probe_port_counts_once_it_has_run_a_while(status, monkeypatch):
    me = {"name": "worker", "pid": os.getpid(), "start": process_start(os.getpid()),
          "restarts": 0, "last_exit": None, "final": False}
    write(status, me)
    monkeypatch.setattr(stack, "STARTED_S", 0.0)
    assert stack.wait_healthy([no_probe()], timeout=1.0) == {}
    monkeypatch.setattr(stack, "STARTED_S", 3600.0)  # just started (or restarting)
    assert stack.wait_healthy([no_probe()], timeout=1.0) == {
        "worker": "not running for 3600 s after 1 s (no probe port)"}
    write(status, {**me, "pid": None, "start": None, "last_exit": 1, "restarts": 1})
    monkeypatch.setattr(stack, "STARTED_S", 0.0)
    assert stack.wait_healthy([no_probe()], timeout=1.0) == {
        "worker": "not running for 0 s after 1 s (no probe port)"}


def test_a_status_without_start_times_is_watched_for_the_same_pid(status, monkeypatch):
    """A status file without ``start`` (a supervisor of an earlier release): the same pid
    listed for ``STARTED_S``."""
    write(status, {"name": "worker", "pid": os.getpid(), "last_exit": None, "final": False})
    monkeypatch.setattr(stack, "STARTED_S", 0.6)
    assert stack.wait_healthy([no_probe()], timeout=3.0) == {}


def test_running_for_is_the_age_the_supervisor_measured_while_the_process_runs():
    me = {"pid": os.getpid(), "start": process_start(os.getpid()), "running_s": 12.5}
    assert stack.running_for(me) == 12.5
    assert stack.running_for({**me, "start": "another-boot:1"}) is None  # pid reused
    assert stack.running_for({**me, "running_s": None}) is None
    assert stack.running_for({"pid": None, "start": None, "running_s": None}) is None


def test_the_age_does_not_come_from_proc_uptime(status, monkeypatch):
    """Under lxcfs (LXC, LXD, Proxmox) /proc/uptime is the container's age while a process's
    start ticks count from the host's boot: an age computed from both came out negative and
    a running process without a probe port was never counted (`make up` failed after 120 s).
    The supervisor's own measure is taken."""
    real_read_text = Path.read_text

    def container_uptime(self: Path, *args, **kwargs):
        if str(self) == "/proc/uptime":
            return "1.00 1.00\n"  # a container younger than the host's processes
        return real_read_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", container_uptime)
    write(status, {"name": "worker", "pid": os.getpid(), "start": process_start(os.getpid()),
                   "running_s": 30.0, "restarts": 0, "last_exit": None, "final": False})
    assert stack.wait_healthy([no_probe()], timeout=2.0) == {}


def test_a_process_younger_than_the_start_window_is_not_counted_yet(status, monkeypatch):
    """The supervisor's measure against STARTED_S: 0.5 s in, a process that may still exit
    64 is not counted; 6 s in it is."""
    me = {"name": "worker", "pid": os.getpid(), "start": process_start(os.getpid()),
          "restarts": 0, "last_exit": None, "final": False}
    monkeypatch.setattr(stack, "STARTED_S", 5.0)
    write(status, {**me, "running_s": 0.5})
    assert stack.wait_healthy([no_probe()], timeout=1.0) == {
        "worker": "not running for 5 s after 1 s (no probe port)"}
    write(status, {**me, "running_s": 6.0})
    assert stack.wait_healthy([no_probe()], timeout=1.0) == {}


def test_the_supervisor_reports_how_long_a_child_has_run(tmp_path):
    child = Child(name="sink", argv=[sys.executable, "-c", "import time; time.sleep(60)"],
                  env={}, log=str(tmp_path / "sink.log"), grace_s=5.0)
    assert child.status()["running_s"] is None
    child.start()
    try:
        time.sleep(0.3)
        assert 0.2 <= child.status()["running_s"] < 5.0
    finally:
        child.stop()
    assert child.status()["running_s"] is None


def test_a_final_exit_after_turning_healthy_is_named(status, monkeypatch):
    """The worker answered its probe, then exited with 64 while `make up` still waited for
    the sink: named, not counted healthy."""
    running = [{"name": "worker", "pid": 10, "last_exit": None, "final": False},
               {"name": "sink", "pid": 11, "last_exit": None, "final": False}]
    write(status, *running)

    def is_healthy(child) -> bool:
        if child.name == "sink":  # meanwhile the worker left for good
            write(status, {**running[0], "pid": None, "last_exit": 64, "final": True},
                  running[1])
        return child.name == "worker"

    monkeypatch.setattr(stack, "is_healthy", is_healthy)
    procs = [{"name": n, "argv": [], "env": {}, "log": f"{n}.log",
              "health_url": f"http://127.0.0.1:1/{n}"} for n in ("worker", "sink")]
    assert stack.wait_healthy(procs, timeout=1.0) == {
        "worker": "exited with 64, a final exit code", "sink": "not healthy after 1 s"}


def test_the_map_says_a_process_without_probe_port_runs_not_that_it_is_healthy(capsys):
    probed = {"name": "sink", "argv": [], "env": {}, "log": "sink.log",
              "health_url": "http://127.0.0.1:9103/healthz"}
    stack.print_map([no_probe(), probed], {})
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()
             if line.startswith("  ") and line.split()}
    assert lines["worker"].split()[1:4] == ["running", "(no", "probe"]
    assert lines["sink"].split()[1] == "healthy"
