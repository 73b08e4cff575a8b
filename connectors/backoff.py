"""Capped exponential backoff with full jitter, reset by progress.

``next()`` returns the delay before the next resubscribe: a uniform draw in
``[initial/2, min(cap, initial * 2**attempt)]`` — jitter keeps a fleet of connectors
from hammering Salesforce in step after an outage. ``reset()`` after a subscription made
progress (a committed batch or a keepalive), so one blip doesn't inflate the next wait.
Long waits for limit errors come from the error's ``retry_after`` and bypass this.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    initial_s: float = 0.5
    cap_s: float = 30.0
    attempt: int = 0
    rng: random.Random = field(default_factory=random.Random)

    def ceiling(self) -> float:
        return min(self.cap_s, self.initial_s * (2 ** self.attempt))

    def next(self) -> float:
        high = self.ceiling()
        self.attempt = min(self.attempt + 1, 32)
        return self.rng.uniform(min(self.initial_s / 2, high), high)

    def reset(self) -> None:
        self.attempt = 0
