"""Waits that are not WHMCS being unavailable, and calls that never left (a review of the
provisioner's retry deadline, its ``attempts`` and the guard's clock).

* ``WORKER_RETRY_DEADLINE_S`` bounds a run of transient WHMCS errors: it starts at the first
  of them, not when the provisioning started — a wait for the ownership lease, for refused
  WHMCS access (no deadline: nothing is failed), for a slot or a settle moment before it does
  not count; nor does one during the run (left out, the run goes on). The deadline still
  bounds a run of unanswered ``AddOrder`` calls with lookups (or refusals) in between.
* ``attempts`` counts the ``AddOrder`` calls made: one of which nothing was written (its send
  deadline passed, ``WhmcsNotSentError``; no connection, the client never reported a write)
  is not one.
* The guard's max age is measured on the lease clock (CLOCK_BOOTTIME): after a host suspend
  longer than it the verdict is read again before the ``AddOrder``.

Fake WHMCS and Salesforce, no broker."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import pytest

from common.clock import lease_clock
from common.errors import (
    WhmcsAccessError,
    WhmcsNotSentError,
    WhmcsTransientError,
    WhmcsUnknownResultError,
)
from common.whmcs import AddOrderResult
from streams import provision
from streams.guard_check import GuardCheck
from streams.mapping import WhmcsItem, WhmcsOrderRequest
from streams.provision import Provisioner, ProvisionResult
from tests.streams.factories import policy, request_value
from tests.streams.flowkit import Kit, records
from tests.streams.test_guard_freshness import SF, WH, A, outcomes

REQ = WhmcsOrderRequest(order_id=A, client_id=1,
                        items=(WhmcsItem(pid=1, billingcycle="monthly", qty=1),), notes="x")

# short enough that a lookup's settle wait (timeout + grace) is brief
FAST = dict(whmcs_timeout_s=0.05, lookup_grace_s=0.01, backoff_initial_s=0.01,
            backoff_max_s=0.02)


def unreachable() -> WhmcsTransientError:
    return WhmcsTransientError("AddOrder: WHMCS unreachable", action="AddOrder")


def refused() -> WhmcsAccessError:
    return WhmcsAccessError("Authentication Failed", action="AddOrder")


def not_sent() -> WhmcsNotSentError:
    return WhmcsNotSentError("AddOrder: not sent, its send deadline had passed",
                             action="AddOrder")


class Scripted:
    """WHMCS whose ``AddOrder`` calls meet ``script`` in turn (an exception raised, None:
    created); ``reports_writes``: it tells when a request is written (``on_write``), as
    :class:`common.whmcs.WhmcsClient` does — ``written[i]``: whether the i-th call wrote."""

    def __init__(self, script: list[Exception | None], *, reports_writes: bool = False,
                 written: list[bool] | None = None) -> None:
        self.script, self.reports_writes = list(script), reports_writes
        self.written = list(written or [])
        self.calls: list[str] = []

    async def add_order(self, params: Any, send_deadline: float | None = None,
                        on_write: Any = None) -> AddOrderResult:
        self.calls.append("AddOrder")
        wrote = self.written.pop(0) if self.written else True
        if wrote and on_write is not None:
            on_write()
        step = self.script.pop(0) if self.script else None
        if step is not None:
            raise step
        return AddOrderResult(order_id=7, service_ids=[1], addon_ids=[], invoice_id=None)

    async def accept_order(self, oid: int, autosetup: bool = True,
                           send_deadline: float | None = None, on_write: Any = None) -> None:
        self.calls.append("AcceptOrder")

    async def get_order(self, oid: int) -> None:
        return None

    async def find_orders_by_marker(self, client: int, order_id: str) -> list[Any]:
        self.calls.append("GetOrders")
        return []


async def real_sleep(seconds: float) -> None:
    await asyncio.sleep(seconds)


# -- 1. the retry deadline starts at the first transient error of a run ----------------------

def test_a_lease_wait_longer_than_the_retry_deadline_then_one_transient_error_provisions():
    """The fence waited 0.5 s for the ownership lease (retry deadline 0.3 s), then WHMCS
    failed once: it is retried, not Failed(WHMCS_UNAVAILABLE, 'unavailable for 0s')."""
    wh = Scripted([unreachable()])
    first = True

    async def fence(action: str, *, queued: bool = False) -> None:
        nonlocal first
        if first and not queued:
            first = False
            await asyncio.sleep(0.5)  # waiting for the lease (a broker cut, healed)
        return None

    async def go() -> ProvisionResult:
        prov = Provisioner(wh, policy(retry_deadline_s=0.3, **FAST))  # type: ignore[arg-type]
        return await prov.provision(REQ, fence=fence)
    res = asyncio.run(go())
    assert (res.status, res.error_code, res.error_message) == ("Provisioned", None, None)
    # the first AddOrder may have landed (no client that tells): looked up, then made again
    assert wh.calls == ["AddOrder", "GetOrders", "AddOrder", "AcceptOrder"]
    assert res.attempts == 2


def test_a_lease_wait_during_a_run_of_transient_errors_does_not_count():
    """WHMCS failed, then the fence before the retry waited 0.5 s for the lease (retry
    deadline 0.3 s), then WHMCS failed again: that wait was not WHMCS unavailable."""
    wh = Scripted([unreachable(), unreachable()])
    in_slot = 0

    async def fence(action: str, *, queued: bool = False) -> None:
        nonlocal in_slot
        if not queued:
            in_slot += 1
            if in_slot == 2:
                await asyncio.sleep(0.5)  # the lease unconfirmed a while, then back
        return None

    async def go() -> ProvisionResult:
        prov = Provisioner(wh, policy(retry_deadline_s=0.3, **FAST))  # type: ignore[arg-type]
        return await prov.provision(REQ, fence=fence)
    res = asyncio.run(go())
    assert (res.status, res.error_code) == ("Provisioned", None), res.error_message
    assert res.attempts == 3


def _with_access_waits_of_0_1_s(wh: Scripted) -> ProvisionResult:
    """``wh`` provisioned against a 0.3-s retry deadline, each backoff sleeping 0.1 s (four
    refusals: longer than the deadline)."""
    async def sleep(_s: float) -> None:
        await asyncio.sleep(0.1)

    async def go() -> ProvisionResult:
        prov = Provisioner(wh, policy(retry_deadline_s=0.3, **FAST),  # type: ignore[arg-type]
                           sleep=sleep)
        return await prov.provision(REQ)
    return asyncio.run(go())


def test_a_wait_on_refused_access_longer_than_the_deadline_then_one_transient_error_provisions():
    """WHMCS refused our credentials four times (~0.4 s: Orders wait, nothing is failed),
    then, fixed, failed once: retried, not failed for the time access was refused."""
    res = _with_access_waits_of_0_1_s(Scripted([refused()] * 4 + [unreachable()]))
    assert (res.status, res.error_code) == ("Provisioned", None), res.error_message
    assert res.attempts == 2  # the refused ones are not attempts; the unanswered one is


def test_a_wait_on_refused_access_during_a_run_is_not_counted():
    """A transient error, then refused access for longer than the deadline, then another
    transient error: the refused wait is left out of the run, which goes on — retried, not
    failed for the time access was refused."""
    res = _with_access_waits_of_0_1_s(
        Scripted([unreachable()] + [refused()] * 4 + [unreachable()]))
    assert (res.status, res.error_code) == ("Provisioned", None), res.error_message


def test_refusals_between_transient_errors_do_not_restart_the_deadline(monkeypatch):
    """WHMCS alternates refused access and 503s (a proxy in trouble): the refusals' waits
    are left out, but do not end the run — the transient errors' own time reaches the
    deadline and the Order ends Failed(WHMCS_UNAVAILABLE), not retried for ever holding its
    lane and its partition's commit point (a regression review of the first version, which
    ended the run at each refusal: 215 AddOrders in 3 s against a 0.3-s deadline)."""
    monkeypatch.setattr(provision, "ACCESS_BACKOFF_MAX_S", 0.02)
    wh = Scripted([refused(), unreachable()] * 200)

    async def go() -> ProvisionResult:
        prov = Provisioner(wh, policy(retry_deadline_s=0.3, **FAST))  # type: ignore[arg-type]
        return await asyncio.wait_for(prov.provision(REQ), 3.0)
    res = asyncio.run(go())
    assert (res.status, res.error_code) == ("Failed", "WHMCS_UNAVAILABLE"), res.error_message
    assert wh.script, "every scripted answer used: the deadline never came"


def test_the_deadline_still_bounds_unanswered_addorders_between_lookups_that_answer():
    """Every AddOrder goes unanswered, every lookup between them answers (none found): the
    lookups do not restart the deadline — the Order ends Failed(WHMCS_UNAVAILABLE), saying
    for how long WHMCS was unavailable, with may_exist set."""
    unanswered = [WhmcsUnknownResultError("AddOrder: no answer after sending",
                                          action="AddOrder") for _ in range(200)]
    wh = Scripted(unanswered)

    async def go() -> tuple[ProvisionResult, float]:
        prov = Provisioner(wh, policy(retry_deadline_s=0.3, **FAST))  # type: ignore[arg-type]
        started = time.monotonic()
        res = await prov.provision(REQ)
        return res, time.monotonic() - started
    res, took = asyncio.run(go())
    assert (res.status, res.error_code, res.may_exist) == ("Failed", "WHMCS_UNAVAILABLE", True)
    assert took < 2.0
    assert "GetOrders" in wh.calls and res.attempts == wh.calls.count("AddOrder") >= 2
    assert re.match(r"WHMCS unavailable for \d+s \(retry deadline 0s\): AddOrder: no answer",
                    res.error_message or ""), res.error_message


# -- 2. an AddOrder of which nothing was written is not an attempt ---------------------------

def test_a_not_sent_addorder_then_the_guard_refusing_counts_no_attempt():
    """The send deadline passed before the AddOrder was written (WhmcsNotSentError); the
    guard, read again after the retry's wait, refuses: Skipped with attempts 0."""
    wh = Scripted([not_sent()])
    reads = 0

    async def read() -> ProvisionResult:
        nonlocal reads
        reads += 1  # customer service set the Order back meanwhile
        return ProvisionResult("Skipped", error_code="NOT_ACTIVATING", error_message="set back")

    async def go() -> ProvisionResult:
        prov = Provisioner(wh, policy(**FAST))  # type: ignore[arg-type]
        guard = GuardCheck(read, read_at=lease_clock(), max_age_s=5.0)
        return await prov.provision(REQ, guard=guard)
    res = asyncio.run(go())
    assert (res.status, res.error_code) == ("Skipped", "NOT_ACTIVATING")
    assert res.attempts == 0
    assert reads == 1 and wh.calls == ["AddOrder"]  # the one handed, never written


