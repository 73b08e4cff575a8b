"""The seeded fault plan of ``make chaos``: which process is killed or paused, when, for how long.

Pure (no process, no broker): :func:`make_plan` turns a seed and the run's shape into a list
of :class:`Fault`, so a failing run is repeated by its seed and the plan is unit-tested.

Rules, in the order the random numbers are drawn (the order is part of reproducibility):

1. **Kills** exactly as ``make chaos`` drew them before pauses existed — per kill a moment in
   the middle 90 % of the approval phase and a victim, then, in time order, how long the
   victim stays down (0.5–3 s) — so a kill-only plan of an old seed is the same plan.
2. **Pauses**: per pause a moment and a victim among ``pause_victims`` that is neither down
   nor paused then (a kill or pause keeps its victim busy for its length plus
   :data:`RECOVER_S`, the time to start and rejoin). All broker nodes count as one victim,
   ``kafka``: at most one node is down or paused at a time — what a 3-node cluster is built
   to survive (a second lost node leaves acks=all writes short of ``min.insync.replicas``
   and the controllers without a majority: an outage, not a failover). Likewise no worker is
   paused while another one is down or paused: the case that matters is the paused worker's
   partitions moving to a live one. When every victim is busy, the pause moves to when the
   first becomes free.
3. **Broker targets** (only with a cluster): each fault of ``kafka`` aims at a role, not a
   node — the leader of a requests or outcomes partition, or the coordinator of the worker's
   or the sink's consumer group — resolved through the admin API at the moment it happens
   (``bench.chaos``), so it hits whoever holds that role then.
4. **Cuts**: per cut a moment and a victim among ``cut_victims`` (pipeline processes, not
   the brokers), placed like a pause — a cut-off process is out for the same purposes (its
   group gives it up), so the pause rules hold for cuts too. Drawn last: the kills, pauses
   and targets of a seed are the same with or without cuts.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Any

RECOVER_S = 10.0
BROKER = "kafka"
BROKER_ROLES = ("requests-leader", "outcomes-leader", "worker-coordinator",
                "sink-coordinator")


@dataclass(frozen=True)
class Fault:
    at_s: float          # seconds after the first approval, at the earliest
    action: str          # "kill" (SIGKILL, then restart after down_s), "pause" or "cut"
    process: str         # connector, worker, worker2, sink, kafka
    down_s: float        # how long it stays dead (kill), stopped (pause) or cut off
    target: str | None = None  # kafka in a cluster: a role, e.g. "requests-leader:2"

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["at_s"], out["down_s"] = round(self.at_s, 1), round(self.down_s, 1)
        return {k: v for k, v in out.items() if v is not None}


def make_plan(seed: int, *, duration_s: float, kills: int, pauses: int, pause_s: float,
              kill_victims: list[str], pause_victims: list[str], cluster: bool = False,
              partitions: int = 3, cuts: int = 0, cut_s: float = 0.0,
              cut_victims: list[str] | None = None) -> list[Fault]:
    """The faults of one run, in time order (see the module's rules)."""
    rng = random.Random(seed)
    drawn = sorted((rng.uniform(0.05, 0.95) * duration_s, rng.choice(kill_victims))
                   for _ in range(kills)) if kill_victims else []
    faults = [Fault(at, "kill", victim, rng.uniform(0.5, 3.0)) for at, victim in drawn]
    busy: dict[str, list[tuple[float, float]]] = {}
    for f in faults:
        busy.setdefault(f.process, []).append((f.at_s, f.at_s + f.down_s + RECOVER_S))
    faults += _placed(rng, "pause", pauses, pause_s, pause_victims, busy, duration_s)
    faults.sort(key=lambda f: f.at_s)
    if cluster:
        faults = [Fault(f.at_s, f.action, f.process, f.down_s, _role(rng, partitions))
                  if f.process == BROKER else f for f in faults]
    assert BROKER not in (cut_victims or [])
    faults += _placed(rng, "cut", cuts, cut_s, cut_victims or [], busy, duration_s)
    faults.sort(key=lambda f: f.at_s)
    return faults


def _placed(rng: random.Random, action: str, count: int, length: float, victims: list[str],
            busy: dict[str, list[tuple[float, float]]], duration_s: float) -> list[Fault]:
    """``count`` faults of ``length`` seconds, each at a moment and on a victim free for it
    (pauses and cuts: rule 2); ``busy`` takes them in."""
    placed = []
    for _ in range(count if victims else 0):
        at = rng.uniform(0.05, 0.95) * duration_s
        victim = rng.choice(victims)
        at, victim = _free_slot(rng, at, victim, length, victims, busy)
        busy.setdefault(victim, []).append((at, at + length + RECOVER_S))
        placed.append(Fault(at, action, victim, length))
    return placed


def _free_slot(rng: random.Random, at: float, victim: str, length: float,
               victims: list[str], busy: dict[str, list[tuple[float, float]]]
               ) -> tuple[float, str]:
    """``(at, victim)`` if free for ``length`` seconds; else another free victim, else later."""
    def free(v: str, t: float) -> bool:
        return all(t + length + RECOVER_S <= start or t >= end
                   for other in busy if _group(other) == _group(v)
                   for start, end in busy[other])

    while True:
        if free(victim, at):
            return at, victim
        others = [v for v in victims if free(v, at)]
        if others:
            return at, rng.choice(others)
        at = min(end for windows in busy.values() for _start, end in windows if end > at)


def _group(victim: str) -> str:
    """Victims that must not be out together: the workers; otherwise each on its own."""
    return "worker" if victim.startswith("worker") else victim


def _role(rng: random.Random, partitions: int) -> str:
    role = rng.choice(BROKER_ROLES)
    return f"{role}:{rng.randrange(partitions)}" if role.endswith("leader") else role
