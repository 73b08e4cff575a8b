"""Which events a process holds unfinished, and how old the oldest one is.

The interface is three calls, so any flow can feed it (the worker's batches today, per-Order
lanes tomorrow): :meth:`InFlight.started` when an event is taken, :meth:`InFlight.finished`
once its outcome is acknowledged and its offset may be committed, and
:meth:`InFlight.oldest_unfinished_age` for the gauge. An event's age counts from when it was
written to Kafka (the record's timestamp), so an event that waited in the topic before it
was taken is not younger than it is.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable


class InFlight:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._since: dict[Hashable, float] = {}

    def started(self, key: Hashable, since: float | None = None) -> None:
        """``key`` (e.g. ``(partition, offset)``) is being worked on; ``since``: when the event
        entered Kafka (wall clock, seconds), default now. A second start keeps the first."""
        now = self._clock()
        when = since if since and since <= now else now
        self._since.setdefault(key, when)

    def finished(self, key: Hashable) -> None:
        self._since.pop(key, None)

    def forget_all(self) -> None:
        """Nothing is held any more (e.g. the partitions were revoked)."""
        self._since.clear()

    def __len__(self) -> int:
        return len(self._since)

    def oldest_unfinished_age(self) -> float | None:
        """Seconds since the oldest unfinished event entered Kafka; None when none is held."""
        if not self._since:
            return None
        try:
            oldest = min(self._since.values())
        except (ValueError, RuntimeError):  # changed by the loop while the scrape thread looked
            return None
        return max(0.0, self._clock() - oldest)
