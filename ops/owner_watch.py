"""A process group that must not outlive the process that started it, although that
process's cleanup may never run: the test session's Kafka broker (a JVM in a session of its
own) when pytest is SIGKILLed, or when pytest-xdist kills one of its processes that outlasts
the controller's exit timeout. Never for ``make up``'s broker, which outlives its command."""

from __future__ import annotations

import os
import subprocess
import sys

# The watcher of :func:`stop_with_owner`: no project import, so it starts in a few ms.
_WATCHER = """
import os, signal, sys, time
owner, group, grace = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
def gone():
    try:
        os.killpg(group, 0)
        return False
    except (ProcessLookupError, PermissionError):
        return True
while os.getppid() == owner:
    if gone():
        sys.exit(0)
    time.sleep(0.5)
try:
    os.killpg(group, signal.SIGTERM)
except ProcessLookupError:
    sys.exit(0)
deadline = time.monotonic() + grace
while time.monotonic() < deadline and not gone():
    time.sleep(0.2)
if not gone():
    os.killpg(group, signal.SIGKILL)
"""


def stop_with_owner(pid: int, *, grace: float = 30.0) -> subprocess.Popen[bytes]:
    """A watcher (a child of this process, in a session of its own) that stops the process
    group ``pid`` — SIGTERM, SIGKILL after ``grace`` — once this process is gone, and ends
    by itself when the group ends first. ``wait()`` on it after a normal stop."""
    return subprocess.Popen([sys.executable, "-c", _WATCHER, str(os.getpid()), str(pid),
                             str(grace)], stdin=subprocess.DEVNULL, start_new_session=True)