def test_a_not_sent_addorder_then_one_that_succeeds_counts_one_attempt():
    wh = Scripted([not_sent()])

    async def go() -> ProvisionResult:
        return await Provisioner(wh, policy(**FAST)).provision(REQ)  # type: ignore[arg-type]
    res = asyncio.run(go())
    assert res.status == "Provisioned" and res.attempts == 1
    assert wh.calls == ["AddOrder", "AddOrder", "AcceptOrder"]  # no lookup: nothing landed


def test_an_addorder_whose_connection_failed_before_any_write_is_not_an_attempt():
    """A client that reports its writes never reported this one (WHMCS unreachable, no
    connection): nothing of it was written, so it is not counted (and not looked up)."""
    wh = Scripted([unreachable()], reports_writes=True, written=[False, True])

    async def go() -> ProvisionResult:
        return await Provisioner(wh, policy(**FAST)).provision(REQ)  # type: ignore[arg-type]
    res = asyncio.run(go())
    assert res.status == "Provisioned" and res.attempts == 1
    assert wh.calls == ["AddOrder", "AddOrder", "AcceptOrder"]


def test_an_addorder_written_and_unanswered_is_still_an_attempt():
    wh = Scripted([WhmcsUnknownResultError("AddOrder: no answer after sending",
                                           action="AddOrder")],
                  reports_writes=True, written=[True, True])

    async def go() -> ProvisionResult:
        return await Provisioner(wh, policy(**FAST)).provision(REQ)  # type: ignore[arg-type]
    res = asyncio.run(go())
    assert res.status == "Provisioned" and res.attempts == 2
    assert wh.calls == ["AddOrder", "GetOrders", "AddOrder", "AcceptOrder"]


