"""The WHMCS sandbox's API over real HTTP: actions, validation, paging, auth, seed agreement."""

from __future__ import annotations

import base64
import itertools
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest

from sandbox import seed
from sandbox.whmcs import phpserial
from sandbox.whmcs.harness import WhmcsSandbox, whmcs_sandbox

ACCOUNTS = 60
ACTIVE_CLIENT = seed.FIRST_CLIENT_ID + 3
CLOSED_CLIENT = seed.FIRST_CLIENT_ID + 2
_marker = itertools.count(1)


@pytest.fixture(scope="module")
def whmcs_sb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WhmcsSandbox]:
    with whmcs_sandbox(tmp_path_factory.mktemp("whmcs-api"), accounts=ACCOUNTS) as wh:
        yield wh


def whmcs_post(wh: WhmcsSandbox, form: dict[str, Any] | list[tuple[str, str]],
               auth: bool = True) -> httpx.Response:
    """POST a raw form (a list keeps repeated ``pid[]`` keys) to api.php."""
    pairs = [("identifier", wh.identifier), ("secret", wh.secret),
             ("responsetype", "json")] if auth else []
    pairs += list(form.items()) if isinstance(form, dict) else form
    return httpx.post(wh.api_url, content=urlencode(pairs).encode(), timeout=10,
                      headers={"Content-Type": "application/x-www-form-urlencoded"})


def new_marker() -> str:
    return f"801TESTAPI{next(_marker):08d}"


def add_order(wh: WhmcsSandbox, **extra: Any) -> dict[str, Any]:
    params: dict[str, Any] = {"clientid": ACTIVE_CLIENT, "paymentmethod": "mailin",
                              "pid": [1, 5], "billingcycle": ["monthly", "onetime"],
                              "notes": f"sfOrderId={new_marker()}"}
    params.update(extra)
    return wh.call("AddOrder", **params)


def test_seeded_clients_agree_with_the_salesforce_seed(whmcs_sb: WhmcsSandbox) -> None:
    for acct in seed.accounts(ACCOUNTS):
        if acct.whmcs_client_id is None:
            continue
        res = whmcs_sb.call("GetClientsDetails", clientid=acct.whmcs_client_id)
        if acct.broken == "WHMCS_CLIENT_NOT_FOUND":
            assert res == {"result": "error", "message": "Client Not Found"}
        else:
            assert res["result"] == "success", acct
            assert res["client"]["status"] == acct.whmcs_client_status
            assert res["client"]["email"] == acct.email


def test_add_order_success_shape(whmcs_sb: WhmcsSandbox) -> None:
    res = add_order(whmcs_sb, addons=["1,2", ""], qty=[2, 1])
    assert res["result"] == "success"
    assert isinstance(res["orderid"], int) and isinstance(res["invoiceid"], int)
    assert len(res["serviceids"].split(",")) == 3  # qty 2 of pid 1 + pid 5
    assert len(res["addonids"].split(",")) == 4  # two addons on each of the two services
    assert res["domainids"] == ""
    order = whmcs_sb.call("GetOrders", id=res["orderid"])["orders"]["order"][0]
    assert order["status"] == "Pending" and order["paymentstatus"] == "Unpaid"
    assert order["amount"] == f"{2 * 5980 + 22000 + 2 * (1100 + 550):.2f}"
    cycles = {li["billingcycle"] for li in order["lineitems"]["lineitem"]}
    assert cycles == {"Monthly", "One Time"}


def test_add_order_noinvoice_priceoverride_and_bracket_append(whmcs_sb: WhmcsSandbox) -> None:
    marker = new_marker()
    form = [("action", "AddOrder"), ("clientid", str(ACTIVE_CLIENT)),
            ("paymentmethod", "paypal"), ("pid[]", "3"), ("billingcycle[]", "monthly"),
            ("priceoverride[]", "100"), ("noinvoice", "true"), ("noemail", "1"),
            ("promocode", "WELCOME"), ("notes", f"sfOrderId={marker}")]
    res = whmcs_post(whmcs_sb, form).json()
    assert res["result"] == "success" and "invoiceid" not in res
    order = whmcs_sb.orders_for(marker)[0]
    assert order["amount"] == 100.0 and order["invoiceid"] == 0
    row = whmcs_sb.call("GetOrders", id=res["orderid"])["orders"]["order"][0]
    assert row["promocode"] == "WELCOME" and row["paymentmethod"] == "paypal"
    assert row["notes"] == f"sfOrderId={marker}" and row["paymentstatus"] == ""


