"""One backoff for every retry loop: capped exponential delays with jitter.

``Backoff(initial_s, max_s)`` hands out ``initial_s``, twice that, ... up to ``max_s``; with
``jitter`` each delay is drawn from its upper half (half to all of it), so many clients
that failed together do not retry together. :func:`retry_forever` is the loop for work that
must not be given up (Kafka sends of decided outcomes).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


class Backoff:
    def __init__(self, initial_s: float, max_s: float, *, factor: float = 2.0,
                 jitter: bool = True, rng: Callable[[], float] = random.random) -> None:
        if initial_s <= 0 or max_s < initial_s or factor < 1:
            raise ValueError("need 0 < initial_s <= max_s and factor >= 1")
        self.initial_s, self.max_s, self.factor = initial_s, max_s, factor
        self.jitter, self._rng = jitter, rng
        self._next = initial_s

    def next_delay(self) -> float:
        """The delay to wait now; the following one grows (up to ``max_s``)."""
        delay = self._next
        self._next = min(self._next * self.factor, self.max_s)
        return delay * (0.5 + self._rng() / 2) if self.jitter else delay

    def peek(self) -> float:
        """The next delay without jitter, without consuming it."""
        return self._next

    def reset(self) -> None:
        self._next = self.initial_s


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