# -- 3. the guard's max age on the lease clock (a host suspend counts) -----------------------

class Suspend:
    """CLOCK_BOOTTIME ``gap`` seconds ahead once :meth:`now` is called: the host suspended
    (CLOCK_MONOTONIC, which stops meanwhile, does not move)."""

    def __init__(self, monkeypatch: Any) -> None:
        self.gap = 0.0
        real = time.clock_gettime

        def clock_gettime(clk: int) -> float:
            return real(clk) + (self.gap if clk == time.CLOCK_BOOTTIME else 0.0)
        monkeypatch.setattr(time, "clock_gettime", clock_gettime)

    def now(self, seconds: float) -> None:
        self.gap += seconds


def test_the_guardcheck_measures_its_max_age_on_the_lease_clock(monkeypatch):
    suspend = Suspend(monkeypatch)
    reads = 0

    async def read() -> None:
        nonlocal reads
        reads += 1

    async def go() -> ProvisionResult:
        guard = GuardCheck(read, read_at=lease_clock(), max_age_s=5.0)
        suspend.now(15.0)  # a 15-s suspend after the read; no wait signalled
        return await Provisioner(Scripted([]), policy(**FAST)).provision(  # type: ignore[arg-type]
            REQ, guard=guard)
    res = asyncio.run(go())
    assert res.status == "Provisioned"
    assert reads == 1  # read again before the AddOrder


