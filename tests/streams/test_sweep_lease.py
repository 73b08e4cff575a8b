"""The sweep's WHMCS writes under the intent's lease (streams.recovery, streams.lease).

A pending intent whose event was dead-lettered is recovered by a sweep: a lookup, then
``AcceptOrder`` (or ``CancelOrder`` of a duplicate). Its writer's ``lease_until`` is long
past, so the sweep must renew it — written and made durable — before each write, as an
event's fence does: whoever resumes the intent next (the partition's next owner, or this
worker's next sweep) waits until that write can no longer be running before it looks the
Order up, and never sends a second ``AcceptOrder`` while the first one's autosetup runs.
"""

from __future__ import annotations

import asyncio

import pytest

from common.clock import lease_clock
from common.errors import (
    WhmcsAccessError,
    WhmcsError,
    WhmcsTransientError,
    WhmcsUnknownResultError,
)
from common.whmcs import WhmcsOrder
from streams.lease import LeaseCheck
from streams.provision import Provisioner, ProvisionPolicy
from streams.recovery import Sweeper
from streams.state import OrderState
from tests.streams.flowkit import Durable

OID = "801S00000000001AAA"
T0 = 1_000_000_000_000  # epoch ms
TIMEOUT_S, GRACE_S = 15.0, 2.0
GROUP_LEASE_S = 20.0  # what is left of the ownership lease at each check (> the intent's)
INTENT_LEASE_S = 10.0  # the Sweeper's default, WORKER_INTENT_LEASE_S's


class Clock:
    """The shared wall clock (epoch ms); the provisioner's sleeps advance it."""

    def __init__(self) -> None:
        self.ms = T0

    def __call__(self) -> int:
        return self.ms

    async def sleep(self, seconds: float) -> None:
        self.ms += int(seconds * 1000)


class Whmcs:
    """Finds ``pending`` WHMCS orders for the Order; ``AcceptOrder`` goes unanswered (WHMCS
    runs the autosetup longer than the timeout). Each call is logged with the time it was
    made and, for the writes, the intent as durable then and the send deadline."""

    def __init__(self, clock: Clock, tables: Durable, pending: tuple[int, ...] = (55,)):
        self.clock, self.tables, self.pending = clock, tables, pending
        self.calls: list[dict] = []

    def _log(self, action: str, **kw) -> None:
        durable = self.tables.durable_intents.get(OID) or {}
        self.calls.append({"action": action, "at": self.clock(),
                           "durable_lease_until": durable.get("lease_until"), **kw})

    async def find_orders_by_marker(self, client_id, order_id):
        self._log("GetOrders")
        return [WhmcsOrder(id=i, client_id=client_id, status="Pending",
                           notes=f"sfOrderId={OID}", invoice_id=None, service_ids=[])
                for i in self.pending]

    async def accept_order(self, order_id, *, autosetup=True, send_deadline=None):
        self._log("AcceptOrder", send_deadline=send_deadline, sent_mono=lease_clock())
        raise WhmcsUnknownResultError("AcceptOrder: no answer after sending",
                                      action="AcceptOrder")

    async def cancel_order(self, order_id, *, send_deadline=None):
        self._log("CancelOrder", send_deadline=send_deadline, sent_mono=lease_clock())

    async def get_order(self, order_id):
        return None


class Emitter:
    def __init__(self) -> None:
        self.sent: list[dict] = []

    async def send_outcome(self, outcome):
        self.sent.append(outcome)


def _owned(clock: Clock):
    """The sweep's lease for an Order's job: held, ``GROUP_LEASE_S`` left at each check."""
    def fence_for(_oid):
        async def own(action, *, queued=False):
            return LeaseCheck(True, "", lease_clock() + GROUP_LEASE_S,
                              clock() / 1000 + GROUP_LEASE_S)
        return own
    return fence_for


