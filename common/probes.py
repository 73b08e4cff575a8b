"""Liveness and readiness: the two questions an orchestrator asks, answered apart.

* ``/livez`` — *is the process and its loop alive?* The only failure a restart cures. A
  process that waits for WHMCS to accept its credentials again, or for Salesforce's API
  limit to reset, is alive: restarting it would only lose its place.
* ``/readyz`` — *can it do work now?* The broker, Salesforce and WHMCS reachable and
  accepting. 503 names each reason (``reasons``) so an operator knows what to fix.
* ``/healthz`` — an alias of ``/readyz`` (``make up`` and older probes use it).

Each process builds its readiness from named :data:`Check` s (:func:`readiness`) and its
liveness from a :class:`Heartbeat` beaten by the loop that does its work (the worker's
asyncio loop: :meth:`Heartbeat.install_on`; the sink's poll loop) or from facts its loop
keeps up to date (the connector, :func:`connector_liveness`). Both answer as readiness does:
``reasons`` (one ``"name: why"`` per failing check; the liveness check is ``loop``),
``checks``, then the details.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

#: (name, ok, why not) — one thing a process needs to do work now
Check = tuple[str, bool, str]
#: a probe: (ok, JSON-able details)
Probe = Callable[[], tuple[bool, dict[str, Any]]]
#: a loop that did not beat for this long is wedged (GC pauses and slow batches are far
#: shorter; an orchestrator's failureThreshold adds its own patience on top)
LIVENESS_SILENCE_S = 60.0
#: the longest the connector's Kafka work between a backoff and its next subscription takes
#: when every call times out: a reopen (init_transactions 30 s, the position read 60 s) and
#: two transactional writes (a held keepalive position, the LATEST marker: about 85 s each
#: with the brokers cut, connectors.writer); /livez counts that as work, not as a wedge
RESUBSCRIBE_MAX_S = 300.0
#: Salesforce or WHMCS failing for this long makes a process not ready (a single failed call
#: is retried and is no reason to report it)
READY_GRACE_S = 60.0


def readiness(checks: list[Check], details: dict[str, Any] | None = None
              ) -> tuple[bool, dict[str, Any]]:
    """Ready when every check passes; ``reasons`` lists ``"name: why"`` for each that fails."""
    reasons = [f"{name}: {why}" for name, ok, why in checks if not ok]
    return not reasons, {"reasons": reasons,
                         "checks": {name: ok for name, ok, _ in checks}, **(details or {})}


def liveness(checks: list[Check], details: dict[str, Any] | None = None
             ) -> tuple[bool, dict[str, Any]]:
    """Live when every check passes, answered as :func:`readiness` answers: ``reasons``
    (``"name: why"`` per failing check, empty when live), ``checks``, then ``details``."""
    return readiness(checks, details)


def failing_for(since: float | None, grace_s: float = READY_GRACE_S,
                now: float | None = None) -> bool:
    """True when a failure that started at ``since`` (wall clock) has lasted ``grace_s``."""
    return since is not None and (now or time.time()) - since >= grace_s


class Heartbeat:
    """Beaten by the loop it watches; silent for ``max_silence_s`` → not live."""

    def __init__(self, max_silence_s: float = LIVENESS_SILENCE_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_silence_s = max_silence_s
        self._clock = clock
        self.last_beat = clock()

    def beat(self) -> None:
        self.last_beat = self._clock()

    def check(self) -> tuple[bool, dict[str, Any]]:
        silence = self._clock() - self.last_beat
        return loop_liveness(silence, self.max_silence_s)

    def install_on(self, loop: asyncio.AbstractEventLoop, interval_s: float = 1.0) -> None:
        """Beat from ``loop`` every ``interval_s`` once it runs: a loop blocked by a
        synchronous call (or one that stopped) stops beating."""
        def tick() -> None:
            self.beat()
            loop.call_later(interval_s, tick)
        loop.call_soon_threadsafe(tick)


def loop_liveness(silence_s: float, max_silence_s: float = LIVENESS_SILENCE_S,
                  what: str = "event loop") -> tuple[bool, dict[str, Any]]:
    """The liveness of a loop that last beat ``silence_s`` ago: one check, ``loop``."""
    ok = silence_s < max_silence_s
    return liveness([("loop", ok, f"{what} silent for {silence_s:.0f} s (max "
                                  f"{max_silence_s:g} s): wedged")],
                    {"loop_silent_s": round(silence_s, 1), "max_silence_s": max_silence_s})


def connector_liveness(state: str, seconds_since_response: float, overdue_s: float,
                       stall_timeout_s: float) -> tuple[bool, dict[str, Any]]:
    """The connector's main loop is alive when what it is doing cannot have lasted this long
    without its own watchdog stepping in: subscribed and silent past the stall timeout (the
    watchdog resubscribes at that point), waiting past the end of its backoff, or doing the
    Kafka work before a subscription (``resubscribing``: a reopen, a held keepalive position
    or the LATEST marker written) past :data:`RESUBSCRIBE_MAX_S`."""
    margin = LIVENESS_SILENCE_S
    if state in ("stopped", "fenced", "failed"):
        ok, why = False, f"connector {state}"
    elif state == "subscribed":
        ok = seconds_since_response < stall_timeout_s + margin
        why = "" if ok else (f"no response handled for {seconds_since_response:.0f} s, past "
                             f"the stall timeout ({stall_timeout_s:g} s): main loop wedged")
    elif state in ("backoff", "limited"):
        ok = overdue_s < margin  # overdue_s: how long ago the backoff ended
        why = "" if ok else "backoff ended long ago and no new subscription: main loop wedged"
    elif state == "resubscribing":  # overdue_s: how long ago it began
        ok = overdue_s < RESUBSCRIBE_MAX_S
        why = "" if ok else (f"resubscribing for {overdue_s:.0f} s (the Kafka work before a "
                             f"subscription ends within {RESUBSCRIBE_MAX_S:g} s): main loop "
                             "wedged")
    else:  # starting: bounded by the Kafka client timeouts
        ok, why = True, ""
    # "reason" as well: what this probe answered before it had "reasons"
    return liveness([("loop", ok, why)], {"state": state, **({"reason": why} if why else {})})