def test_a_host_suspend_after_the_handlers_read_reads_the_guard_again(monkeypatch):
    """The handler read the Order, then the host slept 15 s (past the 5-s max age): the
    AddOrder does not go out on that verdict — it is read again first (a second query)."""
    suspend = Suspend(monkeypatch)

    class Sleepy(SF):
        def query(self, soql: str) -> list[dict[str, Any]]:
            got = super().query(soql)
            if len(self.queries) == 1:
                suspend.now(15.0)
            return got
    sf, wh = Sleepy(A), WH()

    async def go() -> Kit:
        kit = Kit(salesforce=sf, whmcs_client=wh)
        assert kit.handler.guard_max_age_s == 5.0
        await kit.process(records([request_value(A)]))
        return kit
    kit = asyncio.run(go())
    assert outcomes(kit)[A]["status"] == "Provisioned"
    assert len(sf.queries) == 2


@pytest.mark.parametrize("suspended_since_boot_s", [0.0, 100.0])
def test_without_a_suspend_a_fresh_read_is_not_read_again(monkeypatch, suspended_since_boot_s):
    """No suspend since the read: one query. Also with CLOCK_BOOTTIME 100 s ahead of
    CLOCK_MONOTONIC (a suspend before it, since boot): the handler's read is timed on the
    lease clock, as GuardCheck ages it — not a fresh read looking 100 s old (clocks mixed)."""
    Suspend(monkeypatch).now(suspended_since_boot_s)
    sf, wh = SF(A), WH()

    async def go() -> Kit:
        kit = Kit(salesforce=sf, whmcs_client=wh)
        await kit.process(records([request_value(A)]))
        return kit
    kit = asyncio.run(go())
    assert outcomes(kit)[A]["status"] == "Provisioned"
    assert len(sf.queries) == 1


# -- the run's start and end, seen apart from the waits left out (a test audit) -------------

def test_a_settle_wait_longer_than_the_deadline_then_one_transient_error_provisions():
    """Resumed attempt: the lookup waits 0.5 s for the settle moment (deadline 0.3 s),
    finds nothing, then one 503: retried, Provisioned."""
    wh = Scripted([unreachable()])

    async def go() -> ProvisionResult:
        prov = Provisioner(wh, policy(retry_deadline_s=0.3, **FAST))  # type: ignore[arg-type]
        return await prov.provision(REQ, settle_at_ms=int(time.time() * 1000) + 500)
    res = asyncio.run(go())
    assert (res.status, res.error_code) == ("Provisioned", None), res.error_message


class SlowAddThenAccept503(Scripted):
    """AddOrder: a 503, then made after 0.5 s; AcceptOrder: not sent once, then done."""

    def __init__(self):
        super().__init__([unreachable()])
        self.accepts = [not_sent()]

    async def add_order(self, params, send_deadline=None, on_write=None):
        if self.calls:  # the second AddOrder: slow, made
            await asyncio.sleep(0.5)
        return await super().add_order(params, send_deadline, on_write)

    async def accept_order(self, oid, autosetup=True, send_deadline=None, on_write=None):
        self.calls.append("AcceptOrder")
        if self.accepts:
            raise self.accepts.pop(0)


def test_a_made_order_ends_the_run_an_acceptorder_error_starts_a_new_one():
    """A 503, then a slow AddOrder that made the order: the run ended with it — the
    AcceptOrder's error starts a new run of its own, retried, not failed at once."""
    wh = SlowAddThenAccept503()

    async def go():
        return await Provisioner(wh, policy(retry_deadline_s=0.3, **FAST)).provision(REQ)
    res = asyncio.run(go())
    assert (res.status, res.error_code) == ("Provisioned", None), res.error_message


def test_a_slow_guard_read_during_a_run_of_transient_errors_does_not_count():
    """WHMCS failed twice; before each retried AddOrder the guard was read again, Salesforce
    taking 0.5 s each time (down, the read retried; retry deadline 0.3 s): that was not
    WHMCS unavailable. Counted, the Order ended Failed WHMCS_UNAVAILABLE after two 503s."""
    wh = Scripted([unreachable(), unreachable()])
    reads = 0

    async def read() -> ProvisionResult | None:
        nonlocal reads
        reads += 1
        await asyncio.sleep(0.5)
        return None  # still Activating: go on

    async def go() -> ProvisionResult:
        prov = Provisioner(wh, policy(retry_deadline_s=0.3, **FAST))  # type: ignore[arg-type]
        guard = GuardCheck(read, read_at=lease_clock(), max_age_s=60.0)
        return await prov.provision(REQ, guard=guard)
    res = asyncio.run(go())
    assert (res.status, res.error_code) == ("Provisioned", None), res.error_message
    assert reads >= 2 and wh.calls.count("AddOrder") == 3
