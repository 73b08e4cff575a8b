"""Stall watchdog: a worker that owns work but makes no progress for too long re-seeks, then
exits to be restarted.

A worker waiting in a rebalance is not stalled (its events were released at the revoke, and
it reads nothing until the assignment), for up to the rebalance timeout and a margin: the
coordinator may hold it until a dead member's session runs out.

faust-streaming can stop feeding the agent after a rebalance while the process stays up and
heart-beating, so the group never moves its partitions elsewhere (docs/decisions/0001). The
watchdog does not try to understand faust's state. Every ``interval`` without an event
moving it asks the broker (its own confluent-kafka clients, in its own thread, so a blocked
event loop cannot hide a stall) how many committed records lie beyond the group's committed
offsets on the requests partitions this worker owns. Such records wait from the first look
that saw them beyond a committed offset that has not moved since (or from the last event,
when that came later): a record landing after a quiet spell gets the whole ``timeout``,
never an exit at the first look. When they have waited for half of ``timeout`` with no
event in flight, the worker seeks its partitions back to their committed offsets (events
faust fetched and dropped are fetched again); when that does not help either and the whole
``timeout`` has passed, it logs why and exits with :data:`STALL_EXIT_CODE`. Records that
waited the whole ``timeout`` on partitions no member of the group owns make a worker with
nothing of its own waiting exit too (a restart rejoins), once two looks in a row find the
same partitions without an owner in a Stable or Empty group (in a rebalance the broker
describes members without their assignments: it cannot tell).
Exiting is safe — nothing past the committed offsets was committed, a restarted worker
restores its tables from the changelogs, and the events come again — and the supervisor
(``make up``), systemd or Kubernetes restarts it. Events in flight (waiting on Salesforce,
WHMCS or the ownership lease) are progress, not a stall: ``/readyz`` reports why they wait;
so is each retry of a chunk's decode while the schema registry is away (the agent touches
:class:`Progress`: :meth:`streams.app.Worker._registry_failed`).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from common.connection import Connectable
from common.lag import lag_reader, unowned_in

log = logging.getLogger(__name__)
STALL_EXIT_CODE = 75  # EX_TEMPFAIL: restart me


class Progress:
    """What the flow reports: when an event last entered or left, and whether work is in
    flight (``busy``)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.last_activity = clock()
        self.running = 0
        # work in progress that is not a stall (events in the lanes: waiting on WHMCS,
        # Salesforce or the lease is progress, /healthz reports it)
        self.busy: Callable[[], bool] = lambda: False

    def started(self) -> None:
        self.running += 1
        self.last_activity = self._clock()

    def finished(self) -> None:
        self.running = max(0, self.running - 1)
        self.last_activity = self._clock()

    def touch(self) -> None:
        self.last_activity = self._clock()

    def now(self) -> float:
        return self._clock()

    def idle_for(self) -> float:
        if self.running or self.busy():
            return 0.0
        return self._clock() - self.last_activity


def pending_records(rows: list[tuple[int, int, int]], owned: set[int]) -> dict[int, int]:
    """partition → records beyond the committed offset, for the partitions this worker owns."""
    return {p: end - committed for p, committed, end in rows
            if p in owned and end - committed > 0}


def is_stalled(pending: dict[int, int], idle_s: float, timeout_s: float) -> bool:
    return bool(pending) and idle_s >= timeout_s


class Waiting:
    """Since when records have waited on each partition, as the watchdog's looks saw them:
    from the first look that found records beyond a committed offset that has not moved
    since (a partition whose committed offset moves, or that has nothing left, starts
    again)."""

    def __init__(self) -> None:
        self._since: dict[int, tuple[int, float]] = {}  # partition → (committed, since)

    def update(self, pending: dict[int, int], committed: dict[int, int], now: float) -> None:
        since = {}
        for p in pending:
            seen = self._since.get(p)
            since[p] = seen if seen is not None and seen[0] == committed[p] \
                else (committed[p], now)
        self._since = since

    def clear(self) -> None:
        self._since = {}

    def waited(self, partition: int, now: float) -> float:
        seen = self._since.get(partition)
        return 0.0 if seen is None else now - seen[1]


