"""A child whose start fails (its program gone — a ``.venv`` rebuilt —, fork refused, no file
descriptor) is retried with backoff, and the other children keep running. Before, the
``OSError`` ended the supervisor's loop: its ``finally`` stopped every child, the healthy
ones too, and the supervisor exited 1 — the whole stack down for good (lifecycle review)."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ops.supervisor import Child
from tests.ops.test_supervisor_resume import ROOT, running, wait_for


def statuses(status: Path) -> dict[str, Any]:
    with contextlib.suppress(FileNotFoundError, ValueError):
        return {p["name"]: p for p in json.loads(status.read_text())["processes"]}
    return {}


def test_a_child_that_cannot_start_is_retried_and_the_others_keep_running(tmp_path: Path):
    gone = tmp_path / "bin" / "py"
    gone.parent.mkdir()
    gone.symlink_to(sys.executable)
    status = tmp_path / "supervisor.json"
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"status_file": str(status), "processes": [
        {"name": "worker", "log": str(tmp_path / "worker.log"), "env": {},
         "argv": [sys.executable, "-c", "import time; time.sleep(600)"], "grace_s": 5.0},
        # exits at once; its interpreter is removed below, so its restart cannot start
        {"name": "sink", "log": str(tmp_path / "sink.log"), "env": {},
         "argv": [str(gone), "-c", "import sys; sys.exit(1)"], "grace_s": 5.0}]}))
    sup = subprocess.Popen([sys.executable, "-m", "ops.supervisor", str(plan)], cwd=ROOT,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        worker = wait_for(lambda: statuses(status).get("worker", {}).get("pid"), 30)
        wait_for(lambda: (statuses(status).get("sink") or {}).get("last_exit") == 1, 30)
        gone.unlink()
        wait_for(lambda: sup.poll() is not None or
                 (statuses(status).get("sink") or {}).get("restarts", 0) >= 3, 30)
        assert sup.poll() is None, "the supervisor exited"
        failed = statuses(status)["sink"]
        assert "FileNotFoundError" in failed["start_error"]
        assert failed["last_exit"] == 1  # the exit that made it a restart, kept
        assert statuses(status)["worker"]["pid"] == worker and running(worker)
        assert "could not start: FileNotFoundError" in (tmp_path / "sink.log").read_text()
        # the program is back: the next retry starts it (and it exits 1 again, as before)
        gone.symlink_to(sys.executable)
        wait_for(lambda: (s := statuses(status).get("sink")) and not s["start_error"], 60)
    finally:
        if sup.poll() is None:
            sup.send_signal(signal.SIGTERM)
        out, _ = sup.communicate(timeout=30)
    assert sup.returncode == 0, out.decode()
    assert b"sink could not start: FileNotFoundError" in out
    assert not running(worker)


def test_a_log_that_cannot_be_opened_is_a_failed_start_not_a_crash(tmp_path: Path):
    # under a regular file: no process opens it, root included (a read-only directory let
    # root write, and the test returned before it checked anything)
    (tmp_path / "logs").write_text("")
    child = Child(name="p", argv=[sys.executable, "-c", "pass"], env={},
                  log=str(tmp_path / "logs" / "p.log"))
    before = time.monotonic()
    child.start()
    assert child.proc is None and child.restarts == 1
    assert "NotADirectoryError" in child.start_error
    assert child.next_start >= before + 1.0 and child.backoff == 2.0
    assert child.status()["start_error"] == child.start_error


def test_make_up_and_status_name_why_a_process_could_not_start(tmp_path: Path, monkeypatch,
                                                               capsys) -> None:
    """`make up` said only "not healthy after 120 s (see their logs)" — a log that may be the
    very file that could not be written — and `ops.stack status` showed ``last exit None``."""
    from ops import stack
    from tests.ops.test_stack_no_probe import no_probe, write

    monkeypatch.setattr(stack, "STATUS", tmp_path / "supervisor.json")
    write(stack.STATUS, {"name": "worker", "pid": None, "start": None, "restarts": 4,
                         "last_exit": 1, "log": "w.log", "health_url": "", "final": False,
                         "start_error": "FileNotFoundError: [Errno 2] .venv/bin/python"})
    assert stack.wait_healthy([no_probe()], timeout=1.0) == {
        "worker": f"not running for {stack.STARTED_S:.0f} s after 1 s (no probe port): "
                  "could not start: "
                  "FileNotFoundError: [Errno 2] .venv/bin/python"}
    monkeypatch.setattr(stack, "supervisor_pid", lambda: 1)
    monkeypatch.setattr(stack, "broker", lambda: type("B", (), {
        "running_pid": lambda self: 2, "bootstrap": "127.0.0.1:9092"})())
    assert stack.status() == 0
    out = capsys.readouterr().out
    assert "last exit 1" in out and "could not start: FileNotFoundError" in out, out
