"""CPU time of processes from ``/proc`` (user + system), for CPU-per-Order figures.

``CpuMeter({"worker": pid, ...}).start()`` … ``.stop()`` → seconds of CPU each process spent
in between. A process that restarts in between (a new pid under the same name) is followed:
call :meth:`CpuMeter.track` with its new pid once it is ready; its CPU counts from then (what
it spent starting is returned, to be reported apart). A process's children count with it
once it has reaped them (``cutime``/``cstime``: the worker's group-access check at start-up,
a child Python process, is in its start-up CPU); a child still running is not, so name every
long-lived process you care about. (Readings before this counted ``utime``/``stime`` only:
a reaped child's CPU was left out.)
"""

from __future__ import annotations

import os
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of ``pid`` so far, its reaped children's included, or None
    when it is gone. Every figure is a difference of two readings."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    # utime, stime, cutime, cstime (stat fields 14-17)
    return (int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])) / TICK


class CpuMeter:
    def __init__(self, pids: dict[str, int | None]) -> None:
        self._pids = {name: pid for name, pid in pids.items() if pid}
        self._start: dict[tuple[str, int], float] = {}
        self._last: dict[tuple[str, int], float] = {}

    def start(self) -> CpuMeter:
        for name, pid in self._pids.items():
            self._start[(name, pid)] = cpu_seconds(pid) or 0.0
        return self

    def track(self, name: str, pid: int) -> float | None:
        """``name`` runs as ``pid`` from now on (a restart), counted from its CPU now: call it
        once the process is ready, so its interpreter start-up, imports and the like are
        not counted. Returns the CPU seconds it spent until now (None: it is gone)."""
        self.sample()
        self._pids[name] = pid
        now = cpu_seconds(pid)
        self._start.setdefault((name, pid), now or 0.0)
        return now

    def sample(self) -> None:
        """Remember the latest reading of every process (one that exits keeps its last)."""
        for key in self._start:
            now = cpu_seconds(key[1])
            if now is not None:
                self._last[key] = now

    def stop(self) -> dict[str, float]:
        """CPU seconds per name since :meth:`start` (or since its :meth:`track`)."""
        self.sample()
        out: dict[str, float] = {}
        for (name, pid), began in self._start.items():
            out[name] = out.get(name, 0.0) + max(0.0, self._last.get((name, pid), began) - began)
        return out