@pytest.mark.parametrize(("params", "message"), [
    ({"clientid": seed.UNKNOWN_CLIENT_ID}, "Client ID Not Found"),
    ({"clientid": ""}, "Client ID Not Found"),
    ({"clientid": CLOSED_CLIENT}, "Unable to add order when client status is Closed"),
    ({"paymentmethod": "bitcoin"},
     "Invalid Payment Method. Valid options include mailin,paypal,banktransfer"),
    ({"pid": None, "billingcycle": None}, "No items added to cart so order cannot proceed"),
    ({"pid": [77], "billingcycle": ["monthly"]}, "Invalid Product ID"),
    ({"pid": [4], "billingcycle": ["monthly"]}, "Invalid Billing Cycle Requested"),
    ({"pid": [1], "billingcycle": ["fortnightly"]}, "Invalid Billing Cycle Requested"),
    ({"pid": [3], "billingcycle": ["monthly"], "addons": ["1"]}, "Invalid Addon ID"),
    ({"pid": [1], "configoptions": [phpserial.b64dumps({3: 7})]}, "Invalid Configurable Option"),
    ({"pid": [1], "configoptions": [phpserial.b64dumps({1: 99})]}, "Invalid Configurable Option"),
    ({"pid": [1], "configoptions": ["%%%"]}, "Invalid base64 serialized array data"),
])
def test_add_order_errors(whmcs_sb: WhmcsSandbox, params: dict[str, Any], message: str) -> None:
    before = whmcs_sb.counters()["orders_created"]
    res = add_order(whmcs_sb, **params)
    assert res == {"result": "error", "message": message}
    assert whmcs_sb.counters()["orders_created"] == before


def test_configoptions_round_trip(whmcs_sb: WhmcsSandbox) -> None:
    # One as PHP itself would send it (string values), one via our serializer.
    php_made = base64.b64encode(b'a:2:{i:1;s:1:"3";i:2;s:1:"6";}').decode()
    res = add_order(whmcs_sb, pid=[2, 3], billingcycle=["annually", "monthly"],
                    configoptions=[php_made, phpserial.b64dumps({3: 8})],
                    customfields=[phpserial.b64dumps({"9": "line ref"}), ""])
    assert res["result"] == "success"
    first, second = (int(x) for x in res["serviceids"].split(","))
    prod = whmcs_sb.call("GetClientsProducts", serviceid=first)["products"]["product"][0]
    opts = {o["id"]: o["value"] for o in prod["configoptions"]["configoption"]}
    assert opts == {1: "Wi-Fi 7 router", 2: "/29"}
    assert prod["billingcycle"] == "Annually" and prod["orderid"] == res["orderid"]
    assert prod["customfields"]["customfield"][0]["value"] == "line ref"
    prod = whmcs_sb.call("GetClientsProducts", serviceid=second)["products"]["product"][0]
    assert {o["id"]: o["value"] for o in prod["configoptions"]["configoption"]} == {3: "eSIM"}


def test_accept_order_autosetup_and_not_pending(whmcs_sb: WhmcsSandbox) -> None:
    res = add_order(whmcs_sb, addons=["2", ""])
    assert whmcs_sb.call("AcceptOrder", orderid=res["orderid"], autosetup="true",
                         sendemail=0, serviceusername="u1") == {"result": "success"}
    order = whmcs_sb.call("GetOrders", id=res["orderid"])["orders"]["order"][0]
    assert order["status"] == "Active"
    assert {li["status"] for li in order["lineitems"]["lineitem"]} == {"Active"}
    again = whmcs_sb.call("AcceptOrder", orderid=res["orderid"], autosetup=1)
    assert again == {"result": "error", "message": "Order ID not found or Status not Pending"}
    missing = whmcs_sb.call("AcceptOrder", orderid=987654)
    assert missing["message"] == "Order ID not found or Status not Pending"
    assert whmcs_sb.call("AcceptOrder")["result"] == "error"


def test_accept_order_without_autosetup_leaves_services_pending(whmcs_sb: WhmcsSandbox) -> None:
    res = add_order(whmcs_sb)
    assert whmcs_sb.call("AcceptOrder", orderid=res["orderid"])["result"] == "success"
    order = whmcs_sb.call("GetOrders", id=res["orderid"])["orders"]["order"][0]
    assert order["status"] == "Active"
    assert {li["status"] for li in order["lineitems"]["lineitem"]} == {"Pending"}


