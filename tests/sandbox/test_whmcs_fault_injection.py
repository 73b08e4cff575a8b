"""The WHMCS sandbox's fault injection does what its spec says, and only that: an empty
chosen error still writes nothing, a spec's fields are checked when it is set (a refused
POST changes nothing), ``times`` is used up only by requests a fault reached (latency
included), and several rates on one spec each hold."""

from __future__ import annotations

import itertools
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sandbox import seed
from sandbox.whmcs.faults import Faults
from sandbox.whmcs.harness import WhmcsSandbox, whmcs_sandbox
from tests.sandbox.test_whmcs_faults import seconds_to_succeed

ROOT = Path(__file__).resolve().parents[2]
CLIENT = seed.FIRST_CLIENT_ID + 3
_marker = itertools.count(1)


@pytest.fixture(scope="module")
def wh_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WhmcsSandbox]:
    with whmcs_sandbox(tmp_path_factory.mktemp("whmcs-fault-injection"), accounts=20,
                       fault_seed=11) as wh:
        yield wh


@pytest.fixture
def wh(wh_module: WhmcsSandbox) -> Iterator[WhmcsSandbox]:
    """The shared sandbox with no fault, no ban and the default allow-list."""
    wh_module.clear_faults()
    wh_module.lift_login_bans()
    yield wh_module
    wh_module.clear_faults()
    wh_module.set_allowed_ips(["127.0.0.1", "::1"])
    wh_module.set_login_ban(ban_after=3, ban_window_s=1800, ban_s=900)
    wh_module.lift_login_bans()


def new_marker() -> str:
    return f"801TESTINJ{next(_marker):08d}"


def form(wh: WhmcsSandbox, action: str, **params: Any) -> dict[str, str]:
    out = {"action": action, "identifier": wh.identifier, "secret": wh.secret,
           "responsetype": "json"}
    out.update({k: str(v) for k, v in params.items()})
    return out


def add_order_form(wh: WhmcsSandbox, marker: str, **extra: Any) -> dict[str, str]:
    return form(wh, "AddOrder", clientid=CLIENT, paymentmethod="mailin",
                **{"pid[0]": 1, "billingcycle[0]": "monthly"}, notes=f"sfOrderId={marker}",
                **extra)


def post_faults(wh: WhmcsSandbox, body: Any) -> httpx.Response:
    return httpx.post(f"{wh.admin_url}/faults", json=body, timeout=10)


def whmcs_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sandbox.whmcs", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False)


# -- 1. a chosen WHMCS error with an empty message ------------------------------------------


def test_an_empty_whmcs_error_before_the_action_writes_nothing(wh: WhmcsSandbox) -> None:
    wh.set_faults("AddOrder", whmcs_error_rate=1, whmcs_error="")
    marker = new_marker()
    resp = httpx.post(wh.api_url, data=add_order_form(wh, marker), timeout=10)
    assert (resp.status_code, resp.json()) == (200, {"result": "error", "message": ""})
    assert wh.orders_for(marker) == []


def test_an_empty_whmcs_error_after_commit_still_commits(wh: WhmcsSandbox) -> None:
    wh.set_faults("AddOrder", whmcs_error_rate=1, whmcs_error="",
                  whmcs_error_after_commit=True)
    marker = new_marker()
    resp = httpx.post(wh.api_url, data=add_order_form(wh, marker), timeout=10)
    assert resp.json() == {"result": "error", "message": ""}
    assert len(wh.orders_for(marker)) == 1


# -- 2. a spec's fields are typed ------------------------------------------------------------


@pytest.mark.parametrize(("field", "value"), [
    ("hang_rate", "half"), ("hang_rate", 1.5), ("hang_rate", -0.1), ("hang_rate", True),
    ("error_rate", None), ("latency_ms", -5), ("latency_ms", "NaN"), ("hang_s", [1]),
    ("times", "once"), ("times", -1), ("times", 1.5), ("times", True),
    ("error_after_commit", "maybe"), ("error_after_commit", 2),
    ("whmcs_error", None), ("whmcs_error", {"a": 1}), ("match", True), ("match", [1006]),
    ("error_kind", 404), ("error_kind", None), ("hang_mode", 1),
])
def test_a_field_of_the_wrong_type_is_refused_naming_it(wh: WhmcsSandbox, field: str,
                                                        value: Any) -> None:
    resp = post_faults(wh, {"faults": {"AddOrder": {field: value}}})
    assert resp.status_code == 400
    assert field in resp.json()["error"]
    assert wh.faults()["faults"] == {}


