"""An unanswered WHMCS write's settle moment counts from when its request was *written*, not
from when it was handed to the client: the connect (DNS, TCP, TLS handshake: up to
min(WHMCS_TIMEOUT_S, 5) s) comes in between. A request written C s after it was handed over
whose connection then dropped (a load balancer's reset, a proxy's 502/504) may be committed
by WHMCS up to WHMCS_TIMEOUT_S after the write: a lookup C s sooner finds nothing and a
second AddOrder follows (/tmp/review-lease/settle_connect.py: "short by 3.00 s").

No real sleeping: the provisioner's wall clock is frozen and moves only by the connect's
C seconds, so the write's moment is known exactly."""

from __future__ import annotations

import asyncio
import urllib.parse
from typing import Any

import orjson
import pytest

from common import http_transport
from common.settings import WhmcsSettings
from common.whmcs import WhmcsClient, WhmcsOrder
from streams.mapping import WhmcsItem, WhmcsOrderRequest
from streams.provision import Provisioner, ProvisionPolicy, ProvisionResult

CONNECT_S = 3.0  # DNS + TCP + TLS handshake
T, GRACE = 15.0, 2.0
OID = "801000000000001AAA"


class Settled(Exception):
    """Ends the scenario once the settle moment is handed over."""


class FakeWhmcs:
    """api.php on a local socket: answers each action as ``script`` says (``"drop"``: the
    request is read — WHMCS may commit it — and the connection closed with no answer),
    writing down when (on the test's wall clock) each request arrived."""

    def __init__(self, wall: list[float], script: dict[str, Any]) -> None:
        self.wall, self.script = wall, script
        self.seen: list[tuple[str, float]] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/includes/api.php"

    def written_at(self, action: str) -> float:
        return next(at for name, at in self.seen if name == action)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:"))
                form = urllib.parse.parse_qs((await reader.readexactly(length)).decode())
                action = form["action"][0]
                self.seen.append((action, self.wall[0]))
                answer = self.script[action]
                if answer == "drop":
                    writer.transport.abort()
                    return
                body = orjson.dumps({"result": "success", **answer})
                # Connection: close — the next write needs a connection of its own (a connect)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body)
                             + body)
                await writer.drain()
                writer.close()
                return
        except (asyncio.IncompleteReadError, ConnectionError):
            return


@pytest.fixture
def slow_connect(monkeypatch):
    """Each new connection takes CONNECT_S seconds of the test's wall clock."""
    wall = [1000.0]
    original = http_transport._Pool.connect

    async def connect(self, timeout):
        wall[0] += CONNECT_S
        return await original(self, timeout)
    monkeypatch.setattr(http_transport._Pool, "connect", connect)
    return wall


def request() -> WhmcsOrderRequest:
    return WhmcsOrderRequest(order_id=OID, client_id=7,
                             items=(WhmcsItem(pid=4, billingcycle="annually", qty=1),),
                             notes=f"sfOrderId={OID}")


async def provisioner(wall: list[float], script: dict[str, Any]
                      ) -> tuple[Provisioner, WhmcsClient, FakeWhmcs]:
    fake = FakeWhmcs(wall, script)
    url = await fake.start()
    client = WhmcsClient(WhmcsSettings.load({
        "WHMCS_API_URL": url, "WHMCS_API_IDENTIFIER": "id", "WHMCS_API_SECRET": "secretsecret",
        "WHMCS_TIMEOUT_S": str(T)}))
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
    prov = Provisioner(client, ProvisionPolicy(whmcs_timeout_s=T, lookup_grace_s=GRACE,
                                               backoff_initial_s=0.01, backoff_max_s=0.01),
                       sleep=sleep, wall=lambda: wall[0])
    return prov, client, fake


def test_an_unanswered_addorder_is_looked_up_only_once_settled_from_its_write(slow_connect):
    wall = slow_connect
    handed: list[float] = []
    settled: list[int] = []

    async def go():
        prov, client, fake = await provisioner(wall, {"AddOrder": "drop"})
        real_add = client.add_order

        async def add_order(params, **kw):
            handed.append(wall[0])
            return await real_add(params, **kw)
        client.add_order = add_order

        async def lookup(_request, *, settle_at_ms=None, **_kw):
            settled.append(settle_at_ms)
            raise Settled
        prov.lookup = lookup
        with pytest.raises(Settled):
            await prov.provision(request())
        await client.aclose()
        return fake.written_at("AddOrder")
    written = asyncio.run(go())
    assert written == handed[0] + CONNECT_S  # the request left after the connect
    assert_settled_from(written, settled[0], "the lookup's")


