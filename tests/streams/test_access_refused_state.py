"""WHMCS's refusal of this installation is said (``/readyz``, the gauge, the page) while some
provisioning waits it out — and no longer once none does. It was cleared only by an
``AddOrder`` or ``AcceptOrder`` taken: a wait that ended with a lookup finding the order, the
guard refusing the Order, or a fence, left the worker saying "WHMCS refuses" (503, a page
firing) for good on an idle pipeline (an observability review)."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from streams.guard_check import GuardCheck
from streams.lease import Fenced, LeaseCheck
from streams.provision import Provisioner, ProvisionResult
from tests.streams.test_whmcs_client_errors import (
    ADDED,
    ORDER,
    action_of,
    client_answering,
    policy,
    req,
    run,
)

REFUSED = httpx.Response(403, json={"result": "error", "message": "Authentication Failed"})
FOUND = {"result": "success", "totalresults": 1, "startnumber": 0, "numreturned": 1,
         "orders": {"order": [{"id": 9, "userid": 1, "status": "Active",
                               "notes": f"sfOrderId={ORDER}", "lineitems": {"lineitem": []}}]}}


async def no_sleep(_delay: float) -> None:
    return None


def refused_first(answer: dict) -> tuple[list[str], object]:
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(action_of(request))
        if len(calls) == 1:
            return REFUSED
        return httpx.Response(200, json=answer)
    return calls, handler


def test_a_wait_that_ends_with_the_guard_refusing_the_order_clears_the_refusal():
    calls, handler = refused_first(ADDED)

    async def go() -> tuple[ProvisionResult, Provisioner, bool]:
        async with client_answering(handler) as client:
            prov = Provisioner(client, policy(retry_deadline_s=0.0), sleep=no_sleep)

            async def read() -> ProvisionResult:  # cancelled in Salesforce meanwhile
                return ProvisionResult("Skipped", error_code="ORDER_NOT_ACTIVATING")
            guard = GuardCheck(read, read_at=0.0, max_age_s=3600.0,
                               clock=lambda: 0.0)
            during: list[bool] = []
            real = prov._access_refused

            def refused(exc, waiter):  # type: ignore[no-untyped-def]
                real(exc, waiter)
                during.append(prov.access_refused_since is not None)
            prov._access_refused = refused  # type: ignore[method-assign]
            result = await prov.provision(req(), guard=guard)
            return result, prov, all(during) and bool(during)
    result, prov, said_while_waiting = run(go())
    assert calls == ["AddOrder"] and result.status == "Skipped"
    assert said_while_waiting  # said while the Order waited
    assert prov.access_refused_since is None


def test_a_wait_that_ends_with_a_lookup_finding_the_order_clears_the_refusal():
    calls, handler = refused_first(FOUND)

    async def go() -> tuple[ProvisionResult, Provisioner]:
        async with client_answering(handler) as client:
            prov = Provisioner(client, policy(retry_deadline_s=0.0, lookup_grace_s=0.0),
                               sleep=no_sleep, wall=lambda: 2e9)
            return await prov.provision(req(), settle_at_ms=1), prov
    result, prov = run(go())
    assert calls == ["GetOrders", "GetOrders"]
    assert (result.status, result.whmcs_order_id) == ("Provisioned", 9)
    assert prov.access_refused_since is None


def test_a_wait_that_ends_fenced_clears_the_refusal_once_no_order_waits():
    calls, handler = refused_first(ADDED)
    fences = 0

    async def fence(_action: str, queued: bool = False) -> float | None:
        nonlocal fences
        fences += 1
        if fences > 2:  # the retry after the refusal: the partition went to another worker
            raise Fenced(LeaseCheck(False, "partition 0 is not assigned", lost=True))
        return None

    async def go() -> Provisioner:
        async with client_answering(handler) as client:
            prov = Provisioner(client, policy(retry_deadline_s=0.0), sleep=no_sleep)
            with pytest.raises(Fenced):
                await prov.provision(req(), fence=fence)
            return prov
    prov = run(go())
    assert calls == ["AddOrder"]
    assert prov.access_refused_since is None


def test_the_refusal_stays_said_while_another_order_still_waits():
    gate = asyncio.Event()
    refusing = True

    def handler(request: httpx.Request) -> httpx.Response:
        return REFUSED if refusing else httpx.Response(200, json=ADDED)

    async def go() -> tuple[str, bool, bool]:
        nonlocal refusing
        async with client_answering(handler) as client:
            tasks: dict[str, asyncio.Task] = {}

            async def sleep(_delay: float) -> None:  # the second Order waits on
                if asyncio.current_task() is tasks["second"]:
                    await gate.wait()
            prov = Provisioner(client, policy(retry_deadline_s=0.0), sleep=sleep)

            async def skipped() -> ProvisionResult:  # the first Order set back meanwhile
                return ProvisionResult("Skipped", error_code="ORDER_NOT_ACTIVATING")
            gone = GuardCheck(skipped, read_at=0.0, max_age_s=3600.0, clock=lambda: 0.0)
            tasks["second"] = asyncio.ensure_future(prov.provision(req()))
            tasks["first"] = asyncio.ensure_future(prov.provision(req(), guard=gone))
            first = await tasks["first"]
            still = prov.access_refused_since is not None  # the second still waits
            refusing = False
            gate.set()
            await tasks["second"]
            return first.status, still, prov.access_refused_since is None
    status, still, cleared = run(go())
    assert status == "Skipped" and still and cleared