class StallWatchdog:
    def __init__(self, *, lag: Callable[[], list[tuple[int, int, int]]],
                 owned: Callable[[], set[int]], progress: Progress, timeout_s: float,
                 interval_s: float = 10.0,
                 recovery_position: Callable[[], int] | None = None,
                 diagnose: Callable[[], dict[str, Any]] | None = None,
                 reseek: Callable[[], None] | None = None,
                 on_stall: Callable[[str], None] | None = None,
                 orphans: Callable[[set[int]], set[int]] | None = None,
                 rebalancing: Callable[[], bool] | None = None,
                 rebalance_limit_s: float = 0.0) -> None:
        self.lag, self.owned, self.progress = lag, owned, progress
        # a member waiting in a rebalance holds no events and reads none: no stall, for up to
        # ``rebalance_limit_s`` (the coordinator holds JoinGroup until every member rejoined
        # or a dead one's session ran out — past the stall timeout with a long session, and
        # every healthy worker exited to rejoin, a restart loop). Longer, faust's rebalance
        # is wedged: the waits count again.
        self.rebalancing = rebalancing
        self.rebalance_limit_s = rebalance_limit_s
        self._rebalancing_since: float | None = None
        self.recovery_position = recovery_position
        self.diagnose = diagnose
        self.reseek = reseek
        self.reseeked = False
        self._reseek_activity = 0.0
        self.reseeks = 0
        self._last_recovery_position: int | None = None
        self.timeout_s, self.interval_s = timeout_s, interval_s
        self.on_stall = on_stall or _exit
        # of the given partitions, those no member of the group owns (a group whose
        # assignment left partitions out: nobody will ever read them)
        self.orphans = orphans
        # since when records wait (the stall is timed from there, never from before the
        # records came: a record landing after a quiet spell gets the whole timeout)
        self._owned_waiting, self._others_waiting = Waiting(), Waiting()
        self._seen_activity = progress.last_activity
        # the partitions the previous look found without an owner: one answer is not enough
        self._orphaned: set[int] = set()
        self.last_error: str | None = None
        self.stalled_since: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stall-watchdog", daemon=True)

    def start(self) -> StallWatchdog:
        if self.timeout_s > 0:
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def check_once(self) -> str | None:
        """One look. Returns ``None`` (fine), ``"reseek"`` or ``"exit"`` (what it did)."""
        if self.recovery_position is not None:  # a long table restore is progress too
            position = self.recovery_position()
            if position != self._last_recovery_position:
                self._last_recovery_position = position
                self.progress.touch()
        if self.rebalancing is not None and self.rebalancing():
            now = self.progress.now()
            if self._rebalancing_since is None:
                self._rebalancing_since = now
            if now - self._rebalancing_since < self.rebalance_limit_s:
                self._reset()  # waits seen before it start again after it
                return None
        else:
            self._rebalancing_since = None
        if self.reseeked and self.progress.last_activity != self._reseek_activity:
            self.reseeked = False  # events moved since the re-seek: that stall is over
        if self.progress.last_activity != self._seen_activity:  # progress: waits start again
            self._seen_activity = self.progress.last_activity
            self._owned_waiting.clear()
            self._others_waiting.clear()
        idle = self.progress.idle_for()
        first_step = self.timeout_s / 2 if self.reseek is not None else self.timeout_s
        # Cheap case first, no broker round trip: events moved within the last look's
        # interval. Idle longer, it looks at every interval, so that it sees when records
        # start to wait.
        if idle < min(first_step, self.interval_s):
            self._reset()
            return None
        previous, self._orphaned = self._orphaned, set()  # consecutive looks only
        rows = self.lag()
        now = self.progress.now()
        owned = self.owned()
        committed = {p: c for p, c, _e in rows}
        waiting = pending_records(rows, {p for p, _c, _e in rows})
        pending = {p: n for p, n in waiting.items() if p in owned}
        others = {p: n for p, n in waiting.items() if p not in owned}
        self._owned_waiting.update(pending, committed, now)
        self._others_waiting.update(others, committed, now)
        idle = self.progress.idle_for()
        orphaned: dict[int, int] = {}
        if not pending and self.orphans is not None:
            # records that waited the whole timeout on partitions this worker does not own
            due = {p: n for p, n in others.items()
                   if min(idle, self._others_waiting.waited(p, now)) >= self.timeout_s}
            nobodys = self.orphans(set(due)) if due else set()
            orphaned = {p: n for p, n in due.items() if p in nobodys}
        confirmed = {p: n for p, n in orphaned.items() if p in previous}
        self._orphaned = set(orphaned)
        if confirmed:  # twice in a row. No re-seek can help: nobody reads them; a restart rejoins
            waited = max(min(idle, self._others_waiting.waited(p, now)) for p in confirmed)
            self.on_stall(f"{sum(confirmed.values())} records wait on partitions "
                          f"{sorted(confirmed)} that no member of the group owns (this "
                          f"worker owns {sorted(owned) or 'none'}) and have waited for "
                          f"{waited:.0f} s with no event moving (WORKER_STALL_TIMEOUT_S="
                          f"{self.timeout_s:g}); state {self._state()}")
            return "exit"
        waited = max((self._owned_waiting.waited(p, now) for p in pending), default=0.0)
        stalled_for = min(idle, waited)
        if not is_stalled(pending, stalled_for, first_step):
            self._reset(keep_waiting=True)
            return None
        self.stalled_since = self.stalled_since or time.time()
        what = (f"{sum(pending.values())} records wait on owned partitions {sorted(pending)} "
                f"and have waited for {stalled_for:.0f} s with no event moving")
        if stalled_for < self.timeout_s:
            if self.reseek is None or self.reseeked:
                return None
            # Records fetched and then dropped inside faust leave the fetch position past
            # them; seeking every partition back to its committed offset fetches them again
            # (safe: a redelivered event is recognised by the tables).
            self.reseeked = True
            self._reseek_activity = self.progress.last_activity
            self.reseeks += 1
            log.warning("worker stalled: %s; seeking back to the committed offsets (%s)",
                        what, self._state())
            self.reseek()
            return "reseek"
        self.on_stall(f"{what} (WORKER_STALL_TIMEOUT_S={self.timeout_s:g}); "
                      f"state {self._state()}")
        return "exit"

    def _reset(self, *, keep_waiting: bool = False) -> None:
        self.stalled_since = None
        self.reseeked = False
        if not keep_waiting:
            self._owned_waiting.clear()
            self._others_waiting.clear()
            self._orphaned = set()

    def _state(self) -> str:
        if self.diagnose is None:
            return "{}"
        try:
            return str(self.diagnose())
        except Exception as exc:  # noqa: BLE001 - diagnostics only
            return f"unavailable ({exc!r})"

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.check_once()
                self.last_error = None
            except Exception as exc:  # noqa: BLE001 - a broker hiccup must not kill the check
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("stall watchdog: cannot read the group's lag: %s", self.last_error)


