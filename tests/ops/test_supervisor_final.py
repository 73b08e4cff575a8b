"""`make up`'s supervisor does not restart a process whose exit code says restarting cannot
help (a bad setting, a broker refusing its credentials or ACLs): no restart loop."""

from __future__ import annotations

import json
import sys
import time
import types

import pytest

from ops import stack, supervisor
from ops.stack import FINAL_EXIT_CODES, _pipeline_processes, sandbox_env
from ops.supervisor import Child


def exits_with(code: int, tmp_path, final: list[int]) -> Child:
    child = Child(name="p", argv=[sys.executable, "-c", f"import sys; sys.exit({code})"],
                  env={}, log=str(tmp_path / "p.log"), final_exit_codes=final)
    child.start()
    assert child.proc is not None
    child.proc.wait(timeout=60)
    child.poll(set())
    return child


def test_a_final_exit_code_is_not_restarted(tmp_path):
    child = exits_with(64, tmp_path, [64])
    assert (child.last_exit, child.restarts, child.next_start) == (64, 0, float("inf"))
    assert "exited with 64: not restarting" in (tmp_path / "p.log").read_text()
    child.poll(set())
    assert child.proc is None  # still not started again


def test_another_exit_code_is_restarted_with_backoff(tmp_path):
    child = exits_with(1, tmp_path, [64])
    assert (child.last_exit, child.restarts) == (1, 1)
    assert child.next_start <= time.monotonic() + 1.0


@pytest.mark.parametrize("name,code", [("connector", 64), ("worker", 64), ("sink", 64)])
def test_each_process_refused_by_the_broker_exits_finally(name, code):
    assert code in FINAL_EXIT_CODES[name]
    plan = {p["name"]: p for p in _pipeline_processes({}, {})}
    assert code in plan[name]["final_exit_codes"]


def test_a_process_with_its_probes_off_is_not_waited_for():
    """``SINK_HTTP_PORT=0`` (documented: 0 = off): `make up` waited 120 s for a health URL on
    port 0 and reported the sink not healthy."""
    plan = {p["name"]: p for p in _pipeline_processes({"SINK_HTTP_PORT": "0"}, {})}
    assert plan["sink"]["health_url"] == ""
    assert plan["worker"]["health_url"] == "http://127.0.0.1:9102/healthz"


def test_health_urls_follow_the_settings_as_the_processes_read_them():
    """The URLs were built from the raw variables: ``CONNECTOR_HTTP_PORT=`` (the process
    listens on its default 9101) gave ``http://127.0.0.1:/healthz``, ``" 9200"`` kept its
    space, ``*_HTTP_HOST`` was ignored: `make up` waited for probes that could not answer."""
    def urls(env, overrides=None):
        return {p["name"]: p["health_url"] for p in _pipeline_processes(env, overrides or {})}

    assert urls({"CONNECTOR_HTTP_PORT": ""})["connector"] == "http://127.0.0.1:9101/healthz"
    assert urls({"WORKER_HTTP_PORT": " 9200"})["worker"] == "http://127.0.0.1:9200/healthz"
    assert urls({"SINK_HTTP_PORT": " 0 "})["sink"] == ""
    assert urls({"WORKER_HTTP_HOST": "10.1.2.3"})["worker"] == "http://10.1.2.3:9102/healthz"
    for wildcard in ("0.0.0.0", "::", ""):  # listening everywhere: asked on loopback
        assert urls({"SINK_HTTP_HOST": wildcard})["sink"] == "http://127.0.0.1:9103/healthz"
    assert urls({"CONNECTOR_HTTP_HOST": "::1"})["connector"] == "http://[::1]:9101/healthz"
    # the plan's overrides are what the child reads over the environment
    assert urls({"SINK_HTTP_PORT": "9300"}, {"SINK_HTTP_PORT": "9400"})["sink"] == \
        "http://127.0.0.1:9400/healthz"


def test_resume_starts_a_process_that_exited_finally(tmp_path):
    """After a final exit the operator fixes the cause and says `ops.stack resume NAME` (or
    `restart NAME`): the supervisor stops the paused child (none runs) and, resumed, starts it
    at once — before, `next_start` stayed infinite and only `make down && make up` helped.
    Against a real supervisor: tests/ops/test_supervisor_resume.py."""
    child = exits_with(64, tmp_path, [64])
    child.kick()                     # what the supervisor does when resume bumps the kick
    child.poll(set())
    assert child.proc is not None
    child.proc.wait(timeout=60)


def test_events_disabled_leaves_the_connector_out_of_make_up():
    """``SF_EVENTS_ENABLED=false``: the connector exits 0 at start, so `make up` would restart
    it for ever and report it not healthy; a value that does not parse is the connector's to
    refuse (exit 64)."""
    assert "connector" not in {p["name"] for p in
                               _pipeline_processes({"SF_EVENTS_ENABLED": "false"}, {})}
    assert "connector" in {p["name"] for p in
                           _pipeline_processes({"SF_EVENTS_ENABLED": "maybe"}, {})}