def test_cancel_order(whmcs_sb: WhmcsSandbox) -> None:
    res = add_order(whmcs_sb)
    assert whmcs_sb.call("CancelOrder", orderid=res["orderid"]) == {"result": "success"}
    order = whmcs_sb.call("GetOrders", id=res["orderid"])["orders"]["order"][0]
    assert order["status"] == "Cancelled" and order["paymentstatus"] == "Cancelled"
    assert whmcs_sb.call("AcceptOrder", orderid=res["orderid"])["result"] == "error"
    assert whmcs_sb.call("CancelOrder", orderid=res["orderid"])["message"] == (
        "Order ID not found or Status not Pending")
    assert whmcs_sb.call("CancelOrder", orderid=999999)["message"] == "Order ID Not Found"


def test_counters_count_orders_per_marker_in_every_status(whmcs_sb: WhmcsSandbox) -> None:
    """chaos's duplicates: a cancelled second order (a compensation) still counts."""
    marker = new_marker()
    ids = [add_order(whmcs_sb, notes=f"sfOrderId={marker}")["orderid"] for _ in range(3)]
    whmcs_sb.call("AcceptOrder", orderid=ids[0], autosetup=1)
    whmcs_sb.call("CancelOrder", orderid=ids[1])
    statuses = [whmcs_sb.call("GetOrders", id=i)["orders"]["order"][0]["status"] for i in ids]
    assert statuses == ["Active", "Cancelled", "Pending"]
    counters = whmcs_sb.counters()
    assert counters["orders_by_marker"][marker] == 3
    assert counters["duplicates"][marker] == 3


def test_get_orders_filters_and_paging(whmcs_sb: WhmcsSandbox) -> None:
    client = seed.FIRST_CLIENT_ID + 10
    ids = [add_order(whmcs_sb, clientid=client)["orderid"] for _ in range(7)]
    whmcs_sb.call("AcceptOrder", orderid=ids[0], autosetup=1)
    first = whmcs_sb.call("GetOrders", userid=client, limitnum=3)
    assert (first["totalresults"], first["startnumber"], first["numreturned"]) == (7, 0, 3)
    seen = [int(o["id"]) for o in first["orders"]["order"]]
    assert seen == sorted(ids, reverse=True)[:3]  # newest first
    for start in (3, 6):
        page = whmcs_sb.call("GetOrders", userid=client, limitstart=start, limitnum=3)
        assert page["startnumber"] == start
        seen += [int(o["id"]) for o in page["orders"]["order"]]
    assert sorted(seen) == ids
    default = whmcs_sb.call("GetOrders", userid=client)
    assert default["numreturned"] == 7 and all(o["userid"] == str(client)
                                               for o in default["orders"]["order"])
    active = whmcs_sb.call("GetOrders", userid=client, status="Active")
    assert [o["id"] for o in active["orders"]["order"]] == [str(ids[0])]
    assert whmcs_sb.call("GetOrders", id=ids[3])["orders"]["order"][0]["id"] == str(ids[3])


def test_get_clients_products_filters_and_paging(whmcs_sb: WhmcsSandbox) -> None:
    client = seed.FIRST_CLIENT_ID + 11
    for _ in range(3):
        add_order(whmcs_sb, clientid=client)
    res = whmcs_sb.call("GetClientsProducts", clientid=client, limitnum=4)
    assert (res["totalresults"], res["numreturned"]) == (6, 4)
    rest = whmcs_sb.call("GetClientsProducts", clientid=client, limitstart=4)
    assert rest["numreturned"] == 2 and rest["startnumber"] == 4
    only = whmcs_sb.call("GetClientsProducts", clientid=client, pid=5)
    assert only["totalresults"] == 3
    assert {p["billingcycle"] for p in only["products"]["product"]} == {"One Time"}


def test_get_products_matches_seed(whmcs_sb: WhmcsSandbox) -> None:
    res = whmcs_sb.call("GetProducts")
    products = {p["pid"]: p for p in res["products"]["product"]}
    assert set(products) == set(seed.WHMCS_PRODUCTS)
    assert products[5]["paytype"] == "onetime"
    assert products[1]["pricing"]["JPY"]["monthly"] == "5980.00"
    assert products[4]["pricing"]["JPY"]["monthly"] == "-1.00"
    option_ids = [o["id"] for o in products[1]["configoptions"]["configoption"]]
    assert option_ids == list(seed.WHMCS_PRODUCTS[1][2])
    assert whmcs_sb.call("GetProducts", pid=3)["totalresults"] == 1


