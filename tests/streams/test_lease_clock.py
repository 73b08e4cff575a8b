"""The lease's clock counts the time the host was suspended (S3 suspend, S4 hibernate).

CLOCK_MONOTONIC (time.monotonic) stops while the host is suspended; CLOCK_BOOTTIME does not
(man 2 clock_gettime). A worker suspended past its session timeout has lost its partitions;
on CLOCK_MONOTONIC its lease still looked valid when it woke (/tmp/review-lease/suspend.py:
ok=True with 20 s left) and an AddOrder could go out while the new owner provisioned.

A suspend is simulated by moving CLOCK_BOOTTIME (``time.clock_gettime``) on while
``time.monotonic`` stands still — as the kernel does. Every producer and consumer of the
lease's instants (the heartbeat and SyncGroup send times, the lease's check, the intent
fence's send deadline, the WHMCS client's and the transport's check of it) must see it."""

from __future__ import annotations

import asyncio
import inspect
import time
from types import SimpleNamespace

import httpx
import pytest

from streams.lease import IntentLease, OwnershipLease
from streams.state import Intent, OrderState

pytestmark = pytest.mark.skipif(not hasattr(time, "CLOCK_BOOTTIME"),
                                reason="CLOCK_BOOTTIME is Linux's")


@pytest.fixture
def suspend(monkeypatch):
    """``suspend(s)``: the host sleeps ``s`` seconds — CLOCK_BOOTTIME (and the wall clock)
    move on, CLOCK_MONOTONIC does not. Returns the fake boot-time clock's reader."""
    real = time.clock_gettime
    slept = [0.0]

    def clock_gettime(clock_id: int) -> float:
        value = real(clock_id)
        return value + slept[0] if clock_id == time.CLOCK_BOOTTIME else value
    monkeypatch.setattr(time, "clock_gettime", clock_gettime)

    def sleep(seconds: float) -> None:
        slept[0] += seconds
    sleep.boottime = lambda: clock_gettime(time.CLOCK_BOOTTIME)  # type: ignore[attr-defined]
    return sleep


def test_the_shared_lease_clock_is_boottime_and_every_user_defaults_to_it():
    from common import http_transport, whmcs
    from common.clock import lease_clock

    before = time.clock_gettime(time.CLOCK_BOOTTIME)
    now = lease_clock()
    assert before <= now <= time.clock_gettime(time.CLOCK_BOOTTIME)
    default = inspect.signature(OwnershipLease.__init__).parameters["clock"].default
    assert default is lease_clock
    assert http_transport.lease_clock is lease_clock and whmcs.lease_clock is lease_clock


def test_a_suspend_past_the_lease_ends_it(suspend):
    owned = OwnershipLease(session_timeout_s=30, margin_s=10)  # its default clock
    owned.synced(5, suspend.boottime())
    owned.assigned([0], 5)
    assert owned.check(0, 5).ok
    suspend(120.0)  # the coordinator expired us meanwhile and gave partition 0 away
    check = owned.check(0, 5)
    assert not check.ok, f"still valid {check.valid_until - suspend.boottime():.1f} s"
    assert "lease expired" in check.reason


def test_an_injected_clock_that_jumps_ends_the_lease():
    now = [1000.0]
    owned = OwnershipLease(session_timeout_s=30, margin_s=10, clock=lambda: now[0],
                           wall=lambda: 1_800_000_000.0 + now[0])
    owned.synced(5, now[0])
    owned.assigned([0], 5)
    assert owned.check(0, 5).ok
    now[0] += 120.0
    assert not owned.check(0, 5).ok


def _listener():
    from streams.faust_seam.membership import MembershipListener

    class Seen(MembershipListener):
        def __init__(self) -> None:
            self.heartbeats: list[float] = []
            self.syncs: list[float] = []

        def heartbeat(self, generation, sent_at, *, accepted, rebalance):
            self.heartbeats.append(sent_at)

        def synced(self, generation, sent_at):
            self.syncs.append(sent_at)
    return Seen()


