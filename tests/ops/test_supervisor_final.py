"""`make up`'s supervisor does not restart a process whose exit code says restarting cannot
help (a bad setting, a broker refusing its credentials or ACLs): no restart loop."""

from __future__ import annotations

import sys
import time

import pytest

from ops.stack import FINAL_EXIT_CODES, _pipeline_processes
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
