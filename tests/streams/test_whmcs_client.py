"""common.whmcs and streams.provision against the WHMCS sandbox (a real HTTP server)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from common.errors import (
    WhmcsAccessError,
    WhmcsError,
    WhmcsTransientError,
    WhmcsUnknownResultError,
)
from common.settings import WhmcsSettings
from common.whmcs import WhmcsClient, encode_form, has_marker
from streams.mapping import WhmcsItem, WhmcsOrderRequest
from streams.provision import Provisioner
from tests.streams.factories import policy

CLIENT = 1010  # seed account 9: an ordinary, active WHMCS client
CLOSED_CLIENT = 1003  # seed account 2: WHMCS client status Closed
OTHER_CLIENT = 1009  # seed account 8: another active client


def run(coro):
    return asyncio.run(coro)


def settings(wh, **kw) -> WhmcsSettings:
    return WhmcsSettings.load(wh.env(), **kw)


def req(order_id: str, client: int = CLIENT) -> WhmcsOrderRequest:
    return WhmcsOrderRequest(order_id=order_id, client_id=client,
                             items=(WhmcsItem(pid=4, billingcycle="annually", qty=1),),
                             notes=f"sfOrderId={order_id} idemKey=k")


@pytest.fixture(autouse=True)
def _clean(whmcs):
    whmcs.clear_faults()
    yield
    whmcs.clear_faults()
    whmcs.lift_login_bans()  # a test's failed logins never ban the next one


def test_form_encoding_uses_php_brackets_and_skips_none():
    body = encode_form({"action": "AddOrder", "pid": [1, 5], "addons": ["1,2", None],
                        "noemail": True, "notes": None})
    assert body == "action=AddOrder&pid%5B0%5D=1&pid%5B1%5D=5&addons%5B0%5D=1%2C2&noemail=1"


def test_form_encoding_is_urlencode_for_any_text():
    import random
    from urllib.parse import urlencode

    rng = random.Random(7)
    alphabet = "aZ09_.~-+ &=%/?#[]\u00e9\u20ac\U0001f600\n\t\"'<>"
    for _ in range(2000):
        values = ["".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 12)))
                  for _ in range(3)]
        params = {"notes": values[0], values[1] or "k": values[2], "qty": rng.randrange(-9, 99)}
        assert encode_form(params) == urlencode([(k, str(v)) for k, v in params.items()])


def test_marker_matching_is_exact():
    assert has_marker("sfOrderId=801A idemKey=x", "801A")
    assert not has_marker("sfOrderId=801AB", "801A")
    assert not has_marker(None, "801A")
    # one Order's two id forms find each other; another Order's 15 characters do not
    assert has_marker("sfOrderId=8015g00000AbCdE idemKey=x", "8015g00000AbCdEAAZ")
    assert has_marker("sfOrderId=8015g00000AbCdEAAZ", "8015g00000AbCdE")
    assert not has_marker("sfOrderId=8015g00000AbCdF", "8015g00000AbCdEAAZ")
    assert not has_marker("sfOrderId=8015g00000abcde", "8015g00000AbCdE")  # case counts
    # two 18-character ids are two Orders unless equal (whatever their first 15 say)
    assert not has_marker("sfOrderId=801COMPAT000000002", "801COMPAT000000001")


def test_add_accept_and_find_by_marker_across_pages(whmcs):
    async def go():
        async with WhmcsClient(settings(whmcs)) as client:
            made = [await client.add_order(req(f"801T00000000{i:02d}AAA").params())
                    for i in range(5)]
            await client.accept_order(made[3].order_id)
            assert all(isinstance(m.order_id, int) and m.service_ids for m in made)
            orders = await client.iter_orders(CLIENT, page_size=2)
            assert {m.order_id for m in made} <= {o.id for o in orders}
            found = await client.find_orders_by_marker(CLIENT, "801T0000000003AAA")
            assert [o.id for o in found] == [made[3].order_id]
            assert found[0].status == "Active"
            assert found[0].service_ids == made[3].service_ids
            assert client.calls["AddOrder"] == 5
    run(go())


def test_an_order_created_between_two_pages_does_not_list_one_twice(whmcs):
    """GetOrders lists the newest first: an order made while the lookup pages shifts the
    rest by one, and the page boundary's row came back twice — the lookup then took its
    own order for a duplicate of itself (compensation cancels a Pending 'duplicate')."""
    async def go():
        async with WhmcsClient(settings(whmcs)) as client:
            mine = await client.add_order(req("801T0000000060AAA").params())
            for i in range(3):
                await client.add_order(req(f"801T00000000{61 + i}AAA").params())
            page = client.get_orders
            pages = 0

            async def get_orders(**kw):
                nonlocal pages
                pages += 1
                if pages == 2:  # another Order of the client created meanwhile
                    await client.add_order(req("801T0000000069AAA").params())
                return await page(**kw)

            client.get_orders = get_orders  # type: ignore[method-assign]
            orders = await client.iter_orders(CLIENT, page_size=2)
            ids = [o.id for o in orders]
            assert len(ids) == len(set(ids)), ids
            assert mine.order_id in ids
            found = await client.find_orders_by_marker(CLIENT, "801T0000000060AAA")
            assert [o.id for o in found] == [mine.order_id]
    run(go())


def test_errors_are_translated(whmcs):
    async def go():
        async with WhmcsClient(settings(whmcs)) as client:
            with pytest.raises(WhmcsError, match="Client ID Not Found") as info:
                await client.add_order(req("801T0000000010AAA", client=999999).params())
            assert type(info.value) is WhmcsError and not info.value.retryable
            whmcs.set_faults("GetOrders", error_rate=1.0, error_kind="503")
            with pytest.raises(WhmcsTransientError):
                await client.get_orders(client_id=CLIENT)
            whmcs.set_faults("GetOrders", error_rate=1.0, error_kind="html")
            with pytest.raises(WhmcsTransientError, match="not a WHMCS API answer"):
                await client.get_orders(client_id=CLIENT)
    run(go())


def test_bad_credentials_are_an_access_error_and_secret_never_shows(whmcs, caplog):
    env = {**whmcs.env(), "WHMCS_API_SECRET": "wrong-secret-value"}

    async def go():
        async with WhmcsClient(WhmcsSettings.load(env)) as client:
            with pytest.raises(WhmcsError) as info:
                await client.get_orders(client_id=CLIENT)
            return info.value
    with caplog.at_level(logging.DEBUG):
        exc = run(go())
    assert "Authentication Failed" in str(exc)
    assert type(exc) is WhmcsAccessError and exc.retryable  # ours to fix, not the Order's
    assert "wrong-secret-value" not in str(exc) + caplog.text


def test_the_login_ban_after_failed_logins_is_an_access_error(whmcs):
    """WHMCS bans an IP after 3 failed logins in 30 minutes: its ``IP Banned`` (HTTP 403)
    refuses this installation, for the right secret as well — an access error (the worker
    waits), never an Order's ``WHMCS_ERROR``."""
    wrong = {**whmcs.env(), "WHMCS_API_SECRET": "wrong-secret-value"}

    async def go():
        async with WhmcsClient(WhmcsSettings.load(wrong)) as bad, \
                WhmcsClient(settings(whmcs)) as good:
            errors = []
            for client in (bad, bad, bad, bad, good):
                with pytest.raises(WhmcsAccessError) as info:
                    await client.get_orders(client_id=CLIENT)
                errors.append(str(info.value))
            whmcs.lift_login_bans()
            total, _ = await good.get_orders(client_id=CLIENT)
            return errors, total
    errors, total = run(go())
    assert errors == ["Authentication Failed"] * 3 + ["IP Banned"] * 2
    assert total >= 0


