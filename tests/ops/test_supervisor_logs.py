"""The logs of `make up`'s processes. Before, the supervisor opened each child's log for
append and nothing ever rotated it (the connector logs each event, the worker each order, a
crash loop a traceback every 30 s): only `make clean` reclaimed the space. Now a log over
``SFPROV_LOG_MAX_MB`` is rotated (``NAME.log.1`` .. ``.3``) when the supervisor (re)starts its
process. And `make logs` before `make up` followed nothing: ``$(STATE)/logs/*.log`` expanded
once, on an empty directory, to a literal ``*.log`` that tail waited for in vain."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from common.errors import ConfigError
from ops import sandboxes, stack
from ops.supervisor import Child

ROOT = Path(__file__).resolve().parents[2]
MB = 1024 * 1024


@pytest.fixture(autouse=True)
def no_env_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SFPROV_ENV_FILE", os.devnull)
    monkeypatch.delenv("SFPROV_LOG_MAX_MB", raising=False)


def run_once(log: Path, code: str = "print('hello from the child')", **kw: object) -> Child:
    child = Child(name="p", argv=[sys.executable, "-c", code], env={}, log=str(log), **kw)
    child.start()
    assert child.proc is not None
    child.proc.wait(timeout=60)
    return child


def test_a_log_over_the_limit_is_rotated_when_the_supervisor_starts_the_child(tmp_path,
                                                                              monkeypatch):
    monkeypatch.setenv("SFPROV_LOG_MAX_MB", "1")
    log = tmp_path / "p.log"
    log.write_bytes(b"old line\n" * (MB // 9 + 1000))  # a little over 1 MB
    run_once(log)
    assert (tmp_path / "p.log.1").read_bytes().startswith(b"old line\n")
    text = log.read_text()
    assert "old line" not in text
    assert "hello from the child" in text
    assert "p.log over 1 MB: rotated to p.log.1" in text


def test_a_log_under_the_limit_is_appended_to(tmp_path, monkeypatch):
    monkeypatch.setenv("SFPROV_LOG_MAX_MB", "1")
    log = tmp_path / "p.log"
    log.write_text("old line\n")
    run_once(log)
    text = log.read_text()
    assert text.startswith("old line\n") and "hello from the child" in text
    assert not (tmp_path / "p.log.1").exists()


def test_the_default_limit_is_100_mb_and_0_never_rotates(tmp_path, monkeypatch):
    log = tmp_path / "p.log"
    assert Child(name="p", argv=[], env={}, log=str(log)).log_limit() == 100 * MB
    monkeypatch.setenv("SFPROV_LOG_MAX_MB", "0")
    log.write_bytes(b"x" * (2 * MB))
    run_once(log)
    assert log.stat().st_size > 2 * MB and not (tmp_path / "p.log.1").exists()


def test_three_old_logs_are_kept(tmp_path):
    log = tmp_path / "p.log"
    for suffix, what in (("", "current"), (".1", "one"), (".2", "two"), (".3", "three")):
        (tmp_path / f"p.log{suffix}").write_text(what * 100)
    run_once(log, log_max_bytes=10)
    assert (tmp_path / "p.log.1").read_text().startswith("current")
    assert (tmp_path / "p.log.2").read_text().startswith("one")
    assert (tmp_path / "p.log.3").read_text().startswith("two")
    assert not (tmp_path / "p.log.4").exists()  # the oldest ("three") is gone
    assert "hello from the child" in log.read_text()


def test_a_crash_loop_rotates_its_log_at_each_restart_over_the_limit(tmp_path):
    """A restart is a start: a process that crashes with a long traceback does not grow its
    log past the limit (by more than one run's output)."""
    log = tmp_path / "p.log"
    child = run_once(log, "import sys; print('x' * 5000); sys.exit(1)", log_max_bytes=4000)
    child.poll(set())  # exited: restart scheduled
    assert child.restarts == 1 and child.proc is None
    child.next_start = 0.0
    child.poll(set())  # started again, the log over the limit rotated first
    assert child.proc is not None
    child.proc.wait(timeout=60)
    assert (tmp_path / "p.log.1").read_text().count("x" * 5000) == 1
    assert log.read_text().count("x" * 5000) == 1


def test_a_bad_limit_names_its_variable(tmp_path, monkeypatch, capsys):
    from ops import supervisor

    with pytest.raises(ConfigError, match="^SFPROV_LOG_MAX_MB:"):
        supervisor.log_limit({"SFPROV_LOG_MAX_MB": "lots"})
    with pytest.raises(ConfigError, match="^SFPROV_LOG_MAX_MB:"):
        supervisor.log_limit({"SFPROV_LOG_MAX_MB": "-1"})
    assert supervisor.log_limit({"SFPROV_LOG_MAX_MB": " "}) == 100 * MB
    # the running supervisor keeps its children up, with the default, and says why
    assert supervisor.configured_log_limit({"SFPROV_LOG_MAX_MB": "lots"}) == 100 * MB
    out = capsys.readouterr().out
    assert "SFPROV_LOG_MAX_MB: invalid value" in out and "100 MB" in out


# --- make logs ------------------------------------------------------------------------------

def planned_log_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """The names of the logs `make up` may write: every process of the plan in sandbox mode
    (the schema registry emulator included), and the supervisor's own."""
    monkeypatch.delenv("SCHEMA_REGISTRY_URL", raising=False)
    procs, _ = sandboxes.plan(tmp_path / "state", tmp_path / "logs")
    procs += stack._pipeline_processes({}, {})
    return {Path(p["log"]).name for p in procs} | {"supervisor.log"}


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_logs_names_every_log_the_stack_writes(tmp_path, monkeypatch):
    state = tmp_path / "my state"  # a space: each path stays one word
    env = {**os.environ, "SFPROV_STATE_DIR": str(state), "SFPROV_ENV_FILE": os.devnull}
    printed = subprocess.run(["make", "-s", "-n", "logs"], cwd=ROOT, capture_output=True,
                             text=True, timeout=60, env=env, check=True).stdout
    assert "*" not in printed
    for name in planned_log_names(tmp_path, monkeypatch):
        assert f"'{state}/logs/{name}'" in printed, name
    for name in ("server.log", "stdout.log"):
        assert f"'{state}/kafka/broker/logs/{name}'" in printed


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_logs_before_make_up_follows_the_logs_once_they_appear(tmp_path):
    state = tmp_path / "my state"
    env = {**os.environ, "SFPROV_STATE_DIR": str(state), "SFPROV_ENV_FILE": os.devnull}
    proc = subprocess.Popen(["make", "-s", "logs"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not (state / "logs").is_dir():  # make logs creates it
            assert time.monotonic() < deadline, "no logs directory"
            time.sleep(0.05)
        time.sleep(0.5)  # tail runs, on an empty directory
        (state / "logs" / "worker.log").write_text("a line written after make logs started\n")
        time.sleep(2.5)  # tail -F looks again every second
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert b"a line written after make logs started" in out, out.decode(errors="replace")


def test_the_running_supervisor_keeps_its_child_up_under_a_bad_limit(tmp_path):
    """``SFPROV_LOG_MAX_MB=lots`` under a real ``python -m ops.supervisor``: it warns once and
    rotates at the default. Before :func:`ops.supervisor.configured_log_limit`, each child's
    start read the bad value itself: the supervisor exited 1 with a ConfigError traceback and
    started nothing."""
    status, log = tmp_path / "supervisor.json", tmp_path / "p.log"
    plan = tmp_path / "supervisor-plan.json"
    plan.write_text(json.dumps({"status_file": str(status), "processes": [
        {"name": "p", "log": str(log), "env": {}, "grace_s": 5.0,
         "argv": [sys.executable, "-c", "print('hello from the child', flush=True)"],
         "final_exit_codes": [0]}]}))
    proc = subprocess.Popen([sys.executable, "-m", "ops.supervisor", str(plan)], cwd=ROOT,
                            env={**os.environ, "SFPROV_STATE_DIR": str(tmp_path),
                                 "SFPROV_ENV_FILE": os.devnull, "SFPROV_LOG_MAX_MB": "lots",
                                 "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while "exited with 0" not in (log.read_text() if log.exists() else ""):
            assert proc.poll() is None, f"the supervisor exited {proc.returncode}"
            assert time.monotonic() < deadline, "the child did not run"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    assert "hello from the child" in log.read_text()
    text = out.decode(errors="replace")
    assert "SFPROV_LOG_MAX_MB: invalid value" in text and "logs rotate at 100 MB" in text, text
    assert "Traceback" not in text