def test_numbers_and_text_are_taken_as_the_field_wants(wh: WhmcsSandbox) -> None:
    resp = post_faults(wh, {"faults": {"AddOrder": {
        "error_kind": 500, "error_rate": "1", "match": 1006, "times": "2",
        "error_after_commit": "false", "latency_ms": 1}}})
    assert resp.status_code == 200, resp.text
    spec = wh.faults()["faults"]["addorder|1006"]
    assert (spec["error_kind"], spec["error_rate"], spec["match"], spec["times"],
            spec["error_after_commit"]) == ("500", 1.0, "1006", 2, False)
    # a call without 1006 in it is untouched; one with it gets the injected page
    ok = httpx.post(wh.api_url, data=add_order_form(wh, new_marker()), timeout=10)
    assert ok.json()["result"] == "success"
    hit = httpx.post(wh.api_url, data=add_order_form(wh, f"801X{1006:014d}"), timeout=10)
    assert hit.status_code == 500
    assert "temporary error" in hit.text  # the sandbox's page, not an exception's
    assert wh.faults()["fired_kinds"] == {"addorder|1006": {"latency": 1, "error": 1}}


def test_the_cli_keeps_text_fields_as_text(wh: WhmcsSandbox) -> None:
    """What a text field is given is its text, even when it reads as JSON: ``null`` is not
    a missing message, ``1.50`` not the number 1.5 (which would be matched as ``1.5``)."""
    proc = whmcs_cli("faults", "set", "AddOrder", "error_rate=1", "error_kind=500",
                     "whmcs_error=null", "times=1", "--url", wh.api_url)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    spec = wh.faults()["faults"]["addorder"]
    assert (spec["error_kind"], spec["whmcs_error"], spec["error_rate"], spec["times"]) == \
        ("500", "null", 1.0, 1)
    proc = whmcs_cli("faults", "set", "AddOrder", "match=1.50", "whmcs_error_rate=1",
                     "--url", wh.api_url)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert wh.faults()["faults"]["addorder|1.50"]["match"] == "1.50"


def test_a_body_that_is_not_a_table_is_refused(wh: WhmcsSandbox) -> None:
    for body in ([1, 2], {"faults": [1]}, {"faults": {"AddOrder": "hang"}},
                 {"seed": "abc"}, {"seed": 1.5}):
        resp = post_faults(wh, body)
        assert resp.status_code == 400, body


# -- 3. a fault is used up only by a request it reached -------------------------------------


def test_a_refused_request_does_not_use_up_the_fault(wh: WhmcsSandbox) -> None:
    wh.set_faults("AddOrder", hang_rate=1, hang_s=3, times=1)
    wrong = {**add_order_form(wh, new_marker()), "secret": "wrong-secret"}
    resp = httpx.post(wh.api_url, data=wrong, timeout=2)
    assert resp.json()["message"] == "Authentication Failed"
    wh.set_allowed_ips([])  # no access key sent: Invalid IP
    resp = httpx.post(wh.api_url, data=add_order_form(wh, new_marker()), timeout=2)
    assert resp.json()["message"] == "Invalid IP 127.0.0.1"
    wh.set_allowed_ips(["127.0.0.1", "::1"])
    wh.set_login_ban(ban_after=1)
    httpx.post(wh.api_url, data=wrong, timeout=2)
    resp = httpx.post(wh.api_url, data=add_order_form(wh, new_marker()), timeout=2)
    assert resp.json()["message"] == "IP Banned"
    wh.lift_login_bans()
    assert wh.faults()["fired"] == {"addorder": 0}
    assert wh.faults()["fired_kinds"] == {"addorder": {}}
    # the fault is still there for the first call it reaches
    marker = new_marker()
    with pytest.raises(httpx.TimeoutException):
        httpx.post(wh.api_url, data=add_order_form(wh, marker), timeout=1)
    assert len(wh.orders_for(marker)) == 1
    assert wh.faults()["fired"] == {"addorder": 1}
    assert wh.faults()["fired_kinds"] == {"addorder": {"hang": 1}}


def test_an_invalid_ip_flap_counts_when_it_refuses(wh: WhmcsSandbox) -> None:
    wh.set_faults("GetProducts", invalid_ip_rate=1, times=1)
    with_key = form(wh, "GetProducts", accesskey=wh.access_key)
    # the access key bypasses the flap: it had no effect, it is not used up
    assert httpx.post(wh.api_url, data=with_key, timeout=5).json()["result"] == "success"
    assert wh.faults()["fired"] == {"getproducts": 0}
    resp = httpx.post(wh.api_url, data=form(wh, "GetProducts"), timeout=5)
    assert (resp.status_code, resp.json()["message"]) == (403, "Invalid IP 127.0.0.1")
    assert wh.faults()["fired"] == {"getproducts": 1}
    assert wh.faults()["fired_kinds"] == {"getproducts": {"invalid_ip": 1}}
    assert httpx.post(wh.api_url, data=form(wh, "GetProducts"),
                      timeout=5).json()["result"] == "success"


