"""One backoff for every retry loop: capped exponential delays with jitter.

``Backoff(initial_s, max_s)``: the n-th delay's ceiling is ``initial_s · factor^(n-1)``,
capped at ``max_s``; with ``jitter`` the delay is drawn uniformly between half of
``initial_s`` and that ceiling, so a fleet of clients that failed together does not retry
together. ``reset()`` after progress, so one blip does not inflate the next wait.
:func:`retry_forever` is the loop for work that must not be given up (Kafka sends of decided
outcomes). Waits a service asks for (``retry_after``) come from the error, not from here.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")
_RNG = random.Random()  # one, seeded once: seeding a Random per Backoff cost the worker 1 %


def retry_after_seconds(value: str | None) -> float | None:
    """A ``Retry-After`` header in seconds: a finite, non-negative number, else None (its
    HTTP-date form is not used by the services here). For the WHMCS and Salesforce clients."""
    if not value:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if 0 <= seconds < float("inf") else None  # nan fails both


class Backoff:
    def __init__(self, initial_s: float = 0.5, max_s: float = 30.0, *, factor: float = 2.0,
                 jitter: bool = True, rng: random.Random | None = None) -> None:
        if initial_s <= 0 or max_s < initial_s or factor < 1:
            raise ValueError("need 0 < initial_s <= max_s and factor >= 1")
        self.initial_s, self.max_s, self.factor = initial_s, max_s, factor
        self.jitter, self.rng = jitter, rng or _RNG
        self.attempt = 0  # delays handed out since the last reset

    def ceiling(self, attempt: int | None = None) -> float:
        """The longest delay of ``attempt`` (default: the next one), without jitter."""
        n = self.attempt if attempt is None else attempt
        return min(self.max_s, self.initial_s * self.factor ** min(n, 64))

    def next_delay(self) -> float:
        """The delay to wait now; the following one grows (up to ``max_s``)."""
        high = self.ceiling()
        self.attempt += 1
        return self.rng.uniform(min(self.initial_s / 2, high), high) if self.jitter else high

    next = next_delay

    def reset(self) -> None:
        self.attempt = 0


async def retry_forever(what: str, fn: Callable[[], Awaitable[T]], *,
                        backoff: Backoff | None = None,
                        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
                        on_retry: Callable[[BaseException], None] | None = None) -> T:
    """Await ``fn()`` until it succeeds; every failure is logged and waited out."""
    backoff = backoff or Backoff(0.2, 10.0)
    while True:
        try:
            return await fn()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - logged, retried
            log.warning("%s failed; retrying", what, extra={"cause": repr(exc)})
            if on_retry is not None:
                on_retry(exc)
            await sleep(backoff.next_delay())