def test_the_heartbeat_and_sync_send_times_are_on_the_lease_clock(suspend):
    from aiokafka.consumer.group_coordinator import CoordinatorGroupRebalance, GroupCoordinator

    from streams.faust_seam import membership

    seen = _listener()
    membership.watch_membership("lease-clock-test", seen)
    suspend(1000.0)  # a suspend since boot: boot time is 1000 s ahead of monotonic

    async def go():
        answer = SimpleNamespace(error_code=0, member_assignment=b"assignment")

        async def send_req(_request):
            return answer
        loop = asyncio.get_running_loop()
        coordinator = SimpleNamespace(group_id="lease-clock-test", generation=5,
                                      member_id="m", _send_req=send_req,
                                      _rejoin_needed_fut=loop.create_future())
        assert await GroupCoordinator._do_heartbeat(coordinator) is True
        rebalance = SimpleNamespace(group_id="lease-clock-test", _coordinator=coordinator)
        assert await CoordinatorGroupRebalance._send_sync_group_request(
            rebalance, object()) == b"assignment"
    try:
        before = suspend.boottime()
        asyncio.run(go())
        after = suspend.boottime()
    finally:
        membership._listeners.pop("lease-clock-test", None)
    assert len(seen.heartbeats) == len(seen.syncs) == 1
    assert before <= seen.heartbeats[0] <= after and before <= seen.syncs[0] <= after


def test_the_intent_fences_send_deadline_is_on_the_lease_clock(suspend):
    suspend(1000.0)  # boot time 1000 s ahead of monotonic
    owned = OwnershipLease(session_timeout_s=30, margin_s=10)
    owned.synced(5, suspend.boottime())
    owned.assigned([0], 5)
    wall_ms = [1_800_000_000_000]
    intents: dict = {}
    intent = Intent.pending(order_id="801A", idem_key="k", event_uuid="u", attempt=1,
                            client_id=7, at=wall_ms[0], writer="w",
                            lease_until=wall_ms[0] + 10_000)
    lease = IntentLease(OrderState({}, intents), _flushed, writer="w", length_s=10,
                        clock_ms=lambda: wall_ms[0])

    async def own(_action):
        return owned.check(0, 5)
    deadline = asyncio.run(lease.fence(own, [intent])("AddOrder"))
    left = deadline - suspend.boottime()
    assert 0 < left <= 10.0  # the intent's 10 s, on the clock the transport reads


async def _flushed() -> None:
    return None


def test_a_suspend_after_the_fence_stops_the_write_at_the_transport(suspend):
    from common.http_transport import SEND_DEADLINE, Http11Transport, NotSent

    arrived: list[bytes] = []

    async def go():
        async def serve(reader, writer):
            arrived.append(await reader.read(65536))
            writer.close()
        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        transport = Http11Transport()
        deadline = suspend.boottime() + 5.0  # the fence's answer: 5 s of lease left
        suspend(120.0)  # between the fence and the write
        request = httpx.Request("POST", f"http://127.0.0.1:{port}/", content=b"action=AddOrder",
                                extensions={SEND_DEADLINE: deadline})
        try:
            with pytest.raises(NotSent):
                await transport.handle_async_request(request)
        finally:
            await transport.aclose()
            server.close()
            await asyncio.sleep(0.05)
    asyncio.run(go())
    assert b"".join(arrived) == b""  # connected, not a byte written


def test_a_suspend_after_the_fence_stops_the_whmcs_call_before_the_transport(suspend):
    from common.errors import WhmcsNotSentError
    from common.settings import WhmcsSettings
    from common.whmcs import WhmcsClient

    def refuse(_request):
        raise AssertionError("the request reached the transport")
    client = WhmcsClient(WhmcsSettings.load({
        "WHMCS_API_URL": "http://127.0.0.1:9/includes/api.php", "WHMCS_API_IDENTIFIER": "id",
        "WHMCS_API_SECRET": "secretsecret"}), transport=httpx.MockTransport(refuse))
    deadline = suspend.boottime() + 5.0
    suspend(120.0)
    with pytest.raises(WhmcsNotSentError):
        asyncio.run(client.call("AddOrder", {}, send_deadline=deadline))


def test_a_member_id_reset_is_reported_once_the_member_had_one():
    """aiokafka's reset_generation (a heartbeat, commit or SyncGroup answered
    UNKNOWN_MEMBER_ID or ILLEGAL_GENERATION) tells the lease; a reset of a member that had
    no id yet (a JoinGroup retried) does not."""
    from aiokafka.consumer.group_coordinator import GroupCoordinator

    from streams.faust_seam import membership

    resets: list[str] = []

    class Seen(membership.MembershipListener):
        def member_reset(self) -> None:
            resets.append("reset")
    membership.watch_membership("reset-test", Seen())
    try:
        coordinator = SimpleNamespace(group_id="reset-test", generation=5, member_id="m-1",
                                      request_rejoin=lambda: None)
        GroupCoordinator.reset_generation(coordinator)
        assert resets == ["reset"] and coordinator.member_id == "" and \
            coordinator.generation == -1
        GroupCoordinator.reset_generation(coordinator)  # no member id left: nothing lost
        assert resets == ["reset"]
    finally:
        membership._listeners.pop("reset-test", None)
