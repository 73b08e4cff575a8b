"""The lease clock: the one clock every instant of the worker's ownership lease is read on.

The lease (:mod:`streams.lease`) lasts until the send time of the last heartbeat the group
coordinator accepted plus the session timeout, less a margin; the coordinator counts that
session on its own clock, which runs on while this host is suspended (S3 suspend, S4
hibernate). ``time.monotonic`` (CLOCK_MONOTONIC) stops while the host is suspended: a worker
that wakes after a suspend longer than its session would still find its lease valid and could
send an ``AddOrder`` while the partition's new owner provisions the same Order. On Linux
this clock is CLOCK_BOOTTIME — CLOCK_MONOTONIC plus the time suspended (``man 2
clock_gettime``); where there is no CLOCK_BOOTTIME, ``time.monotonic`` (which may not
count a suspend there).

Everything compared with a lease's instants uses it: the heartbeat and SyncGroup send times
(:mod:`streams.faust_seam.membership`), :class:`streams.lease.OwnershipLease`, the intent
fence's send deadline (:meth:`streams.lease.IntentLease.fence`), and the checks of that
deadline in :meth:`common.whmcs.WhmcsClient.call` and
:meth:`common.http_transport.Http11Transport.exchange`. So does the connector's age of an
open transaction (:class:`connectors.writer.TransactionalWriter`), which is set against the
broker's timeout of that transaction, counted on the broker's clock.

What no local clock can see: a hypervisor that freezes the guest and stops its clocks too
(they resume where they stopped); only the compensation is left against that (README, *The
ownership lease*).
"""

from __future__ import annotations

import time

__all__ = ["lease_clock"]

if hasattr(time, "CLOCK_BOOTTIME"):
    _BOOTTIME = time.CLOCK_BOOTTIME

    def lease_clock() -> float:
        """Seconds on CLOCK_BOOTTIME: monotonic, and counting the time suspended."""
        return time.clock_gettime(_BOOTTIME)
else:  # pragma: no cover - not Linux
    def lease_clock() -> float:
        """Seconds on ``time.monotonic`` (no CLOCK_BOOTTIME on this platform)."""
        return time.monotonic()
