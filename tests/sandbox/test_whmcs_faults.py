"""Fault injection, counters and restart persistence of the WHMCS sandbox, over real HTTP."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from sandbox import seed
from sandbox.whmcs.harness import WhmcsSandbox, whmcs_sandbox

CLIENT = seed.FIRST_CLIENT_ID + 5
_marker = itertools.count(1)


@pytest.fixture
def whmcs_sb(tmp_path: Any) -> Iterator[WhmcsSandbox]:
    with whmcs_sandbox(tmp_path, accounts=20, fault_seed=7) as wh:
        yield wh


def whmcs_form(wh: WhmcsSandbox, action: str, **params: Any) -> dict[str, str]:
    form = {"action": action, "identifier": wh.identifier, "secret": wh.secret,
            "responsetype": "json"}
    form.update({k: str(v) for k, v in params.items()})
    return form


def whmcs_add_order_form(wh: WhmcsSandbox, marker: str) -> dict[str, str]:
    return whmcs_form(wh, "AddOrder", clientid=CLIENT, paymentmethod="mailin",
                      **{"pid[0]": 1, "billingcycle[0]": "monthly"},
                      notes=f"sfOrderId={marker}")


def new_marker() -> str:
    return f"801TESTFLT{next(_marker):08d}"


def seconds_to_succeed(wh: WhmcsSandbox, action: str) -> float:
    """How long ``action`` took to answer, asserting that it succeeded. (Also
    test_whmcs_fault_injection.)"""
    start = time.perf_counter()
    assert wh.call(action)["result"] == "success"
    return time.perf_counter() - start


def test_commit_then_hang_times_out_but_order_exists(whmcs_sb: WhmcsSandbox) -> None:
    whmcs_sb.set_faults("AddOrder", hang_rate=1.0, hang_s=5, times=1)
    marker = new_marker()
    with pytest.raises(httpx.TimeoutException):
        httpx.post(whmcs_sb.api_url, data=whmcs_add_order_form(whmcs_sb, marker), timeout=1.0)
    # The caller does not know; a lookup shows the order WHMCS created.
    orders = whmcs_sb.call("GetOrders", userid=CLIENT)["orders"]["order"]
    assert [o["notes"] for o in orders] == [f"sfOrderId={marker}"]
    assert orders[0]["status"] == "Pending"
    # times=1: the next call answers normally.
    second = httpx.post(whmcs_sb.api_url, data=whmcs_add_order_form(whmcs_sb, new_marker()),
                        timeout=1.0)
    assert second.json()["result"] == "success"


def test_commit_then_drop_on_accept(whmcs_sb: WhmcsSandbox) -> None:
    order_id = whmcs_sb.call("AddOrder", clientid=CLIENT, paymentmethod="mailin",
                             pid=[1])["orderid"]
    whmcs_sb.set_faults("AcceptOrder", hang_rate=1.0, hang_mode="drop")
    started = time.monotonic()
    # a dropped connection, not a hang: no ReadTimeout after the client's 5 s
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.post(whmcs_sb.api_url, timeout=5,
                   data=whmcs_form(whmcs_sb, "AcceptOrder", orderid=order_id, autosetup=1))
    assert time.monotonic() - started < 2
    whmcs_sb.clear_faults()
    order = whmcs_sb.call("GetOrders", id=order_id)["orders"]["order"][0]
    assert order["status"] == "Active"


@pytest.mark.parametrize(("kind", "status"), [("500", 500), ("503", 503), ("html", 200)])
def test_http_errors_and_html_pages_write_nothing(whmcs_sb: WhmcsSandbox, kind: str,
                                                  status: int) -> None:
    whmcs_sb.set_faults("AddOrder", error_rate=1.0, error_kind=kind)
    resp = httpx.post(whmcs_sb.api_url, data=whmcs_add_order_form(whmcs_sb, new_marker()))
    assert resp.status_code == status
    assert resp.headers["content-type"].startswith("text/html")
    assert whmcs_sb.counters()["orders_created"] == 0
    # Other actions are untouched by an AddOrder fault.
    assert whmcs_sb.call("GetProducts")["result"] == "success"


def test_error_after_commit_loses_only_the_answer(whmcs_sb: WhmcsSandbox) -> None:
    whmcs_sb.set_faults("AddOrder", error_rate=1.0, error_kind="503", error_after_commit=True)
    marker = new_marker()
    resp = httpx.post(whmcs_sb.api_url, data=whmcs_add_order_form(whmcs_sb, marker))
    assert resp.status_code == 503
    assert len(whmcs_sb.orders_for(marker)) == 1


def test_chosen_whmcs_error_message(whmcs_sb: WhmcsSandbox) -> None:
    whmcs_sb.set_faults("*", whmcs_error_rate=1.0, whmcs_error="Database is locked")
    res = whmcs_sb.call("AddOrder", clientid=CLIENT, paymentmethod="mailin", pid=[1])
    assert res == {"result": "error", "message": "Database is locked"}
    assert whmcs_sb.counters()["orders_created"] == 0


def test_fault_matched_to_one_order_leaves_the_others_alone(whmcs_sb: WhmcsSandbox) -> None:
    target, other = new_marker(), new_marker()
    whmcs_sb.set_faults("AddOrder", error_rate=1.0, error_kind="500", match=f"sfOrderId={target}")
    whmcs_sb.set_faults("AddOrder", whmcs_error_rate=1.0, whmcs_error="second", times=1,
                        match=f"sfOrderId={other}")
    assert httpx.post(whmcs_sb.api_url,
                      data=whmcs_add_order_form(whmcs_sb, target)).status_code == 500
    assert httpx.post(whmcs_sb.api_url,
                      data=whmcs_add_order_form(whmcs_sb, other)).json()["message"] == "second"
    again = httpx.post(whmcs_sb.api_url, data=whmcs_add_order_form(whmcs_sb, other)).json()
    assert again["result"] == "success"  # times=1 used up
    assert httpx.post(whmcs_sb.api_url, data=whmcs_add_order_form(whmcs_sb, new_marker())
                      ).json()["result"] == "success"
    assert whmcs_sb.orders_for(target) == [] and len(whmcs_sb.orders_for(other)) == 1
    whmcs_sb.clear_faults("AddOrder")
    assert whmcs_sb.faults()["faults"] == {}


def test_invalid_ip_flap_and_accesskey(whmcs_sb: WhmcsSandbox) -> None:
    whmcs_sb.set_faults("*", invalid_ip_rate=1.0)
    resp = httpx.post(whmcs_sb.api_url, data=whmcs_form(whmcs_sb, "GetProducts"))
    assert resp.status_code == 403
    assert resp.json() == {"result": "error", "message": "Invalid IP 127.0.0.1"}
    with_key = whmcs_form(whmcs_sb, "GetProducts", accesskey=whmcs_sb.access_key)
    assert httpx.post(whmcs_sb.api_url, data=with_key).json()["result"] == "success"
    whmcs_sb.set_faults("*", invalid_ip_rate=1.0, invalid_ip_ignores_accesskey=True)
    assert httpx.post(whmcs_sb.api_url, data=with_key).status_code == 403


def test_latency(whmcs_sb: WhmcsSandbox) -> None:
    """The latency fault delays its own action only: 2 s on GetProducts, while GetOrders
    answers in well under half of that (a margin no slow machine comes near)."""
    whmcs_sb.set_faults("GetProducts", latency_ms=2000)
    assert seconds_to_succeed(whmcs_sb, "GetProducts") >= 2.0
    assert seconds_to_succeed(whmcs_sb, "GetOrders") < 1.0


def test_seeded_faults_repeat(whmcs_sb: WhmcsSandbox) -> None:
    def outcomes() -> list[int]:
        whmcs_sb.set_fault_seed(42)
        whmcs_sb.set_faults("GetProducts", error_rate=0.5, error_kind="500")
        return [httpx.post(whmcs_sb.api_url,
                           data=whmcs_form(whmcs_sb, "GetProducts")).status_code
                for _ in range(20)]

    first = outcomes()
    assert first == outcomes()
    assert {200, 500} == set(first)


def test_bad_fault_spec_is_refused(whmcs_sb: WhmcsSandbox) -> None:
    with pytest.raises(httpx.HTTPStatusError):
        whmcs_sb.set_faults("AddOrder", hang_rat=1.0)


def test_counters_and_duplicates(whmcs_sb: WhmcsSandbox) -> None:
    once, twice = new_marker(), new_marker()
    for marker in (once, twice, twice):
        whmcs_sb.call("AddOrder", clientid=CLIENT, paymentmethod="mailin", pid=[1],
                      notes=f"sfOrderId={marker}")
    whmcs_sb.call("AddOrder", clientid=CLIENT, paymentmethod="mailin", pid=[1], notes="none")
    whmcs_sb.call("GetOrders")
    counters = whmcs_sb.counters()
    assert counters["calls"] == {"AddOrder": 4, "GetOrders": 1}
    assert whmcs_sb.calls() == counters["calls"]
    assert counters["orders_created"] == 4
    assert counters["orders_by_marker"] == {once: 1, twice: 2}
    assert whmcs_sb.duplicates() == {twice: 2}
    assert [o["sf_order_id"] for o in whmcs_sb.orders_for(twice)] == [twice, twice]
    whmcs_sb.reset_counters()
    assert whmcs_sb.counters()["calls"] == {}
    assert whmcs_sb.calls() == {}


def test_restart_keeps_state(whmcs_sb: WhmcsSandbox) -> None:
    marker = new_marker()
    res = whmcs_sb.call("AddOrder", clientid=CLIENT, paymentmethod="mailin", pid=[1],
                        notes=f"sfOrderId={marker}")
    whmcs_sb.call("AcceptOrder", orderid=res["orderid"], autosetup=1)
    port = whmcs_sb.port
    whmcs_sb.restart()
    assert whmcs_sb.port == port
    order = whmcs_sb.call("GetOrders", id=res["orderid"])["orders"]["order"][0]
    assert order["status"] == "Active" and order["notes"] == f"sfOrderId={marker}"
    assert whmcs_sb.orders_for(marker)[0]["id"] == res["orderid"]
    nxt = whmcs_sb.call("AddOrder", clientid=CLIENT, paymentmethod="mailin", pid=[1])
    assert nxt["orderid"] == res["orderid"] + 1


def test_whmcs_error_after_commit_on_accept_runs_the_module_then_refuses(
        whmcs_sb: WhmcsSandbox) -> None:
    """As WHMCS's AcceptOrder does when a provisioning module fails: the services are set
    up (autosetup), the order stays Pending, and the answer is result=error with the
    module's message. Another action commits in full, then answers the error."""
    marker = new_marker()
    made = httpx.post(whmcs_sb.api_url, data=whmcs_add_order_form(whmcs_sb, marker)).json()
    whmcs_sb.set_faults("AcceptOrder", whmcs_error_rate=1.0, whmcs_error_after_commit=True,
                        whmcs_error="Module Create Failed: quota exceeded", times=1)
    res = whmcs_sb.call("AcceptOrder", orderid=made["orderid"], autosetup=1)
    assert res == {"result": "error", "message": "Module Create Failed: quota exceeded"}
    order = whmcs_sb.orders_for(marker)[0]
    assert order["status"] == "Pending"
    services = whmcs_sb.call("GetClientsProducts", serviceid=order["serviceids"][0])
    assert services["products"]["product"][0]["status"] == "Active"
    # accepted again (the fault used up): the order becomes Active
    assert whmcs_sb.call("AcceptOrder", orderid=made["orderid"]) == {"result": "success"}
    assert whmcs_sb.orders_for(marker)[0]["status"] == "Active"

    other = new_marker()
    whmcs_sb.set_faults("AddOrder", whmcs_error_rate=1.0, whmcs_error_after_commit=True,
                        whmcs_error="An unexpected error occurred", times=1)
    resp = httpx.post(whmcs_sb.api_url, data=whmcs_add_order_form(whmcs_sb, other)).json()
    assert resp == {"result": "error", "message": "An unexpected error occurred"}
    assert len(whmcs_sb.orders_for(other)) == 1