def test_refused_access_makes_orders_wait_not_fail(whmcs):
    """Bad credentials / IP: no Order fails; provisioning resumes once access is back."""
    whmcs.set_faults("AddOrder", whmcs_error_rate=1.0, whmcs_error="Authentication Failed",
                     times=4)
    sleeps = []

    async def sleep(delay):
        sleeps.append(delay)

    async def go():
        async with WhmcsClient(settings(whmcs)) as client:
            prov = Provisioner(client, policy(retry_deadline_s=0.0), sleep=sleep)
            result = await prov.provision(req("801T0000000012AAA"))
            return result, prov
    result, prov = run(go())
    assert result.status == "Provisioned" and result.whmcs_order_id
    assert len(sleeps) == 4  # waited past a zero retry deadline: access errors have none
    assert prov.access_refused_since is None and "Authentication Failed" in prov.access_error
    assert whmcs.counters()["orders_by_marker"]["801T0000000012AAA"] == 1


def test_timeout_after_sending_is_unknown_for_addorder_only(whmcs):
    async def go():
        async with WhmcsClient(settings(whmcs), timeout_s=0.5) as client:
            whmcs.set_faults("AddOrder", hang_rate=1.0, hang_s=2, times=1)
            with pytest.raises(WhmcsUnknownResultError):
                await client.add_order(req("801T0000000011AAA").params())
            whmcs.set_faults("GetOrders", hang_rate=1.0, hang_s=2, times=1)
            with pytest.raises(WhmcsTransientError) as info:
                await client.get_orders(client_id=CLIENT)
            assert type(info.value) is WhmcsTransientError
    run(go())
    assert len(whmcs.orders_for("801T0000000011AAA")) == 1  # the hang came after the commit