# -- 4. times limits latency too -------------------------------------------------------------


def test_times_limits_a_latency_only_spec(wh: WhmcsSandbox) -> None:
    wh.set_faults("GetProducts", latency_ms=1500, times=1)
    assert seconds_to_succeed(wh, "GetProducts") >= 1.5
    assert seconds_to_succeed(wh, "GetProducts") < 1.0
    assert wh.faults()["fired"] == {"getproducts": 1}
    assert wh.faults()["fired_kinds"] == {"getproducts": {"latency": 1}}


def test_faults_plan_counts_latency_towards_times() -> None:
    faults = Faults(seed=1)
    faults.set("GetProducts", {"latency_ms": 1, "times": 2})
    delayed = []
    for _ in range(4):
        plan = faults.plan("GetProducts")
        assert faults.fire(plan)
        delayed.append(plan.latency_s > 0)
    assert delayed == [True, True, False, False]
    assert faults.describe()["fired"] == {"getproducts": 2}
    assert faults.describe()["fired_kinds"] == {"getproducts": {"latency": 2}}


def test_faults_count_what_each_fired_request_met() -> None:
    """``fired_kinds`` (what ``bench.chaos`` reports as the faults applied) counts each kind
    a fired plan carried, per table key; a plan drawn but not fired counts nothing."""
    faults = Faults(seed=2)
    faults.set("AddOrder", {"hang_rate": 1, "hang_s": 3, "latency_ms": 5})
    faults.set("AcceptOrder", {"error_rate": 1, "error_kind": "html"})
    faults.set("GetOrders", {"whmcs_error_rate": 1, "times": 1})
    faults.set("GetClients", {"hang_rate": 1, "hang_mode": "drop"})
    for action in ("AddOrder", "AddOrder", "AcceptOrder", "GetOrders", "GetOrders",
                   "GetClients"):
        assert faults.fire(faults.plan(action))
    faults.plan("AcceptOrder")  # drawn, never reached its request
    assert faults.describe()["fired_kinds"] == {
        "addorder": {"latency": 2, "hang": 2}, "acceptorder": {"error": 1},
        "getorders": {"whmcs_error": 1}, "getclients": {"drop": 1}}
    faults.clear()
    assert faults.describe()["fired_kinds"] == {}


# -- 5. several rates on one spec ------------------------------------------------------------


def test_each_rate_holds_beside_another() -> None:
    faults = Faults(seed=5)
    faults.set("AddOrder", {"error_rate": 0.5, "hang_rate": 0.5})
    plans = [faults.plan("AddOrder") for _ in range(4000)]
    hangs = sum(p.hang_s is not None for p in plans) / len(plans)
    errors = sum(p.error_kind is not None for p in plans) / len(plans)
    assert 0.45 < hangs < 0.55 and 0.45 < errors < 0.55
    assert all((p.hang_s is None) != (p.error_kind is None) for p in plans)


def test_rates_adding_up_to_more_than_one_are_refused(wh: WhmcsSandbox) -> None:
    resp = post_faults(wh, {"faults": {"AddOrder": {"error_rate": 0.7, "hang_rate": 0.7}}})
    assert resp.status_code == 400
    assert "error_rate" in resp.json()["error"] and "hang_rate" in resp.json()["error"]
    ok = post_faults(wh, {"faults": {"AddOrder": {"invalid_ip_rate": 0.1,
                                                  "whmcs_error_rate": 0.2,
                                                  "error_rate": 0.7}}})
    assert ok.status_code == 200, ok.text


# -- 6. a refused POST changes nothing -------------------------------------------------------


def test_a_refused_post_leaves_the_table_as_it_was(wh: WhmcsSandbox) -> None:
    wh.set_fault_seed(3)
    wh.set_faults("AcceptOrder", hang_rate=0.25, hang_s=4)
    before = wh.faults()
    resp = post_faults(wh, {"replace": True, "seed": 99, "faults": {
        "GetProducts": {"latency_ms": 5}, "AddOrder": {"bogus": 1}}})
    assert resp.status_code == 400
    assert "bogus" in resp.json()["error"]
    assert wh.faults() == before
    resp = post_faults(wh, {"action": "AddOrder", "seed": 98, "hang_rate": "x"})
    assert resp.status_code == 400
    assert wh.faults() == before
