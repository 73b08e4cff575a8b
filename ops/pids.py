"""Which recorded pids may be signalled: the checks behind ``make down`` / ``make up``.

Pid files outlive a restart of the machine, their pids do not, and another process of the
user may have one now. A pid is recorded with its start (``BOOT_ID:TICKS``,
:func:`ops.supervisor.process_start`) and only a process that still has that start is
signalled (:func:`verified`). These functions take the paths and plans they read as
arguments; :mod:`ops.stack` passes its own.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ops.supervisor import process_start


def verified(pid: int, start: str | None, argv: list[str]) -> bool:
    """Whether ``pid`` still is the process recorded with it: the same start
    (:func:`ops.supervisor.process_start`). A record without one (written by an earlier
    release) counts when the process runs ``argv`` (its program aside: another interpreter
    path may have started it); a process whose command line cannot be read does not. Only a
    verified pid is ever signalled: a recorded pid may belong to any process of the user
    after a restart of the machine."""
    running = process_start(pid)
    if running is None:
        return False
    if start is not None:
        return running == start
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]
    except OSError:
        return False
    return bool(argv) and cmdline[1:] == [a.encode() for a in argv[1:]]


def recorded_pid(path: Path, argv: list[str]) -> int | None:
    """The pid recorded in ``path`` (``PID START``, or ``PID`` from an earlier release),
    None unless that process is still the one recorded (started as ``argv``, for a record
    without its start)."""
    try:
        pid, _, start = path.read_text().strip().partition(" ")
        return int(pid) if verified(int(pid), start or None, argv) else None
    except (OSError, ValueError):
        return None


def _same(entry: dict[str, Any], specs: dict[str, dict[str, Any]]) -> bool:
    """Whether the status file's ``entry`` still is the process the supervisor started (an
    entry of an earlier release, without a start, by the plan's command line)."""
    return verified(entry["pid"], entry.get("start"), specs.get(entry["name"], {}).get("argv", []))


def stop_leftovers(entries: list[dict[str, Any]], specs: dict[str, dict[str, Any]],
                   grace_of: Callable[[dict[str, Any]], float], *, grace: bool,
                   status_file: Path) -> None:
    """Stop what a supervisor that is gone left running (``entries``: its status file's
    processes, in plan order; ``specs``: its plan's, by name): each process group SIGKILLed,
    with ``grace`` after a SIGTERM and the child's grace (``grace_of(entry)``), one after
    another in reverse plan order, as the supervisor stops its children: the sink's flush and
    the worker's drain still find the sandboxes up. A running pid that is not the recorded
    process is left alone, with a warning."""
    found = []
    for entry in entries:
        if not entry.get("pid") or process_start(entry["pid"]) is None:
            continue
        if _same(entry, specs):
            found.append(entry)
        else:
            print(f"warning: pid {entry['pid']} is not the {entry['name']} the supervisor "
                  f"started ({status_file} is stale): not stopping it", file=sys.stderr)
    for child in reversed(found):
        if grace:
            _terminate(child, specs, grace_of(child))
        if _same(child, specs):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child["pid"], signal.SIGKILL)
                print(f"killed leftover {child['name']} (pid {child['pid']})")


def _terminate(child: dict[str, Any], specs: dict[str, dict[str, Any]], grace: float) -> None:
    """SIGTERM a leftover's process group and wait up to ``grace`` for it to exit."""
    print(f"stopping leftover {child['name']} (pid {child['pid']}) of a supervisor that is gone")
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child["pid"], signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and _same(child, specs):
        time.sleep(0.2)