@pytest.mark.parametrize("mode", ["delay", "drop"])
def test_provision_after_commit_then_hang_finds_the_order(whmcs, mode):
    order_id = f"801T00000000{20 if mode == 'delay' else 21}AAA"

    async def go():
        async with WhmcsClient(settings(whmcs), timeout_s=0.5) as client:
            whmcs.set_faults("AddOrder", hang_rate=1.0, hang_s=2, hang_mode=mode, times=1)
            return await Provisioner(client, policy()).provision(req(order_id))
    result = run(go())
    assert (result.status, result.recovered, result.attempts) == ("Provisioned", True, 1)
    made = whmcs.orders_for(order_id)
    assert len(made) == 1 and made[0]["status"] == "Active"


def test_accept_answer_lost_after_commit_checks_status(whmcs):
    """WHMCS accepted, then answered 500: one status read finds the order Active, and the
    AcceptOrder is not sent again."""
    async def go():
        async with WhmcsClient(settings(whmcs)) as client:
            whmcs.reset_counters()
            whmcs.set_faults("AcceptOrder", error_rate=1.0, error_kind="500",
                             error_after_commit=True, times=1)
            return await Provisioner(client, policy()).provision(req("801T0000000022AAA"))
    result = run(go())
    assert result.status == "Provisioned" and not result.recovered
    assert whmcs.orders_for("801T0000000022AAA")[0]["status"] == "Active"
    calls = whmcs.calls()
    assert (calls.get("AcceptOrder"), calls.get("GetOrders")) == (1, 1), calls


@pytest.mark.parametrize("order_id,fault,accepts", [
    # the accept timed out after WHMCS accepted: read, found Active, not sent again
    ("801T0000000080AAA", {"hang_rate": 1.0, "hang_s": 2}, 1),
    # a 500 before WHMCS accepted: read, found still Pending, accepted again
    ("801T0000000081AAA", {"error_rate": 1.0, "error_kind": "500"}, 2),
])
def test_an_unanswered_accept_is_checked_not_repeated_blindly(whmcs, order_id, fault,
                                                               accepts):
    """REFERENCE: a retried AcceptOrder must check the order's status first (with
    autosetup WHMCS runs the module while the caller waits): one status read, then an
    accept only of an order still Pending."""
    async def go():
        async with WhmcsClient(settings(whmcs), timeout_s=0.5) as client:
            whmcs.reset_counters()
            whmcs.set_faults("AcceptOrder", times=1, **fault)
            return await Provisioner(client, policy()).provision(req(order_id))
    result = run(go())
    assert result.status == "Provisioned"
    assert whmcs.orders_for(order_id)[0]["status"] == "Active"
    calls = whmcs.calls()
    assert (calls.get("AcceptOrder"), calls.get("GetOrders")) == (accepts, 1), calls


