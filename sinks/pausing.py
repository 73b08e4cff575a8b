"""Why the sink's consumption is paused, and until when.

Reasons: ``REQUEST_LIMIT_EXCEEDED`` and ``SALESFORCE_UNAVAILABLE`` carry a resume-at time
(monotonic) before which no Salesforce call is made at all; ``BACKPRESSURE`` lasts until
the unacknowledged outcomes fall to half of ``SINK_MAX_PENDING``. Consumption is paused
while any reason holds. A limit/outage pause whose time ran out is lifted by the next
successful flush (the requeued batch is the probe), or at once when nothing is left to
probe with. Pausing never stops polling: the loop keeps calling ``consume`` so the group
membership (``max.poll.interval.ms``) survives a pause of any length.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from sinks import metrics as m

log = logging.getLogger(__name__)
LIMIT = "REQUEST_LIMIT_EXCEEDED"
OUTAGE = "SALESFORCE_UNAVAILABLE"
BACKPRESSURE = "BACKPRESSURE"
TIMED = (LIMIT, OUTAGE)


class Pauses:
    def __init__(self, on_change: Callable[[bool], None]) -> None:
        self.reasons: dict[str, float] = {}
        self.paused = False
        self._on_change = on_change

    def pause(self, reason: str, until: float = 0.0) -> None:
        if reason not in self.reasons:
            m.PAUSES.labels(reason).inc()
        self.reasons[reason] = until
        self._apply()

    def lift(self, *reasons: str) -> None:
        for reason in reasons:
            self.reasons.pop(reason, None)
        self._apply()

    def blocked(self, now: float) -> bool:
        """True while a limit or outage backoff has not run out: make no call."""
        return self.resume_at(now) > now

    def resume_at(self, now: float) -> float:
        return max([now] + [self.reasons[r] for r in TIMED if r in self.reasons])

    def expire(self, now: float, *, backpressure_over: bool, can_probe: bool) -> None:
        if BACKPRESSURE in self.reasons and backpressure_over:
            del self.reasons[BACKPRESSURE]
        if not can_probe:
            for reason in TIMED:
                if reason in self.reasons and self.reasons[reason] <= now:
                    del self.reasons[reason]
        self._apply()

    def _apply(self) -> None:
        want = bool(self.reasons)
        if want == self.paused:
            return
        self.paused = want
        m.PAUSED.set(1 if want else 0)
        self._on_change(want)
        log.info("consumption %s", "paused" if want else "resumed",
                 extra={"cause": ",".join(self.reasons) or None})

    def snapshot(self, now: float) -> dict[str, Any]:
        return {"paused": self.paused,
                "pause_reasons": {r: round(max(0.0, t - now), 1) for r, t in self.reasons.items()}}