def test_the_users_replay_choice_survives_sandbox_mode():
    sandbox = {"SF_LOGIN_URL": "https://127.0.0.1:8443", "SF_EVENTS_REPLAY": "EARLIEST"}
    assert sandbox_env({}, sandbox) == sandbox
    assert sandbox_env({"SF_EVENTS_REPLAY": "LATEST", "SF_LOGIN_URL": "https://x"}, sandbox) \
        == {"SF_LOGIN_URL": "https://127.0.0.1:8443"}


@pytest.fixture
def supervised(tmp_path, monkeypatch):
    """A status file naming worker and sink, both running, as the supervisor writes it."""
    status = tmp_path / "supervisor.json"
    status.write_text(json.dumps({"processes": [{"name": "worker", "pid": 10},
                                                {"name": "sink", "pid": 11}]}))
    monkeypatch.setattr(stack, "STATUS", status)
    monkeypatch.setattr(stack, "CONTROL", tmp_path / "supervisor-control.json")
    monkeypatch.setattr(stack, "supervisor_pid", lambda: 1)
    return status


def test_pause_names_an_unknown_process_and_a_timeout(supervised, capsys):
    assert stack.pause(["workers"]) == 2
    assert "unknown process workers; the supervisor runs: worker, sink" in capsys.readouterr().err
    assert stack.pause(["worker"], timeout_s=0.5) == 1       # nobody stops it here
    assert "still running after 0 s: worker" in capsys.readouterr().err
    assert json.loads(stack.CONTROL.read_text())["paused"] == ["worker"]
    assert stack.main(["resume"]) == 2
    assert stack.main(["stauts"]) == 2 and "usage:" in capsys.readouterr().err


@pytest.fixture
def answering(tmp_path, monkeypatch):
    """Every health URL answers 200 (another program on the port, say); the status file is
    the test's to write."""
    monkeypatch.setattr(stack, "STATUS", tmp_path / "supervisor.json")
    monkeypatch.setattr(stack, "is_healthy", lambda child: True)
    return stack.STATUS


def planned(*names: str) -> list[dict]:
    return [{"name": n, "argv": [], "env": {}, "log": f"{n}.log",
             "health_url": f"http://127.0.0.1:1/{n}"} for n in names]


def test_make_up_does_not_wait_for_a_process_that_exited_finally(answering, monkeypatch):
    """A worker that exited with 64 (a bad setting) is down until an operator acts: `make up`
    waited its full 120 s for it anyway."""
    monkeypatch.setattr(stack, "is_healthy", lambda child: False)
    answering.write_text(json.dumps({"processes": [
        {"name": "worker", "pid": None, "last_exit": 64, "final": True},
        {"name": "sink", "pid": None, "last_exit": 1, "final": False}]}))
    started = time.monotonic()
    unhealthy = stack.wait_healthy(planned("worker"), timeout=5.0)
    assert time.monotonic() - started < 1.5, "waited for a process that exited finally"
    assert unhealthy == {"worker": "exited with 64, a final exit code"}
    assert stack.wait_healthy(planned("worker", "sink"), timeout=1.0) == {
        "worker": "exited with 64, a final exit code", "sink": "not healthy after 1 s"}


def test_make_up_counts_healthy_only_a_process_that_runs(answering):
    """Another program answers the registry sandbox's health URL while the sandbox, unable
    to bind the port, exits and waits for its restart: not healthy."""
    answering.write_text(json.dumps({"processes": [
        {"name": "registry-sandbox", "pid": None, "last_exit": 1, "final": False},
        {"name": "worker", "pid": 4242, "last_exit": None, "final": False}]}))
    assert stack.wait_healthy(planned("registry-sandbox", "worker"), timeout=1.0) == {
        "registry-sandbox": "not healthy after 1 s"}


def test_the_supervisor_counts_healthy_only_a_child_that_still_runs(monkeypatch):
    monkeypatch.setattr(supervisor, "is_healthy", lambda child: True)
    child = Child(name="registry-sandbox", argv=[], env={}, log="", health_url="http://x/")
    exited = types.SimpleNamespace(pid=4242, poll=lambda: 1)        # EADDRINUSE, say
    child.proc = exited  # type: ignore[assignment]
    assert supervisor.turned_healthy(child) is False
    child.proc = types.SimpleNamespace(pid=4242, poll=lambda: None)  # type: ignore[assignment]
    assert supervisor.turned_healthy(child) is True
    child.proc = None
    assert supervisor.turned_healthy(child) is False


def test_make_up_names_why_each_process_is_not_healthy(capsys):
    stack.print_map(planned("worker", "sink"), {"worker": "exited with 64, a final exit code",
                                                "sink": "not healthy after 120 s"})
    out = capsys.readouterr().out
    assert "error: not healthy: worker (exited with 64, a final exit code); sink (not healthy " \
           "after 120 s) (see their logs)" in out