def test_a_lookup_after_an_unanswered_add_waits_from_when_it_was_sent(whmcs):
    """The wait in line for a WHMCS slot (and the fence's renewal there) can be long under
    load: the settle moment once counted from before it, so the lookup ran at once, before
    an AddOrder sent late could have landed, and a second AddOrder followed."""
    wall = [1000.0]
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)

    async def fence(action: str, *, queued: bool = False) -> float | None:
        if action == "AddOrder" and queued:
            wall[0] += 10.0  # ten seconds in line for a slot
        return None

    async def go():
        async with WhmcsClient(settings(whmcs), timeout_s=0.5) as client:
            whmcs.set_faults("AddOrder", hang_rate=1.0, hang_s=2, times=1)
            prov = Provisioner(client, policy(), sleep=fake_sleep, wall=lambda: wall[0])
            return await prov.provision(req("801T0000000082AAA"), fence=fence)
    result = run(go())
    # sent at 1010: it can land until 1010 + 1.0 (timeout) + 0.1 (grace)
    assert any(abs(s - 1.1) < 1e-6 for s in slept), slept
    assert (result.status, result.recovered) == ("Provisioned", True)
    assert len(whmcs.orders_for("801T0000000082AAA")) == 1


def test_a_lookup_reads_the_client_the_earlier_attempt_sent_to(whmcs):
    """The earlier attempt's AddOrder landed under client 1010 and its answer was lost;
    the Account's WHMCS client was then changed and the Order approved again. The lookup
    read only the new client's orders, found nothing, and a second AddOrder followed."""
    async def go():
        async with WhmcsClient(settings(whmcs)) as client:
            made = await client.add_order(req("801T0000000083AAA").params())
            whmcs.reset_counters()
            result = await Provisioner(client, policy()).provision(
                req("801T0000000083AAA", client=OTHER_CLIENT), settle_at_ms=0,
                earlier_client_ids=(CLIENT,))
            return made, result
    made, result = run(go())
    assert (result.status, result.recovered, result.whmcs_order_id) == (
        "Provisioned", True, made.order_id)
    assert whmcs.calls().get("AddOrder", 0) == 0
    assert len(whmcs.orders_for("801T0000000083AAA")) == 1


def test_an_order_found_but_not_accepted_by_the_deadline_may_exist(whmcs):
    """The lookup found the earlier attempt's Pending order and WHMCS then stayed down:
    the Failed outcome must say an order may exist, else the next approval would create
    a second one without looking."""
    async def go():
        async with WhmcsClient(settings(whmcs), timeout_s=0.3) as client:
            made = await client.add_order(req("801T0000000084AAA").params())
            whmcs.set_faults("AcceptOrder", error_rate=1.0, error_kind="503")
            result = await Provisioner(client, policy(retry_deadline_s=0.8)).provision(
                req("801T0000000084AAA"), settle_at_ms=0)
            return made, result
    made, result = run(go())
    assert (result.status, result.error_code) == ("Failed", "WHMCS_UNAVAILABLE")
    assert result.whmcs_order_id == made.order_id and result.attempts == 0
    assert result.may_exist


def test_resume_finds_pending_order_and_accepts_it(whmcs):
    async def go():
        async with WhmcsClient(settings(whmcs)) as client:
            made = await client.add_order(req("801T0000000023AAA").params())
            result = await Provisioner(client, policy()).provision(
                req("801T0000000023AAA"), settle_at_ms=0)
            return made, result
    made, result = run(go())
    assert (result.status, result.recovered, result.whmcs_order_id) == (
        "Provisioned", True, made.order_id)
    assert result.attempts == 0
    assert whmcs.orders_for("801T0000000023AAA")[0]["status"] == "Active"


def test_permanent_error_fails_with_whmcs_message(whmcs):
    async def go():
        async with WhmcsClient(settings(whmcs)) as client:
            return await Provisioner(client, policy()).provision(
                req("801T0000000024AAA", client=CLOSED_CLIENT))
    result = run(go())
    assert (result.status, result.error_code) == ("Failed", "WHMCS_ERROR")
    assert "Closed" in result.error_message and not result.may_exist