def stop_at_settle(settled: list[int]):
    """A ``_wait_until`` that records the settle moment it was given and stops there."""
    async def wait_until(settle_at_ms, _before, _order_id):
        settled.append(settle_at_ms)
        raise Settled
    return wait_until


def assert_settled_from(written: float, settle_at_ms: int, what: str) -> None:
    """The settle moment is no sooner than the write's timeout and grace after the write."""
    short = written + T + GRACE - settle_at_ms / 1000
    assert short <= 0, f"{what} settle moment is short by {short:.2f} s"


def test_an_unanswered_acceptorder_is_read_only_once_settled_from_its_write(slow_connect):
    wall = slow_connect
    settled: list[int] = []

    async def go():
        prov, client, fake = await provisioner(wall, {
            "AddOrder": {"orderid": 41, "serviceids": "", "addonids": "", "invoiceid": ""},
            "AcceptOrder": "drop"})

        prov._wait_until = stop_at_settle(settled)
        with pytest.raises(Settled):
            await prov.provision(request())
        await client.aclose()
        return fake.written_at("AcceptOrder")
    written = asyncio.run(go())
    assert_settled_from(written, settled[0], "the AcceptOrder's")


def test_an_unanswered_cancelorder_is_read_only_once_settled_from_its_write(slow_connect):
    wall = slow_connect
    settled: list[int] = []

    async def go():
        prov, client, fake = await provisioner(wall, {"CancelOrder": "drop"})

        def order(oid: int) -> WhmcsOrder:
            return WhmcsOrder(id=oid, client_id=7, status="Pending", notes=f"sfOrderId={OID}",
                              invoice_id=None, service_ids=[])
        prov._wait_until = stop_at_settle(settled)
        with pytest.raises(Settled):
            await prov.compensate(request(), order(41), [order(42)],
                                  ProvisionResult("Provisioned", 41))
        await client.aclose()
        return fake.written_at("CancelOrder")
    written = asyncio.run(go())
    assert_settled_from(written, settled[0], "the CancelOrder's")


def refuse_first_connect(monkeypatch) -> None:
    """The transport's next connect is refused (nothing of its request written); the ones
    after it connect."""
    original = http_transport._Pool.connect
    refused = [1]

    async def connect(self, timeout):
        if refused[0]:
            refused[0] -= 1
            raise http_transport.httpx.ConnectError("connection refused")
        return await original(self, timeout)
    monkeypatch.setattr(http_transport._Pool, "connect", connect)


def test_an_addorder_that_never_reached_the_wire_is_not_looked_up(monkeypatch):
    """The connect failed: not a byte of the AddOrder left, nothing can land — the retry
    creates the order at once, with no lookup and no wait for a settle moment."""
    wall = [1000.0]
    refuse_first_connect(monkeypatch)

    async def go():
        prov, client, fake = await provisioner(wall, {
            "AddOrder": {"orderid": 41, "serviceids": "", "addonids": "", "invoiceid": ""},
            "AcceptOrder": {}, "GetOrders": {"totalresults": 0, "orders": {"order": []}}})
        result = await prov.provision(request())
        await client.aclose()
        return result, fake
    result, fake = asyncio.run(go())
    # one attempt: the AddOrder whose connect failed wrote nothing, so it is not counted
    assert (result.status, result.whmcs_order_id, result.attempts) == ("Provisioned", 41, 1)
    assert [action for action, _ in fake.seen] == ["AddOrder", "AcceptOrder"]


def test_a_found_orders_acceptorder_that_never_reached_the_wire_is_tried_again_soon(
        monkeypatch):
    """The sweep's accept of a found Pending order: its connect failed, so no AcceptOrder
    can be running — read and accepted again after the grace, not after WHMCS_TIMEOUT_S."""
    wall = [1000.0]
    refuse_first_connect(monkeypatch)
    slept: list[float] = []

    async def go():
        prov, client, fake = await provisioner(wall, {
            "AcceptOrder": {},
            "GetOrders": {"totalresults": 1, "orders": {"order": [
                {"id": 41, "userid": 7, "status": "Pending"}]}}})

        async def sleep(seconds):
            slept.append(seconds)
        prov._sleep = sleep
        found = ProvisionResult("Provisioned", 41, recovered=True, client_id=7)
        result = await prov.accept_found(found)
        await client.aclose()
        return result, fake
    result, fake = asyncio.run(go())
    assert (result.status, result.whmcs_order_id) == ("Provisioned", 41)
    assert [action for action, _ in fake.seen] == ["GetOrders", "AcceptOrder"]
    assert slept == [GRACE]
