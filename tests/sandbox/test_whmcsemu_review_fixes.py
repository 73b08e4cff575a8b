"""Review fixes of the WHMCS sandbox, each checked in process (no subprocess sandbox):

- clients seeded into a running sandbox's database by another process (``python -m
  sandbox.whmcs seed --db <live db>``) are found: AddOrder answered "Client ID Not Found"
  from the clients cache loaded at start;
- ``faults set hang_rate=1`` (no action) is every action's spec: "hang_rate=1" was taken for
  the action's name, so the fault never fired and the command said nothing;
- ``POST /__sandbox/faults`` refuses an action the sandbox does not answer (it never fired);
- ``POST /__sandbox/allowed-ips`` with a string stored the set of its characters, and
  ``POST /__sandbox/login-ban`` took NaN (or answered 500 for an infinite ``ban_after``);
- a ``whmcs_error`` fault fired before the action answered JSON without
  ``responsetype=json``, where the action's own errors answer WHMCS's default XML.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from sandbox.whmcs import __main__ as cli
from sandbox.whmcs.admin import build_app
from sandbox.whmcs.faults import Faults
from sandbox.whmcs.server import Config, Sandbox
from sandbox.whmcs.store import Store

IDENT, SECRET = "ident-emu", "secret-emu"
AUTH = {"identifier": IDENT, "secret": SECRET, "responsetype": "json"}


def run(store: Store, test: Callable[[TestClient, Sandbox], Awaitable[None]]) -> Sandbox:
    """Run ``test`` against a sandbox on ``store``, served in process."""
    sb = Sandbox(store, Config(IDENT, SECRET), Faults(1))

    async def go() -> None:
        async with TestClient(TestServer(build_app(sb))) as client:
            await test(client, sb)

    asyncio.run(go())
    return sb


@pytest.fixture
def store(tmp_path: Path) -> Store:
    store = Store(tmp_path / "whmcs.db")
    store.seed(20)
    return store


def add_order(client_id: int, **extra: str) -> dict[str, Any]:
    return {"action": "AddOrder", "clientid": str(client_id), "paymentmethod": "mailin",
            "pid[0]": "1", "billingcycle[0]": "monthly", **AUTH, **extra}


# -- 1. clients seeded by another process ---------------------------------------------------


def test_clients_seeded_into_the_live_database_are_found(store: Store) -> None:
    other = Store(store.path)  # `python -m sandbox.whmcs seed --accounts 40 --db <live db>`
    assert other.seed(40) == 38
    other.close()

    async def test(client: TestClient, sb: Sandbox) -> None:
        resp = await client.post("/includes/api.php", data=add_order(1035))
        body = await resp.json()
        assert body["result"] == "success", body
        resp = await client.post("/includes/api.php",
                                 data={"action": "GetClientsDetails", "clientid": "1036", **AUTH})
        body = await resp.json()
        assert (body["result"], body["userid"]) == ("success", 1036), body
        resp = await client.post("/includes/api.php", data=add_order(1041))  # not seeded
        assert (await resp.json())["message"] == "Client ID Not Found"

    run(store, test)


def test_a_client_read_on_a_miss_is_cached(store: Store) -> None:
    other = Store(store.path)
    other.seed(40)
    other.close()
    assert 1035 not in store.clients
    found = store.client(1035)
    assert found is not None and store.clients[1035] is found
    assert store.client(999_999) is None  # the unknown client stays unknown


# -- 2. faults: no action named, an action the sandbox does not answer ------------------------


def test_faults_set_without_an_action_sets_every_actions_spec(monkeypatch) -> None:
    sent: list[Any] = []

    class Answer:
        status_code = 200

        @staticmethod
        def json() -> dict[str, Any]:
            return {}

    def post(url: str, json: Any) -> Answer:
        sent.append(json)
        return Answer()

    monkeypatch.setattr(cli.httpx, "post", post)
    assert cli.main(["faults", "set", "hang_rate=1", "hang_s=5", "--url", "http://x"]) == 0
    assert cli.main(["faults", "set", "AddOrder", "times=1", "--url", "http://x"]) == 0
    assert sent == [{"faults": {"*": {"hang_rate": 1, "hang_s": 5}}},
                    {"faults": {"AddOrder": {"times": 1}}}]


def test_a_fault_for_an_action_the_sandbox_does_not_answer_is_refused(store: Store) -> None:
    async def test(client: TestClient, sb: Sandbox) -> None:
        for body in ({"faults": {"AddOrders": {"hang_rate": 1}}},
                     {"action": "GetClient", "latency_ms": 5},
                     {"faults": {"*": {"latency_ms": 1}, "hang_rate=1": {"hang_s": 5}}}):
            resp = await client.post("/__sandbox/faults", json=body)
            assert resp.status == 400, body
            error = (await resp.json())["error"]
            assert "action" in error and "addorder" in error, error
            assert sb.faults.specs == {}  # nothing changed
        for action in ("AddOrder", "acceptorder", "GETORDERS", "*"):
            resp = await client.post("/__sandbox/faults",
                                     json={"faults": {action: {"latency_ms": 1}}})
            assert resp.status == 200, action

    run(store, test)


# -- 3. the allow-list and the login ban take only what they can use -------------------------


def test_the_allow_list_is_a_list_of_strings(store: Store) -> None:
    async def test(client: TestClient, sb: Sandbox) -> None:
        for body in ({"allowed_ips": "10.0.0.5,127.0.0.1"}, {}, {"allowed_ips": [1]},
                     {"allowed_ips": None}, ["127.0.0.1"]):
            resp = await client.post("/__sandbox/allowed-ips", json=body)
            assert resp.status == 400, body
            assert "allowed_ips" in (await resp.json())["error"]
        resp = await client.post("/__sandbox/allowed-ips", data=b"{not json",
                                 headers={"Content-Type": "application/json"})
        assert resp.status == 400
        assert sb.config.allowed_ips == {"127.0.0.1", "::1"}  # unchanged
        resp = await client.post("/__sandbox/allowed-ips",
                                 json={"allowed_ips": ["127.0.0.1", "10.0.0.5"]})
        assert (await resp.json()) == {"allowed_ips": ["10.0.0.5", "127.0.0.1"]}

    run(store, test)


@pytest.mark.parametrize("text", ['{"ban_s": NaN}', '{"ban_window_s": Infinity}',
                                  '{"ban_s": -Infinity}', '{"ban_after": NaN}',
                                  '{"ban_after": Infinity}'])
def test_the_login_ban_takes_finite_values_only(store: Store, text: str) -> None:
    async def test(client: TestClient, sb: Sandbox) -> None:
        resp = await client.post("/__sandbox/login-ban", data=text.encode(),
                                 headers={"Content-Type": "application/json"})
        assert resp.status == 400, await resp.text()
        assert (sb.config.ban_after, sb.config.ban_window_s, sb.config.ban_s) == (3, 1800, 900)

    run(store, test)


# -- 4. an injected WHMCS error answers in the format asked for -------------------------------


def test_an_injected_whmcs_error_answers_xml_without_responsetype_json(store: Store) -> None:
    async def test(client: TestClient, sb: Sandbox) -> None:
        sb.faults.set("AddOrder", {"whmcs_error_rate": 1, "whmcs_error": "Database is locked"})
        resp = await client.post("/includes/api.php",
                                 data={**add_order(1005), "responsetype": "xml"})
        text = await resp.text()
        assert resp.content_type == "text/xml", text
        assert "<result>error</result><message>Database is locked</message>" in text
        resp = await client.post("/includes/api.php", data=add_order(1005))
        assert json.loads(await resp.text()) == {"result": "error",
                                                 "message": "Database is locked"}

    run(store, test)
    assert store.db.execute("SELECT COUNT(*) FROM orders").fetchone()[0] == 0