def test_unavailable_past_deadline_fails_and_remembers_it_may_exist(whmcs):
    async def go():
        async with WhmcsClient(settings(whmcs), timeout_s=0.3) as client:
            whmcs.set_faults("AddOrder", error_rate=1.0, error_kind="503")
            return await Provisioner(client, policy(retry_deadline_s=0.8)).provision(
                req("801T0000000025AAA"))
    result = run(go())
    assert (result.status, result.error_code) == ("Failed", "WHMCS_UNAVAILABLE")
    assert result.may_exist and result.attempts >= 1
    assert whmcs.orders_for("801T0000000025AAA") == []


def test_a_lookup_failing_past_the_deadline_still_remembers_it_may_exist(whmcs):
    """An earlier attempt's AddOrder may have landed (settle_at_ms): this attempt must look
    first, and WHMCS stays down through its whole window. Its Failed outcome must carry the
    doubt on — else the next attempt (the Flow's retry) calls AddOrder without a lookup."""
    async def go():
        async with WhmcsClient(settings(whmcs), timeout_s=0.3) as client:
            whmcs.set_faults("GetOrders", error_rate=1.0, error_kind="503")
            return await Provisioner(client, policy(retry_deadline_s=0.8)).provision(
                req("801T0000000026AAA"), settle_at_ms=0)
    down = run(go())
    assert (down.status, down.error_code, down.attempts) == ("Failed", "WHMCS_UNAVAILABLE", 0)
    assert down.may_exist
    assert whmcs.orders_for("801T0000000026AAA") == []  # no AddOrder was sent


def test_unreachable_whmcs_is_transient_even_for_addorder(whmcs):
    """Nothing was sent (connection refused): safe to retry, no lookup needed."""
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dead = WhmcsSettings.load({**whmcs.env(),
                               "WHMCS_API_URL": f"http://127.0.0.1:{port}/includes/api.php"})

    async def go():
        async with WhmcsClient(dead) as client:
            with pytest.raises(WhmcsTransientError, match="unreachable") as info:
                await client.add_order(req("801T0000000011AAA").params())
            assert type(info.value) is WhmcsTransientError
    run(go())


# -- the fence (streams.lease) and the compensation ----------------------------------------

class Fence:
    """Records every WHMCS write it was asked about; fences from the ``after``-th on."""

    def __init__(self, after: int | None = None) -> None:
        self.asked: list[str] = []
        self.after = after

    async def __call__(self, action: str, *, queued: bool = False) -> None:
        from streams.lease import Fenced, LeaseCheck

        if queued:  # the ask in line for a slot; the one recorded is the ask in the slot
            return
        self.asked.append(action)
        if self.after is not None and len(self.asked) > self.after:
            raise Fenced(LeaseCheck(False, "lease expired (test)"), stage=action)


def test_fence_is_asked_before_every_write_and_each_retry(whmcs):
    fence = Fence()

    async def go():
        async with WhmcsClient(settings(whmcs), timeout_s=0.5) as client:
            whmcs.set_faults("AddOrder", error_rate=1.0, error_kind="503", times=2)
            return await Provisioner(client, policy()).provision(req("801T0000000030AAA"),
                                                                 fence=fence)
    result = run(go())
    assert result.status == "Provisioned" and result.attempts == 3
    assert fence.asked == ["AddOrder", "AddOrder", "AddOrder", "AcceptOrder"]
    assert [o["status"] for o in whmcs.orders_for("801T0000000030AAA")] == ["Active"]


def test_fenced_before_addorder_makes_no_call(whmcs):
    from streams.lease import Fenced

    calls_before = sum(whmcs.counters()["calls"].values())

    async def go():
        async with WhmcsClient(settings(whmcs)) as client:
            await Provisioner(client, policy()).provision(req("801T0000000031AAA"),
                                                          fence=Fence(after=0))
    with pytest.raises(Fenced, match="before AddOrder"):
        run(go())
    assert whmcs.orders_for("801T0000000031AAA") == []
    assert sum(whmcs.counters()["calls"].values()) == calls_before


