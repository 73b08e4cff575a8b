"""The guard's verdict on an Order, read again right before its ``AddOrder`` once stale
(:class:`GuardCheck`), for :meth:`streams.provision.Provisioner._call`: behind a backlog and
a slow WHMCS an ``AddOrder`` can come minutes after the read its decision went on, and an
Order set back from ``Activating`` meanwhile must not be created in WHMCS."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from common.clock import lease_clock

if TYPE_CHECKING:
    from streams.provision import ProvisionResult

__all__ = ["GUARD_SLOT_READ_S", "GuardCheck", "GuardRefused", "retrieved"]


#: how long an ``AddOrder`` holding a WHMCS slot waits for its guard's verdict read once more
#: (:meth:`Provisioner._call`) before it gives the slot back to wait for it
GUARD_SLOT_READ_S = 1.0


def retrieved(task: asyncio.Future[Any]) -> None:
    """A read left running (its waiter gave up or was cancelled): its failure is not lost."""
    if not task.cancelled():
        task.exception()


class GuardRefused(Exception):
    """The guard, read again right before an ``AddOrder``, refuses it: ``result`` is what
    the provisioning ends with instead (no ``AddOrder``)."""

    def __init__(self, result: ProvisionResult) -> None:
        super().__init__(result.error_message or result.status)
        self.result = result


class GuardCheck:
    """The guard's verdict on one provisioning's Order, and how fresh it is. Asked right
    before each ``AddOrder`` (:meth:`Provisioner.provision`), it is read again first when
    stale: older than ``max_age_s`` (0: read again before every ``AddOrder``), or read
    before a wait that began since (:meth:`waiting`: a settle wait, a retry's backoff,
    refused WHMCS access, a wait for the ownership lease).

    ``read``: reads it again — the refusal to end with, or None to go on (the handler's
    coalescing :class:`~streams.guard.GuardReads`: concurrent reads share one query);
    ``read_at``: when the verdict at hand was asked for (``clock`` seconds, no later than
    its query left); ``refused``: that verdict. ``clock``: the lease clock
    (:func:`common.clock.lease_clock`, CLOCK_BOOTTIME), which counts a host suspend: a
    verdict read before a suspend longer than the max age is read again before the
    ``AddOrder`` (``time.monotonic`` stops meanwhile, and would not age it).

    It is read where the ``AddOrder`` waits among the next ``AddOrder`` calls, right before
    it takes a WHMCS slot — holding no slot, so a Salesforce slow or down holds back
    ``AddOrder`` calls only — and once more, briefly, when the wait for the slot outlived it
    (:meth:`Provisioner._call`)."""

    def __init__(self, read: Callable[[], Awaitable[ProvisionResult | None]], *,
                 read_at: float, max_age_s: float, refused: ProvisionResult | None = None,
                 clock: Callable[[], float] = lease_clock) -> None:
        self._read, self._clock = read, clock
        self.read_at, self.max_age_s, self.refused = read_at, max_age_s, refused
        self._waits = 0  # waits begun so far
        self._read_after = 0  # of those, the ones the verdict at hand was read after
        self._timed: Callable[[Awaitable[ProvisionResult | None]],
                              Awaitable[ProvisionResult | None]] | None = None

    def timed_by(self, excluding: Callable[[Awaitable[ProvisionResult | None]],
                                           Awaitable[ProvisionResult | None]]) -> None:
        """Each read again is awaited through ``excluding``: the provisioning's run of
        transient WHMCS errors leaves it out (a Salesforce slow or down, its read retried
        for minutes, is not WHMCS being unavailable)."""
        self._timed = excluding

    def waiting(self) -> None:
        """A wait begins: a verdict read before it may be stale once it ends."""
        self._waits += 1

    def _old(self) -> bool:
        return self._clock() - self.read_at > self.max_age_s

    def stale(self) -> bool:
        """Whether the verdict must be read again before it decides an ``AddOrder``."""
        return self._waits != self._read_after or self.max_age_s <= 0 or self._old()

    def outlived(self) -> bool:
        """After the fence, right before the write: whether a wait began since the verdict
        was read (the fence waited for the lease) — then it is read again and the fence
        asked again, so the lease check stays last. Not by age: a read that takes longer
        than the max age (Salesforce slow, a busy linger) would be followed by another for
        ever, the write never sent."""
        return self._waits != self._read_after

    async def _read_again(self) -> None:
        asked_at, waits = self._clock(), self._waits
        read = self._read()
        refused = await (read if self._timed is None else self._timed(read))
        self.refused, self.read_at, self._read_after = refused, asked_at, waits

    async def current(self) -> ProvisionResult | None:
        """The verdict, read again first when stale."""
        if self.stale():
            await self._read_again()
        return self.refused