def _setup(pending: tuple[int, ...] = (55,)):
    clock = Clock()
    tables = Durable()
    state = OrderState(tables.idem, tables.intents, tables.flush)
    # a pending intent left 700 s ago (its event dead-lettered), its lease long past
    tables.intents[OID] = {"order_id": OID, "idem_key": "k", "event_uuid": "ev",
                           "state": "pending", "attempt": 1, "client_id": 1012,
                           "at": T0 - 700_000, "lease_until": T0 - 690_000, "writer": "gone"}
    tables.durable_intents = dict(tables.intents)
    whmcs = Whmcs(clock, tables, pending)

    def sweeper() -> Sweeper:  # a worker's: its own provisioner, the same tables
        provisioner = Provisioner(
            whmcs, ProvisionPolicy(whmcs_timeout_s=TIMEOUT_S, lookup_grace_s=GRACE_S),
            sleep=clock.sleep, wall=lambda: clock() / 1000)
        return Sweeper(state, provisioner, Emitter(), recovery_after_s=600,  # type: ignore[arg-type]
                       dedupe_ttl_days=35, owns=lambda _oid: True, clock_ms=clock,
                       fence_for=_owned(clock))
    return clock, tables, whmcs, sweeper


def test_a_sweeps_unanswered_accept_is_covered_by_the_intents_lease():
    """Worker A's sweep accepts and gets no answer; A is cut off right after sending, and
    worker B, assigned 11 s later, sweeps the same tables. B must not look the Order up
    (and accept again) before A's AcceptOrder can no longer be running: the intent's
    ``lease_until`` (renewed and durable before A's write) + the WHMCS timeout + grace."""
    clock, tables, whmcs, sweeper = _setup()
    asyncio.run(sweeper().run_once())  # worker A's sweep
    first_accept = next(c for c in whmcs.calls if c["action"] == "AcceptOrder")
    intent = tables.intents[OID]
    assert intent["state"] == "pending"
    lease_until = intent["lease_until"]
    # renewed before the write, durable when it went, as long as the group lease allows,
    # at most the intent's lease
    assert lease_until >= first_accept["at"]
    assert first_accept["durable_lease_until"] == lease_until
    assert lease_until == first_accept["at"] + int(INTENT_LEASE_S * 1000)
    # the send deadline is capped at the intent's lease
    deadline = first_accept["send_deadline"]
    assert deadline is not None and \
        deadline <= first_accept["sent_mono"] + INTENT_LEASE_S + 0.5

    calls_by_a = len(whmcs.calls)
    clock.ms += 11_000  # A cut off; B assigned >= 10 s later (session 30 - lease 20), sweeps
    asyncio.run(sweeper().run_once())  # worker B's sweep
    b_lookup = whmcs.calls[calls_by_a]
    assert b_lookup["action"] == "GetOrders"
    assert b_lookup["at"] >= lease_until + int((TIMEOUT_S + GRACE_S) * 1000)
    assert b_lookup["at"] - T0 >= 17_000


def test_a_sweeps_cancel_of_a_duplicate_is_covered_by_the_intents_lease():
    """The sweep's lookup finds two Pending orders (a fence was crossed): the CancelOrder of
    the duplicate is a WHMCS write too — the intent is renewed and durable before it."""
    clock, tables, whmcs, sweeper = _setup(pending=(55, 56))
    asyncio.run(sweeper().run_once())
    cancel = next(c for c in whmcs.calls if c["action"] == "CancelOrder")
    assert cancel["durable_lease_until"] is not None
    assert cancel["durable_lease_until"] >= cancel["at"]
    assert cancel["send_deadline"] is not None and \
        cancel["send_deadline"] <= cancel["sent_mono"] + INTENT_LEASE_S + 0.5


class Refusing(Whmcs):
    """``AcceptOrder`` answered with ``refusal`` (a module failing: result=error)."""

    def __init__(self, clock: Clock, tables: Durable, refusal: Exception):
        super().__init__(clock, tables)
        self.refusal = refusal

    async def accept_order(self, order_id, *, autosetup=True, send_deadline=None):
        self._log("AcceptOrder", send_deadline=send_deadline, sent_mono=lease_clock())
        raise self.refusal


def _refused(refusal: Exception):
    """One sweeper (one worker) over the pending intent, its WHMCS ``Refusing``."""
    clock, tables, _whmcs, _sweeper = _setup()
    whmcs = Refusing(clock, tables, refusal)
    provisioner = Provisioner(
        whmcs, ProvisionPolicy(whmcs_timeout_s=TIMEOUT_S, lookup_grace_s=GRACE_S),
        sleep=clock.sleep, wall=lambda: clock() / 1000)
    emitter = Emitter()
    state = OrderState(tables.idem, tables.intents, tables.flush)
    sweeper = Sweeper(state, provisioner, emitter, recovery_after_s=600,
                      dedupe_ttl_days=35, owns=lambda _oid: True, clock_ms=clock,
                      fence_for=_owned(clock))
    return clock, tables, whmcs, emitter, sweeper