def test_fenced_before_acceptorder_leaves_the_order_pending_for_the_new_owner(whmcs):
    from streams.lease import Fenced

    async def go():
        async with WhmcsClient(settings(whmcs)) as client:
            await Provisioner(client, policy()).provision(req("801T0000000032AAA"),
                                                          fence=Fence(after=1))
    with pytest.raises(Fenced, match="before AcceptOrder"):
        run(go())
    assert [o["status"] for o in whmcs.orders_for("801T0000000032AAA")] == ["Pending"]


def test_lookup_waits_until_earlier_sends_can_no_longer_land(whmcs):
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)

    async def go():
        async with WhmcsClient(settings(whmcs)) as client:
            prov = Provisioner(client, policy(), sleep=fake_sleep, wall=lambda: 1000.0)
            return await prov.lookup(req("801T0000000033AAA"), settle_at_ms=1_012_500)
    assert run(go()) is None
    assert slept == [pytest.approx(12.5)]


def test_several_orders_for_one_marker_keep_one_and_cancel_the_pending_ones(whmcs, caplog):
    from streams import metrics

    oid = "801T0000000034AAA"
    before = metrics.COMPENSATIONS._value.get()

    async def go():
        async with WhmcsClient(settings(whmcs)) as client:
            first = await client.add_order(req(oid).params())
            second = await client.add_order(req(oid).params())
            third = await client.add_order(req(oid).params())
            await client.accept_order(second.order_id)
            with caplog.at_level(logging.ERROR, logger="streams.provision"):
                result = await Provisioner(client, policy()).provision(req(oid), settle_at_ms=0)
            return (first.order_id, second.order_id, third.order_id), result
    (first, second, third), result = run(go())
    assert (result.status, result.whmcs_order_id, result.recovered) == ("Provisioned", second,
                                                                        True)
    assert result.error_code == "DUPLICATE_WHMCS_ORDERS"
    assert result.duplicate_ids == [first, third] and result.cancelled_ids == [first, third]
    statuses = {o["id"]: o["status"] for o in whmcs.orders_for(oid)}
    assert statuses == {first: "Cancelled", second: "Active", third: "Cancelled"}
    assert metrics.COMPENSATIONS._value.get() == before + 1
    assert any(r.message.startswith("compensation:") for r in caplog.records)


def test_two_pending_orders_keep_the_lowest_and_accept_only_it(whmcs):
    oid = "801T0000000035AAA"

    async def go():
        async with WhmcsClient(settings(whmcs)) as client:
            a = await client.add_order(req(oid).params())
            b = await client.add_order(req(oid).params())
            result = await Provisioner(client, policy()).provision(req(oid), settle_at_ms=0)
            return a.order_id, b.order_id, result
    a, b, result = run(go())
    assert result.whmcs_order_id == a and result.cancelled_ids == [b]
    statuses = {o["id"]: o["status"] for o in whmcs.orders_for(oid)}
    assert statuses == {a: "Active", b: "Cancelled"}


# -- the send deadline: a request whose lease ran out is never sent -------------------------

def test_a_passed_send_deadline_sends_nothing(whmcs):
    from common.clock import lease_clock
    from common.errors import WhmcsNotSentError

    before = sum(whmcs.counters()["calls"].values())

    async def go():
        async with WhmcsClient(settings(whmcs)) as client:
            with pytest.raises(WhmcsNotSentError):
                await client.add_order(req("801T0000000040AAA").params(),
                                       send_deadline=lease_clock() - 0.01)
            made = await client.add_order(req("801T0000000041AAA").params(),
                                          send_deadline=lease_clock() + 30)
            return made
    made = run(go())
    assert made.order_id and whmcs.orders_for("801T0000000040AAA") == []
    assert sum(whmcs.counters()["calls"].values()) == before + 1