def broker_lag(bootstrap: Connectable, group: str,
               topic: str) -> Callable[[], list[tuple[int, int, int]]]:
    """A lag reader with its own clients (never the worker's faust consumer);
    ``bootstrap``: the worker's KafkaConnection (or a plaintext address)."""
    return lag_reader(bootstrap, group, topic)  # type: ignore[no-any-return]


def _exit(reason: str) -> Any:
    try:  # mode's worker writes every asyncio task's stack on SIGUSR1: the stall's evidence
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(2.0)
    except Exception:  # noqa: BLE001,S110 - best effort before exiting
        pass
    exit_to_rejoin(f"worker stalled: {reason}")


def exit_to_rejoin(message: str) -> Any:
    """Log ``message`` at CRITICAL and exit with :data:`STALL_EXIT_CODE`, at once: the
    supervisor restarts the worker, which joins its group again."""
    log.critical("%s; exiting with %d so a restart rejoins the group (nothing past the "
                 "committed offsets was acknowledged)", message, STALL_EXIT_CODE)
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stderr.flush()
    os._exit(STALL_EXIT_CODE)


def unowned(bootstrap: Connectable, group: str, topic: str, partitions: set[int]) -> set[int]:
    """Of ``partitions``, those no member of ``group`` owns: the group described by a child
    process (:func:`common.group_describe.describe_group_isolated`; in this process,
    librdkafka#4605 aborted the worker on a coordinator's failover, decision 0008), for up
    to 10 s."""
    from common.connection import as_connection
    from common.group_describe import describe_group_isolated

    return unowned_in(describe_group_isolated(as_connection(bootstrap), group, timeout_s=10.0),
                      topic, partitions)