def test_add_client_and_get_details(whmcs_sb: WhmcsSandbox) -> None:
    res = whmcs_sb.call("AddClient", firstname="Ada", lastname="Lovelace",
                        email="ada@example.jp", country="JP")
    assert res["result"] == "success"
    details = whmcs_sb.call("GetClientsDetails", clientid=res["clientid"])
    assert details["client"]["fullname"] == "Ada Lovelace"
    assert details["client"]["status"] == "Active"
    dup = whmcs_sb.call("AddClient", firstname="A", lastname="B", email="ADA@example.jp")
    assert dup == {"result": "error", "message": "A user already exists with that email address"}
    assert whmcs_sb.call("AddClient", lastname="B", email="x@example.jp")["message"] == (
        "You did not enter your first name")
    assert add_order(whmcs_sb, clientid=res["clientid"])["result"] == "success"


def test_unknown_action(whmcs_sb: WhmcsSandbox) -> None:
    assert whmcs_sb.call("FlyToTheMoon") == {"result": "error", "message": "Command Not Found"}


def test_action_name_is_case_insensitive(whmcs_sb: WhmcsSandbox) -> None:
    assert whmcs_sb.call("getproducts")["result"] == "success"


def test_authentication(whmcs_sb: WhmcsSandbox) -> None:
    bad = httpx.post(whmcs_sb.api_url, data={"action": "GetProducts", "responsetype": "json",
                                             "identifier": whmcs_sb.identifier,
                                             "secret": "wrong"})
    assert bad.status_code == 403
    assert bad.json() == {"result": "error", "message": "Authentication Failed"}
    none = whmcs_post(whmcs_sb, {"action": "GetProducts"}, auth=False)
    assert none.json()["message"] == "Authentication Failed"
    whmcs_sb.lift_login_bans()  # two failed logins: the third would ban this IP


def test_ip_allow_list_and_accesskey_bypass(whmcs_sb: WhmcsSandbox) -> None:
    whmcs_sb.set_allowed_ips(["10.9.9.9"])
    try:
        refused = whmcs_post(whmcs_sb, {"action": "GetProducts"})
        assert refused.status_code == 403
        assert refused.json() == {"result": "error", "message": "Invalid IP 127.0.0.1"}
        wrong_key = whmcs_post(whmcs_sb, {"action": "GetProducts", "accesskey": "nope"})
        assert wrong_key.json()["message"] == "Invalid IP 127.0.0.1"
        bypass = whmcs_post(whmcs_sb, {"action": "GetProducts",
                                       "accesskey": whmcs_sb.access_key})
        assert bypass.status_code == 200 and bypass.json()["result"] == "success"
        key_bad_secret = httpx.post(whmcs_sb.api_url, data={
            "action": "GetProducts", "accesskey": whmcs_sb.access_key,
            "identifier": whmcs_sb.identifier, "secret": "wrong"})
        assert key_bad_secret.json()["message"] == "Authentication Failed"
    finally:
        whmcs_sb.set_allowed_ips(["127.0.0.1", "::1"])
        whmcs_sb.lift_login_bans()
    assert whmcs_post(whmcs_sb, {"action": "GetProducts"}).json()["result"] == "success"


def test_without_responsetype_json_the_answer_is_xml(whmcs_sb: WhmcsSandbox) -> None:
    resp = httpx.post(whmcs_sb.api_url, data={"action": "GetOrders", "limitnum": "1",
                                              "identifier": whmcs_sb.identifier,
                                              "secret": whmcs_sb.secret})
    assert resp.headers["content-type"].startswith("text/xml")
    assert "<result>success</result>" in resp.text and "<totalresults>" in resp.text


def test_the_harness_lists_each_markers_active_orders_with_their_services(
        whmcs_sb: WhmcsSandbox) -> None:
    """What make chaos holds the Opportunity write-back to (bench.harness.invariants)."""
    marker = new_marker()
    active = add_order(whmcs_sb, notes=f"sfOrderId={marker}")
    whmcs_sb.call("AcceptOrder", orderid=active["orderid"], autosetup="true")
    add_order(whmcs_sb, notes=f"sfOrderId={marker}")  # left Pending: not listed
    listed = whmcs_sb.active_services_by_marker(page=2)  # paged
    services = {int(s) for s in str(active["serviceids"]).split(",") if s}
    assert listed[marker] == {int(active["orderid"]): services} and services
    assert whmcs_sb.active_orders_by_marker()[marker] == {int(active["orderid"])}