def test_the_deadline_is_checked_again_right_before_the_request_is_written(whmcs):
    """A process paused after every earlier check and before the write: the transport checks
    once the connection is ours (new or reused), before any byte of the request is written."""
    import httpx

    from common.clock import lease_clock
    from common.http_transport import SEND_DEADLINE, Http11Transport, NotSent
    from common.whmcs import encode_form

    url = whmcs.env()["WHMCS_API_URL"]
    body = encode_form({"action": "AddOrder", **req("801T0000000042AAA").params(),
                        "identifier": whmcs.env()["WHMCS_API_IDENTIFIER"],
                        "secret": whmcs.env()["WHMCS_API_SECRET"], "responsetype": "json"})
    before = sum(whmcs.counters()["calls"].values())

    async def go():
        async with httpx.AsyncClient(transport=Http11Transport()) as http:
            await http.post(url, content=b"action=GetOrders")  # a connection to reuse
            for _ in range(2):  # a reused connection, then (closed by us) a new one
                with pytest.raises(NotSent, match="send deadline passed"):
                    await http.post(url, content=body.encode(), extensions={
                        SEND_DEADLINE: lease_clock() - 0.001},
                        headers={"Content-Type": "application/x-www-form-urlencoded"})
    run(go())
    assert whmcs.orders_for("801T0000000042AAA") == []
    assert sum(whmcs.counters()["calls"].values()) == before + 1  # only the GetOrders


def test_provisioning_asks_the_fence_again_after_a_not_sent_call(whmcs):
    """The fence's deadline passes before the request leaves: nothing is sent, no lookup is
    needed (it was certainly not sent), and the next round asks the fence again."""
    from common.clock import lease_clock
    from streams.lease import Fenced, LeaseCheck

    asked: list[str] = []

    async def fence(action: str, *, queued: bool = False) -> float | None:
        if queued:
            return None
        asked.append(action)
        if len(asked) == 1:
            return lease_clock() - 1  # already past: as if paused since the check
        raise Fenced(LeaseCheck(False, "partition lost", lost=True), stage=action)

    async def go():
        async with WhmcsClient(settings(whmcs)) as client:
            await Provisioner(client, policy()).provision(req("801T0000000043AAA"), fence=fence)
    with pytest.raises(Fenced):
        run(go())
    assert asked == ["AddOrder", "AddOrder"]
    assert whmcs.orders_for("801T0000000043AAA") == []


@pytest.mark.parametrize("transport", ["ours", "httpx"])
def test_a_proxy_page_is_transient_with_its_retry_after(transport):
    """A proxy's HTML 503 with ``Retry-After``: the same error from the fast path over our
    transport and from an httpx transport; and a success answer read the same by both."""
    import httpx

    async def go():
        answers = [(503, b"text/html", b"<html>busy</html>"),
                   (200, b"application/json", b'{"result":"success","orderid":9,'
                                              b'"serviceids":"4,5","invoiceid":"7"}')]
        seen: list[bytes] = []

        async def serve(reader, writer):
            for status, kind, body in answers:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                seen.append(head + await reader.readexactly(length))
                writer.write(b"HTTP/1.1 %d X\r\nContent-Type: %s\r\nRetry-After: 7\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (status, kind, len(body), body))
                await writer.drain()
            writer.close()

        def mock(request: httpx.Request) -> httpx.Response:
            status, kind, body = answers[len(seen)]
            seen.append(request.content)
            return httpx.Response(status, content=body,
                                  headers={"Content-Type": kind.decode(), "Retry-After": "7"})

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        conf = WhmcsSettings.load({"WHMCS_API_URL": f"http://127.0.0.1:{port}/includes/api.php",
                                   "WHMCS_API_IDENTIFIER": "id", "WHMCS_API_SECRET": "s3cr3t"})
        client = WhmcsClient(conf, transport=None if transport == "ours"
                             else httpx.MockTransport(mock))
        async with server, client:
            with pytest.raises(WhmcsTransientError, match=r"HTTP 503, text/html") as info:
                await client.get_orders(client_id=CLIENT)
            assert info.value.retry_after == 7
            result = await client.add_order({"clientid": CLIENT})
        assert (result.order_id, result.service_ids, result.invoice_id) == (9, [4, 5], 7)
        assert len(seen) == 2 and all(b"action=" in s and b"secret=s3cr3t" in s for s in seen)
    run(go())