def test_a_sweeps_accept_whmcs_refuses_ends_the_order_failed_naming_it():
    """The lookup finds the order Pending and WHMCS refuses its AcceptOrder (result=error):
    the sweep logged "lookup failed; will retry", renewed the intent and sent AcceptOrder
    again at every sweep (the module run again each time), and the Order never got an
    outcome. It ends as an event's own attempt does: Failed WHMCS_ERROR, naming the order."""
    clock, tables, whmcs, emitter, sweeper = _refused(
        WhmcsError("Module Command Error: server full", action="AcceptOrder"))
    asyncio.run(sweeper.run_once())
    assert [c["action"] for c in whmcs.calls] == ["GetOrders", "AcceptOrder"]
    assert len(emitter.sent) == 1
    outcome = emitter.sent[0]
    assert outcome["status"] == "Failed" and outcome["error_code"] == "WHMCS_ERROR"
    assert outcome["whmcs_order_id"] == 55 and outcome["recovered"] is True
    assert "server full" in outcome["error_message"]
    intent = tables.intents[OID]
    assert intent["state"] != "pending" and intent["whmcs_order_id"] == 55
    assert intent["may_exist"] is True  # kept past the TTL: the order exists
    assert tables.idem[OID]["k"]["emitted"] is True

    clock.ms += 700_000  # past WORKER_RECOVERY_AFTER_S again: nothing left to recover
    asyncio.run(sweeper.run_once())
    assert len(whmcs.calls) == 2 and len(emitter.sent) == 1


@pytest.mark.parametrize("failure", [
    WhmcsUnknownResultError("AcceptOrder: no answer after sending", action="AcceptOrder"),
    WhmcsTransientError("AcceptOrder: HTTP 503", action="AcceptOrder"),
    WhmcsAccessError("Invalid IP 10.0.0.1", action="AcceptOrder"),
], ids=["unanswered", "unavailable", "access-refused"])
def test_a_sweeps_accept_without_a_definite_refusal_is_tried_again(failure):
    """WHMCS gave no answer, or none about the order (unreachable; this installation's
    access refused, where Orders wait and nothing is failed): no outcome, the intent stays
    pending, and the next sweep looks the order up again."""
    clock, tables, whmcs, emitter, sweeper = _refused(failure)
    asyncio.run(sweeper.run_once())
    assert [c["action"] for c in whmcs.calls] == ["GetOrders", "AcceptOrder"]
    assert emitter.sent == [] and tables.intents[OID]["state"] == "pending"
    clock.ms += 60_000
    asyncio.run(sweeper.run_once())
    assert [c["action"] for c in whmcs.calls][2:] == ["GetOrders", "AcceptOrder"]
    assert emitter.sent == [] and tables.intents[OID]["state"] == "pending"


def test_an_access_refusal_of_a_found_orders_accept_is_no_answer_about_the_order():
    """``accept_found`` (the sweep's, and an event's own pending attempt found by its
    lookup): this installation's credentials or IP refused is no definite answer about the
    order — ``WHMCS_UNAVAILABLE``, never the ``WHMCS_ERROR`` a refused accept is (an
    event's attempt sends the found result as its outcome)."""
    from streams.provision import AcceptFailed, ProvisionResult

    clock, _tables, whmcs, _emitter, _sweeper = _refused(
        WhmcsAccessError("Invalid IP 10.0.0.1", action="AcceptOrder"))
    provisioner = Provisioner(
        whmcs, ProvisionPolicy(whmcs_timeout_s=TIMEOUT_S, lookup_grace_s=GRACE_S),
        sleep=clock.sleep, wall=lambda: clock() / 1000)
    found = ProvisionResult("Provisioned", 55, recovered=True)
    with pytest.raises(AcceptFailed) as info:
        asyncio.run(provisioner.accept_found(found))
    assert info.value.result.error_code == "WHMCS_UNAVAILABLE"
    assert info.value.result.whmcs_order_id == 55
    assert "Invalid IP" in (info.value.result.error_message or "")
