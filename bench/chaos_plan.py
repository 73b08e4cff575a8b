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
5. **Inside the approvals** (``within=True``: every ``bench.chaos`` run): a pause or cut the
   rules above would start past 0.95 of the approval phase takes instead the earliest free
   start from 0.05 of it (a random one of the victims free then, as in rule 2), so it lands
   while Orders still arrive. When there is none it stays where rule 2 put it, or, with
   ``refuse=True`` (``--pauses``/``--cuts`` given on the command line), the plan is
   refused: :class:`PlanDoesNotFit`. A plan whose pauses and cuts all start inside is the
   same either way.

:func:`out_together` is the rules' test of two faults, also applied to the real timeline
by ``bench.chaos_faults`` (a restart can take longer than planned).
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Any

RECOVER_S = 10.0
BROKER = "kafka"
BROKER_ROLES = ("requests-leader", "outcomes-leader", "worker-coordinator",
                "sink-coordinator")
WINDOW = (0.05, 0.95)  # the part of the approval phase the faults are drawn in


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


class PlanDoesNotFit(ValueError):
    """Pauses or cuts that find no free start inside :data:`WINDOW` of the approval phase."""

    def __init__(self, late: list[Fault], duration_s: float, message: str | None = None):
        self.late, self.duration_s = late, duration_s
        super().__init__(message or (
            f"{len(late)} pause(s)/cut(s) find no free start inside {WINDOW[0]:g}-{WINDOW[1]:g} "
            f"of the {duration_s:.0f} s approval phase"))


def make_plan(seed: int, *, duration_s: float, kills: int, pauses: int, pause_s: float,
              kill_victims: list[str], pause_victims: list[str], cluster: bool = False,
              partitions: int = 3, cuts: int = 0, cut_s: float = 0.0,
              cut_victims: list[str] | None = None, within: bool = False,
              refuse: bool = False) -> list[Fault]:
    """The faults of one run, in time order (see the module's rules; ``within`` and
    ``refuse``: rule 5)."""
    rng = random.Random(seed)
    drawn = sorted((rng.uniform(*WINDOW) * duration_s, rng.choice(kill_victims))
                   for _ in range(kills)) if kill_victims else []
    faults = [Fault(at, "kill", victim, rng.uniform(0.5, 3.0)) for at, victim in drawn]
    busy: dict[str, list[tuple[float, float]]] = {}
    for f in faults:
        busy.setdefault(f.process, []).append((f.at_s, f.at_s + f.down_s + RECOVER_S))
    bounds = (WINDOW[0] * duration_s, WINDOW[1] * duration_s) if within else None
    late: list[Fault] = []
    faults += _placed(rng, "pause", pauses, pause_s, pause_victims, busy, duration_s, bounds,
                      late)
    faults.sort(key=lambda f: f.at_s)
    if cluster:
        faults = [Fault(f.at_s, f.action, f.process, f.down_s, _role(rng, partitions))
                  if f.process == BROKER else f for f in faults]
    assert BROKER not in (cut_victims or [])
    faults += _placed(rng, "cut", cuts, cut_s, cut_victims or [], busy, duration_s, bounds,
                      late)
    faults.sort(key=lambda f: f.at_s)
    if late and refuse:
        raise PlanDoesNotFit(late, duration_s)
    return faults


def _placed(rng: random.Random, action: str, count: int, length: float, victims: list[str],
            busy: dict[str, list[tuple[float, float]]], duration_s: float,
            bounds: tuple[float, float] | None = None,
            late: list[Fault] | None = None) -> list[Fault]:
    """``count`` faults of ``length`` seconds, each at a moment and on a victim free for it
    (pauses and cuts: rule 2; ``bounds``: rule 5, ``late`` takes those that find no start
    inside); ``busy`` takes them in."""
    placed = []
    for _ in range(count if victims else 0):
        at = rng.uniform(*WINDOW) * duration_s
        victim = rng.choice(victims)
        at, victim = _free_slot(rng, at, victim, length, victims, busy)
        if bounds is not None and at > bounds[1]:
            inside = _first_free_slot(rng, length, victims, busy, bounds)
            if inside is None and late is not None:
                late.append(Fault(at, action, victim, length))
            at, victim = inside or (at, victim)
        busy.setdefault(victim, []).append((at, at + length + RECOVER_S))
        placed.append(Fault(at, action, victim, length))
    return placed


def _free(busy: dict[str, list[tuple[float, float]]], victim: str, at: float,
          length: float) -> bool:
    """Whether ``victim`` and its group are free from ``at`` for ``length`` + RECOVER_S."""
    return all(at + length + RECOVER_S <= start or at >= end
               for other in busy if _group(other) == _group(victim)
               for start, end in busy[other])


def _free_slot(rng: random.Random, at: float, victim: str, length: float,
               victims: list[str], busy: dict[str, list[tuple[float, float]]]
               ) -> tuple[float, str]:
    """``(at, victim)`` if free for ``length`` seconds; else another free victim, else later."""
    while True:
        if _free(busy, victim, at, length):
            return at, victim
        others = [v for v in victims if _free(busy, v, at, length)]
        if others:
            return at, rng.choice(others)
        at = min(end for windows in busy.values() for _start, end in windows if end > at)


def _first_free_slot(rng: random.Random, length: float, victims: list[str],
                     busy: dict[str, list[tuple[float, float]]],
                     bounds: tuple[float, float]) -> tuple[float, str] | None:
    """The earliest start inside ``bounds`` with a free victim (a random one of those free
    then), None if there is none: a start is free from the bound or from a window's end."""
    starts = sorted({bounds[0], *(end for windows in busy.values() for _s, end in windows
                                  if bounds[0] < end <= bounds[1])})
    for at in starts:
        free = [v for v in victims if _free(busy, v, at, length)]
        if free:
            return at, rng.choice(free)
    return None


def victim_of(process: str) -> str:
    """The plan's name of a victim: every broker node is :data:`BROKER`."""
    return BROKER if process.startswith(BROKER) else process


def out_together(action: str, process: str, other_action: str, other_process: str) -> bool:
    """Whether these two faults must not overlap (each with its length + RECOVER_S): the same
    victim (any two broker nodes count as one), or two workers when either is a pause or a
    cut (the paused or cut-off worker's partitions need a live worker to go to). Two kills of
    different workers may overlap, as kills were always drawn."""
    victim, other = victim_of(process), victim_of(other_process)
    if victim == other:
        return True
    return _group(victim) == _group(other) and not action == other_action == "kill"


def _group(victim: str) -> str:
    """Victims that must not be out together: the workers; otherwise each on its own."""
    return "worker" if victim.startswith("worker") else victim


def _role(rng: random.Random, partitions: int) -> str:
    role = rng.choice(BROKER_ROLES)
    return f"{role}:{rng.randrange(partitions)}" if role.endswith("leader") else role
