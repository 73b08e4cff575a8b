"""`make up`'s supervisor does not restart a process whose exit code says restarting cannot
help (a bad setting, a broker refusing its credentials or ACLs): no restart loop."""

from __future__ import annotations

import json
import sys
import time

import pytest

from ops import stack
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
