"""The children a dead supervisor left are stopped as the supervisor stops them: one after
another in reverse plan order, each within its grace, so the sink's flush and the worker's
drain still find the sandboxes up. `make up` / `make down` SIGTERMed them all at once, the
sandboxes (first in the plan) among them."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from ops import pids
from ops.supervisor import process_start

PLAN_ORDER = ("salesforce-sandbox", "whmcs-sandbox", "connector", "worker", "sink")

# A leftover's stand-in: notes when its SIGTERM comes and when it has stopped (0.3 s later).
CHILD = """
import signal, sys, time
def note(what):
    with open(sys.argv[2], "a") as out:
        out.write(f"{sys.argv[1]} {what}\\n")
def stop(*_):
    note("term")
    time.sleep(0.3)
    note("exit")
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
note("ready")
while True:
    time.sleep(0.1)
"""


def test_leftovers_stop_in_reverse_plan_order_each_before_the_next(tmp_path: Path) -> None:
    notes = tmp_path / "notes"
    procs = {name: subprocess.Popen([sys.executable, "-c", CHILD, name, str(notes)],
                                    start_new_session=True) for name in PLAN_ORDER}
    try:
        deadline = time.monotonic() + 20
        while not notes.exists() or notes.read_text().count(" ready\n") < len(PLAN_ORDER):
            assert time.monotonic() < deadline, "the stand-ins did not start"
            time.sleep(0.05)
        entries = [{"name": name, "pid": p.pid, "start": process_start(p.pid)}
                   for name, p in procs.items()]
        pids.stop_leftovers(entries, {}, lambda entry: 10.0, grace=True,
                            status_file=tmp_path / "supervisor.json")
        events = [line for line in notes.read_text().splitlines()
                  if not line.endswith(" ready")]
        assert events == [f"{name} {what}" for name in reversed(PLAN_ORDER)
                          for what in ("term", "exit")]
    finally:
        for p in procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()
