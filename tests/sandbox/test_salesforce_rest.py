"""Salesforce sandbox over real HTTPS: OAuth JWT, simple-salesforce, SOQL, sObjects,
sObject Collections, composite, limits, faults."""

from __future__ import annotations

import json
import time
from typing import Any

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from simple_salesforce import Salesforce
from simple_salesforce.exceptions import SalesforceMalformedRequest

V = "/services/data/v62.0"


def _api(sf: Any, http: requests.Session) -> Salesforce:
    token = sf.login()["access_token"]
    return Salesforce(instance_url=sf.instance_url, session_id=token, session=http,
                      version="62.0")


def _pending_orders(sf: Any, n: int) -> list[str]:
    rows = sf.query(f"SELECT Id FROM Order WHERE Status = 'Pending Review' AND "
                    f"Description = null ORDER BY OrderNumber DESC LIMIT {n}")["records"]
    return [r["Id"] for r in rows]


def test_simple_salesforce_query_and_update_runs_the_flow(sf_sandbox: Any,
                                                          sf_http: requests.Session) -> None:
    api = _api(sf_sandbox, sf_http)
    order_id = _pending_orders(sf_sandbox, 1)[0]
    before = sf_sandbox.counters()["events_stored"]
    result = api.query(
        "SELECT Id, OrderNumber, Status, Account.WH_Account__c, Opportunity.StageName, "
        "(SELECT Id, Quantity, UnitPrice, Product2Id, Product2.WHMCS_Product_Id__c, "
        "Product2.Billing_Cycle__c, Product2.Item_Class__c, Product2.Portal_ConfigOptions_JSON__c "
        f"FROM OrderItems) FROM Order WHERE Id = '{order_id}'")
    record = result["records"][0]
    assert result["totalSize"] == 1 and result["done"] is True
    assert record["attributes"] == {"type": "Order",
                                    "url": f"{V}/sobjects/Order/{order_id}"}
    assert record["Account"]["WH_Account__c"].isdigit()
    assert record["Opportunity"]["StageName"] == "Post Processing"
    items = record["OrderItems"]
    assert items["totalSize"] == len(items["records"]) >= 1
    assert items["records"][0]["Product2"]["Billing_Cycle__c"] in ("Monthly", "Annually",
                                                                   "One-time")
    assert api.Order.update(order_id, {"Status": "Approved"}) == 204
    after = api.Order.get(order_id)
    assert after["Activation_Status__c"] == "Activating"
    assert sf_sandbox.counters()["events_stored"] == before + 1
    # The sink's write-back, absolute values.
    assert api.Order.update(order_id, {"Activation_Status__c": "Provisioned",
                                       "WHMCS_Order_Id__c": 4242}) == 204
    assert api.Order.get(order_id)["WHMCS_Order_Id__c"] == 4242.0
    assert sf_sandbox.counters()["events_stored"] == before + 1


def test_simple_salesforce_own_jwt_login(sf_sandbox: Any) -> None:
    """simple-salesforce's JWT login posts to https://login.salesforce.com; route it here."""

    class ToSandbox(requests.adapters.HTTPAdapter):
        def send(self, request: Any, **kw: Any) -> Any:
            request.url = request.url.replace("https://login.salesforce.com",
                                              sf_sandbox.login_url)
            return super().send(request, **kw)

    session = requests.Session()
    session.trust_env = False
    session.verify = sf_sandbox.ca_path
    session.mount("https://login.salesforce.com", ToSandbox())
    api = Salesforce(username=sf_sandbox.username, consumer_key=sf_sandbox.client_id,
                     privatekey_file=str(sf_sandbox.private_key_path), session=session,
                     version="62.0")
    assert api.query("SELECT COUNT() FROM Account")["totalSize"] >= 20


def _token_error(sf: Any, assertion: str) -> dict:
    resp = requests.post(sf.login_url + "/services/oauth2/token", verify=sf.ca_path, data={
        "grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": assertion})
    assert resp.status_code == 400, resp.text
    return resp.json()


def test_jwt_refusals(sf_sandbox: Any, tmp_path: Any) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    other_path = tmp_path / "other.pem"
    other_path.write_bytes(other.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    cases = [
        (sf_sandbox.assertion(key_path=other_path), "invalid_grant", "invalid assertion"),
        (sf_sandbox.assertion(audience="https://evil.example.com"), "invalid_grant",
         "audience is invalid"),
        (sf_sandbox.assertion(exp_in=-10), "invalid_grant", "expired authorization code"),
        (sf_sandbox.assertion(exp_in=3600), "invalid_grant", "invalid assertion"),
        (sf_sandbox.assertion(subject="nobody@example.com"), "invalid_grant",
         "user hasn't approved this consumer"),
        ("not-a-jwt", "invalid_grant", "invalid assertion"),
    ]
    for assertion, error, description in cases:
        assert _token_error(sf_sandbox, assertion) == {"error": error,
                                                       "error_description": description}
    hs = jwt.encode({"iss": sf_sandbox.client_id, "sub": sf_sandbox.username,
                     "aud": sf_sandbox.login_url, "exp": int(time.time()) + 60}, "k" * 32,
                    algorithm="HS256")
    assert _token_error(sf_sandbox, hs)["error"] == "invalid_grant"
    for aud in ("https://login.salesforce.com", "https://test.salesforce.com"):
        assert sf_sandbox.login(audience=aud)["token_type"] == "Bearer"
    ok = sf_sandbox.login()
    assert ok["id"].endswith(f"/id/{sf_sandbox.org_id}/" + ok["id"].rsplit("/", 1)[1])
    # usernames compare without case, as Salesforce's do: the same user, the same id
    upper = sf_sandbox.login(subject=sf_sandbox.username.upper())
    assert upper["id"] == ok["id"]
    assert ok["instance_url"] == sf_sandbox.instance_url


@pytest.mark.parametrize("exp", [
    "nan", "NaN", float("nan"), float("inf"), float("-inf"), "inf", "-inf", "1e99",
    " {soon}", "+{soon}", "{soon}.0", "{soon}e0", "{soon}\n", "\u0661\u0662\u0663", True,
    None, [1], pytest.param(10**400, id="10**400"), pytest.param("9" * 400, id="9*400")])
def test_jwt_exp_must_be_a_finite_number(sf_sandbox: Any, exp: Any) -> None:
    """NaN compares false with every time, so an assertion expiring "NaN" (as a string, or
    the JSON literal Python's json writes and reads) would never expire: refused, as are
    the infinities, a string that is not all digits (even one naming a time a minute
    ahead, ``{soon}``) and a number no float can hold."""
    if isinstance(exp, str):
        exp = exp.replace("{soon}", str(int(time.time()) + 60))
    key = sf_sandbox.private_key_path.read_text()
    claims = {"iss": sf_sandbox.client_id, "sub": sf_sandbox.username,
              "aud": sf_sandbox.login_url, "exp": exp}
    assert _token_error(sf_sandbox, jwt.encode(claims, key, algorithm="RS256")) == {
        "error": "invalid_grant", "error_description": "invalid assertion"}


def test_jwt_exp_as_digits_or_a_finite_number(sf_sandbox: Any) -> None:
    key = sf_sandbox.private_key_path.read_text()
    for exp in (str(int(time.time()) + 60), time.time() + 60.5, int(time.time()) + 60):
        claims = {"iss": sf_sandbox.client_id, "sub": sf_sandbox.username,
                  "aud": sf_sandbox.login_url, "exp": exp}
        resp = requests.post(sf_sandbox.login_url + "/services/oauth2/token",
                             verify=sf_sandbox.ca_path, data={
                                 "grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
                                 "assertion": jwt.encode(claims, key, algorithm="RS256")})
        assert resp.status_code == 200 and resp.json()["token_type"] == "Bearer", exp


def test_aiohttps_own_answers_carry_the_limit_header(sf_sandbox: Any,
                                                    sf_http: requests.Session) -> None:
    """A body over the server's limit is refused by aiohttp itself (413), before any
    handler: every API answer has ``Sforce-Limit-Info`` (REFERENCE), that one too."""
    resp = sf_http.post(sf_sandbox.instance_url + V + "/composite/sobjects",
                        data=b"x" * (32 * 1024 * 1024 + 1),
                        headers={"Content-Type": "application/json"})
    assert resp.status_code == 413
    assert resp.headers["Sforce-Limit-Info"].startswith("api-usage="), resp.headers


def test_userinfo_and_limit_header(sf_sandbox: Any, sf_http: requests.Session) -> None:
    info = sf_http.get(sf_sandbox.login_url + "/services/oauth2/userinfo").json()
    assert info["organization_id"] == sf_sandbox.org_id
    resp = sf_http.get(sf_sandbox.instance_url + V + "/limits")
    assert resp.headers["Sforce-Limit-Info"].startswith("api-usage=")
    assert resp.json()["DailyApiRequests"]["Max"] == 5_000_000
    assert "Sforce-Limit-Info" not in sf_http.get(sf_sandbox.instance_url + "/").headers


def _q(http: requests.Session, sf: Any, soql: str, **headers: str) -> requests.Response:
    return http.get(sf.instance_url + V + "/query", params={"q": soql}, headers=headers)


def test_soql_features(sf_sandbox: Any, sf_http: requests.Session) -> None:
    def rows(soql: str) -> list[dict]:
        resp = _q(sf_http, sf_sandbox, soql)
        assert resp.status_code == 200, resp.text
        return resp.json()["records"]

    numbers = [r["OrderNumber"] for r in rows("SELECT OrderNumber FROM Order ORDER BY "
                                              "OrderNumber DESC LIMIT 5")]
    assert numbers == sorted(numbers, reverse=True) and len(numbers) == 5
    two = [r["OrderNumber"] for r in rows("SELECT OrderNumber FROM Order ORDER BY OrderNumber "
                                          "LIMIT 2")]
    picked = rows(f"SELECT Id FROM Order WHERE OrderNumber IN ('{two[0]}', '{two[1]}') "
                  f"AND (Status = 'Pending Review' OR Status != 'Draft')")
    assert len(picked) == 2
    assert rows("SELECT Id, Account.Name FROM Order WHERE Account.WH_Account__c = null")
    assert all(r["Account"]["WH_Account__c"] is not None for r in rows(
        "SELECT Account.WH_Account__c FROM Order WHERE Account.WH_Account__c != null"))
    assert rows("SELECT Id FROM Order WHERE CreatedDate = TODAY LIMIT 1")
    assert not rows("SELECT Id FROM Order WHERE CreatedDate < 2000-01-01T00:00:00Z")
    assert rows("SELECT Id FROM Product2 WHERE Name LIKE 'SonixNet%'")
    assert rows("SELECT Id FROM Order WHERE NOT Status = 'Draft' LIMIT 1")
    count = _q(sf_http, sf_sandbox, "SELECT COUNT() FROM Account").json()
    assert count["totalSize"] >= 20 and count["records"] == []
    # Errors, shaped as Salesforce shapes them.
    for soql, code in [("SELECT Foo__c FROM Order", "INVALID_FIELD"),
                       ("SELECT Id FROM Nope__c", "INVALID_TYPE"),
                       ("SELECT Id FROM Order WHERE", "MALFORMED_QUERY"),
                       ("SELECT Id FROM Order WHERE Status ~ 'x'", "MALFORMED_QUERY"),
                       ("SELECT Id, (SELECT Id FROM Nothings) FROM Order", "INVALID_TYPE")]:
        resp = _q(sf_http, sf_sandbox, soql)
        assert resp.status_code == 400 and resp.json()[0]["errorCode"] == code, soql


def test_soql_filter_values_must_suit_the_field_type(sf_sandbox: Any,
                                                    sf_http: requests.Session) -> None:
    """Salesforce checks a filter value against its field's type before it runs the query:
    a quoted value on a number field, an unquoted number on a text, picklist, id or
    reference field, and a string that is no id on an id field are 400
    ``INVALID_QUERY_FILTER_OPERATOR`` — never a 200 with nothing (or the wrong rows) in it.
    The right types still match, and an 18-char id with a wrong case checksum is taken."""
    order_id = _pending_orders(sf_sandbox, 1)[0]
    refused = {
        "SELECT Id FROM Order WHERE WHMCS_Order_Id__c = '5'":
            "value of filter criterion for field 'WHMCS_Order_Id__c' must be of type double "
            "and should not be enclosed in quotes",
        "SELECT Id FROM Order WHERE WHMCS_Order_Id__c IN (5, '6')":
            "value of filter criterion for field 'WHMCS_Order_Id__c' must be of type double "
            "and should not be enclosed in quotes",
        "SELECT Id FROM Order WHERE Account.WH_Account__c = 1003":
            "value of filter criterion for field 'WH_Account__c' must be of type string and "
            "should be enclosed in quotes",
        "SELECT Id FROM Order WHERE Status = 1":
            "value of filter criterion for field 'Status' must be of type string and should "
            "be enclosed in quotes",
        "SELECT Id FROM Order WHERE AccountId = 1":
            "value of filter criterion for field 'AccountId' must be of type id and should "
            "be enclosed in quotes",
        "SELECT Id FROM Order WHERE Id = 'abc'": "invalid ID field: abc",
        f"SELECT Id FROM Order WHERE Id IN ('{order_id}', '{order_id[:14]}')":
            f"invalid ID field: {order_id[:14]}",
        "SELECT Id FROM Order WHERE Id LIKE '801%'": "invalid operator on id field",
    }
    for soql, message in refused.items():
        resp = _q(sf_http, sf_sandbox, soql)
        assert resp.status_code == 400, (soql, resp.text)
        assert resp.json() == [{"message": message, "errorCode": "INVALID_QUERY_FILTER_OPERATOR",
                                "fields": []}], soql
    sf_sandbox.update("Order", order_id, {"WHMCS_Order_Id__c": 424242}, run_flow=False)
    for soql in ("SELECT Id FROM Order WHERE WHMCS_Order_Id__c = 424242",
                 "SELECT Id FROM Order WHERE WHMCS_Order_Id__c IN (424242.0, 1)",
                 f"SELECT Id FROM Order WHERE Id = '{order_id[:15]}'",
                 f"SELECT Id FROM Order WHERE Id = '{order_id}' AND WHMCS_Order_Id__c > 1"):
        resp = _q(sf_http, sf_sandbox, soql)
        assert resp.status_code == 200, (soql, resp.text)
        assert [r["Id"] for r in resp.json()["records"]] == [order_id], soql
    wrong_checksum = order_id[:15] + ("AAA" if order_id[15:] != "AAA" else "BBB")
    resp = _q(sf_http, sf_sandbox, f"SELECT Id FROM Order WHERE Id = '{wrong_checksum}'")
    assert resp.status_code == 200 and resp.json()["totalSize"] == 0, resp.text


def test_query_paging_with_next_records_url(sf_sandbox: Any, sf_http: requests.Session) -> None:
    first = _q(sf_http, sf_sandbox, "SELECT Id FROM OrderItem",
               **{"Sforce-Query-Options": "batchSize=200"}).json()
    assert first["done"] is False and len(first["records"]) == 200
    seen = [r["Id"] for r in first["records"]]
    url = first["nextRecordsUrl"]
    while url:
        page = sf_http.get(sf_sandbox.instance_url + url).json()
        seen += [r["Id"] for r in page["records"]]
        url = page.get("nextRecordsUrl")
    assert len(seen) == len(set(seen)) == first["totalSize"] > 200


def test_sobject_validation(sf_sandbox: Any, sf_http: requests.Session) -> None:
    order_id = _pending_orders(sf_sandbox, 1)[0]
    url = f"{sf_sandbox.instance_url}{V}/sobjects/Order/{order_id}"
    for body, code in [({"Status": "Bogus"}, "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST"),
                       ({"Activation_Status__c": "Done"}, "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST"),
                       ({"Nope__c": 1}, "INVALID_FIELD"),
                       ({"OrderNumber": "1"}, "INVALID_FIELD_FOR_INSERT_UPDATE")]:
        resp = sf_http.patch(url, json=body)
        assert resp.status_code == 400 and resp.json()[0]["errorCode"] == code, body
    assert sf_http.get(url).json()["Status"] == "Pending Review"
    missing = sf_http.get(f"{sf_sandbox.instance_url}{V}/sobjects/Order/801000000000000AAA")
    assert missing.status_code == 404 and missing.json()[0]["errorCode"] == "NOT_FOUND"
    case = sf_http.post(f"{sf_sandbox.instance_url}{V}/sobjects/Case",
                        json={"Subject": "Help", "Type": "General Inquiry", "Status": "New"})
    assert case.status_code == 201 and case.json()["id"].startswith("500")
    assert len(case.json()["id"]) == 18


def test_a_collection_naming_a_field_the_object_lacks_is_refused_whole(
        sf_sandbox: Any, sf_http: requests.Session) -> None:
    """A field deleted or hidden: Salesforce refuses the whole call (400 INVALID_FIELD, "No
    such column"), saving none of it. The sandbox answered per record and saved the rest, so
    the sink's path for it (ask describe, hold those records) never ran against it (the
    Salesforce sandbox review)."""
    first, second = _pending_orders(sf_sandbox, 2)
    resp = sf_http.patch(sf_sandbox.instance_url + V + "/composite/sobjects", json={
        "allOrNone": False, "records": [
            {"attributes": {"type": "Order"}, "id": first, "Activation_Error__c": "written"},
            {"attributes": {"type": "Order"}, "id": second, "No_Such_Field__c": 1}]})
    assert resp.status_code == 400, resp.text
    [error] = resp.json()
    assert error["errorCode"] == "INVALID_FIELD"
    assert error["message"] == "No such column 'No_Such_Field__c' on sobject of type Order"
    assert sf_sandbox.get_record(first).get("Activation_Error__c") != "written"


def test_an_order_with_more_items_than_one_answer_holds_comes_cut(
        sf_sandbox: Any, sf_http: requests.Session) -> None:
    """A subquery's child records come 200 at most per parent, the rest behind their own
    nextRecordsUrl with done false; the sandbox gave them all at once, so the worker's
    TOO_MANY_ITEMS (streams.mapping) never met the answer it is for (the sandbox review)."""
    order_id = _pending_orders(sf_sandbox, 1)[0]
    soql = (f"SELECT Id, (SELECT Id, Product2Id, PricebookEntryId, UnitPrice FROM OrderItems) "
            f"FROM Order WHERE Id = '{order_id}'")
    [order] = sf_sandbox.query(soql)["records"]
    item = order["OrderItems"]["records"][0]
    have = order["OrderItems"]["totalSize"]
    base = sf_sandbox.instance_url + V
    new_items = [{"attributes": {"type": "OrderItem"}, "OrderId": order_id, "Quantity": 1,
                  "Product2Id": item["Product2Id"], "PricebookEntryId": item["PricebookEntryId"],
                  "UnitPrice": item["UnitPrice"]} for _ in range(201 - have)]
    for start in range(0, len(new_items), 200):
        made = sf_http.post(base + "/composite/sobjects",
                            json={"records": new_items[start:start + 200]})
        assert made.status_code == 200 and all(r["success"] for r in made.json()), made.text
    answer = sf_http.get(base + "/query", params={"q": soql}).json()
    items = answer["records"][0]["OrderItems"]
    assert items["totalSize"] == 201 and items["done"] is False
    assert len(items["records"]) == 200
    rest = sf_http.get(sf_sandbox.instance_url + items["nextRecordsUrl"]).json()
    assert rest["done"] is True and len(rest["records"]) == 1
    seen = {r["Id"] for r in items["records"]} | {r["Id"] for r in rest["records"]}
    assert len(seen) == 201
    from streams.mapping import MappingError, _records
    with pytest.raises(MappingError, match="TOO_MANY_ITEMS|more than"):
        _records(items)


def test_composite_sobjects(sf_sandbox: Any, sf_http: requests.Session) -> None:
    url = sf_sandbox.instance_url + V + "/composite/sobjects"
    order_ids = _pending_orders(sf_sandbox, 3)
    too_many = [{"attributes": {"type": "Order"}, "id": order_ids[0], "Activation_Error__c": "x"}
                ] * 201
    resp = sf_http.patch(url, json={"allOrNone": False, "records": too_many})
    assert resp.status_code == 400 and resp.json()[0]["errorCode"] == "EXCEEDED_ID_LIMIT"

    opp_id = sf_sandbox.get_record(order_ids[0])["OpportunityId"]
    # a new chunk at each change of type; more than 10 chunks refuse the call
    order = {"attributes": {"type": "Order"}, "id": order_ids[0], "Activation_Error__c": "c"}
    opp = {"attributes": {"type": "Opportunity"}, "id": opp_id, "WHMCS_Service_ID__c": 5}
    resp = sf_http.patch(url, json={"records": [order, opp] * 5 + [order]})  # 11 chunks
    assert resp.status_code == 400 and resp.json()[0]["errorCode"] == "INVALID_BATCH_REQUEST"
    assert "more than 10 chunks" in resp.json()[0]["message"]
    assert sf_sandbox.get_record(order_ids[0])["Activation_Error__c"] != "c"  # nothing written
    ten = sf_http.patch(url, json={"records": [order, opp] * 5}).json()  # 10 chunks
    assert [r["success"] for r in ten] == [True] * 10
    sf_sandbox.set_faults(record_errors={order_ids[1]: "FIELD_CUSTOM_VALIDATION_EXCEPTION"})
    records = [
        {"attributes": {"type": "Order"}, "id": order_ids[0], "Activation_Error__c": "e1"},
        {"attributes": {"type": "Order"}, "id": order_ids[1], "Activation_Error__c": "e2"},
        {"attributes": {"type": "Order"}, "id": order_ids[2], "Activation_Status__c": "Nope"},
        {"attributes": {"type": "Opportunity"}, "id": opp_id, "StageName": "Active",
         "WHMCS_Service_ID__c": 77},
    ]
    results = sf_http.patch(url, json={"allOrNone": False, "records": records}).json()
    assert [r["success"] for r in results] == [True, False, False, True]
    assert results[1]["errors"][0]["statusCode"] == "FIELD_CUSTOM_VALIDATION_EXCEPTION"
    assert results[2]["errors"][0]["statusCode"] == "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST"
    assert set(results[2]["errors"][0]) == {"statusCode", "message", "fields"}
    assert sf_sandbox.get_record(opp_id)["StageName"] == "Active"
    assert sf_sandbox.get_record(order_ids[0])["Activation_Error__c"] == "e1"

    records[0]["Activation_Error__c"] = "rolled back"
    results = sf_http.patch(url, json={"allOrNone": True, "records": records}).json()
    assert results[0]["errors"][0]["statusCode"] == "ALL_OR_NONE_OPERATION_ROLLED_BACK"
    assert results[1]["errors"][0]["statusCode"] == "FIELD_CUSTOM_VALIDATION_EXCEPTION"
    assert sf_sandbox.get_record(order_ids[0])["Activation_Error__c"] == "e1"

    sf_sandbox.set_faults(record_errors={}, lock_row_rate=1.0)
    locks = sf_sandbox.counters()["calls"].get("injected_UNABLE_TO_LOCK_ROW", 0)
    results = sf_http.patch(url, json={"records": records[:1]}).json()
    assert results[0]["errors"][0]["statusCode"] == "UNABLE_TO_LOCK_ROW"
    assert sf_sandbox.counters()["calls"]["injected_UNABLE_TO_LOCK_ROW"] == locks + 1
    assert sf_sandbox.counters()["calls"]["composite_sobjects"] >= 4


def test_composite_references_and_limit(sf_sandbox: Any, sf_http: requests.Session) -> None:
    url = sf_sandbox.instance_url + V + "/composite"
    body = {"allOrNone": True, "compositeRequest": [
        {"method": "POST", "url": V + "/sobjects/Case", "referenceId": "newCase",
         "body": {"Subject": "via composite", "Status": "New"}},
        {"method": "GET", "url": V + "/sobjects/Case/@{newCase.id}", "referenceId": "readBack"},
    ]}
    out = sf_http.post(url, json=body).json()["compositeResponse"]
    assert [r["httpStatusCode"] for r in out] == [201, 200]
    assert out[1]["body"]["Subject"] == "via composite"
    body["compositeRequest"][1]["body"] = {"Status": "Bogus"}
    body["compositeRequest"][1]["method"] = "PATCH"
    out = sf_http.post(url, json=body).json()["compositeResponse"]
    assert out[0]["body"][0]["errorCode"] == "PROCESSING_HALTED"
    too_many = {"compositeRequest": [{"method": "GET", "url": V + "/limits",
                                      "referenceId": f"r{i}"} for i in range(26)]}
    resp = sf_http.post(url, json=too_many)
    assert resp.status_code == 400


def test_request_limit_exceeded(sf_sandbox: Any, sf_http: requests.Session) -> None:
    used = int(sf_http.get(sf_sandbox.instance_url + V + "/limits")
               .headers["Sforce-Limit-Info"].split("=")[1].split("/")[0])
    sf_sandbox.set_faults(daily_limit=used + 2)
    assert sf_http.get(sf_sandbox.instance_url + V + "/limits").status_code == 200
    assert sf_http.get(sf_sandbox.instance_url + V + "/limits").status_code == 200
    resp = sf_http.get(sf_sandbox.instance_url + V + "/limits")
    assert resp.status_code == 403 and resp.json()[0]["errorCode"] == "REQUEST_LIMIT_EXCEEDED"
    assert resp.headers["Sforce-Limit-Info"] == f"api-usage={used + 2}/{used + 2}"


def test_the_daily_limit_is_a_rolling_24_hours_kept_across_a_restart(tmp_path: Any) -> None:
    """The limit counts the API requests of the last 24 hours on the sandbox clock, as an
    org's ``DailyApiRequests`` does: no fresh allowance at UTC midnight, none on a restart
    (in-process, over the REST entry point, with the sandbox clock moved)."""
    import asyncio

    from aiohttp.test_utils import TestClient, TestServer

    from sandbox.salesforce import http_app
    from sandbox.salesforce.core import Config, Sandbox

    day_ms = 86_400_000
    config = Config(db_path=str(tmp_path / "sf.db"), client_id="c", username="u@example.com",
                    jwt_cert_pem=b"", daily_limit=3)

    def calls(sb: Sandbox, count: int) -> list[tuple[int, str, str]]:
        sb.user_for_token = lambda _token: sb.users["u@example.com"]  # type: ignore[method-assign]

        async def go() -> list[tuple[int, str, str]]:
            out = []
            async with TestClient(TestServer(http_app.make_app(sb))) as client:
                for _ in range(count):
                    resp = await client.get(V + "/limits")
                    body = await resp.json()
                    code = body[0]["errorCode"] if isinstance(body, list) else ""
                    out.append((resp.status, code, resp.headers["Sforce-Limit-Info"]))
            return out
        return asyncio.run(go())

    sb = Sandbox(config)
    try:
        now = sb.store.now_ms()
        # to 23:59:59.5 UTC: half a second from both edges (the move, in float seconds, can
        # land a millisecond short: aimed at 23:59:59.000 it read 23:59:58.999)
        sb.store.advance_clock(((now // day_ms + 1) * day_ms - 500 - now) / 1000)
        assert sb.store.now_ms() % day_ms // 1000 == day_ms // 1000 - 1  # 23:59:59 UTC
        first = sb.store.now_ms()
        assert calls(sb, 4) == [(200, "", "api-usage=1/3"), (200, "", "api-usage=2/3"),
                                (200, "", "api-usage=3/3"),
                                (403, "REQUEST_LIMIT_EXCEEDED", "api-usage=3/3")]
        sb.store.advance_clock(2)  # 00:00:01 the next UTC day: the same 24 hours
        assert sb.store.now_ms() // day_ms == first // day_ms + 1
        assert calls(sb, 1) == [(403, "REQUEST_LIMIT_EXCEEDED", "api-usage=3/3")]
    finally:
        sb.store.close()
    sb = Sandbox(config)  # restarted on the same database: the usage is remembered
    try:
        assert sb.counters.api_used == 3
        assert calls(sb, 1) == [(403, "REQUEST_LIMIT_EXCEEDED", "api-usage=3/3")]
        sb.store.advance_clock((first + day_ms - sb.store.now_ms()) / 1000)
        assert calls(sb, 1) == [(200, "", "api-usage=1/3")]  # 24 h on: those have left
    finally:
        sb.store.close()


def test_token_expiry_and_faults(sf_sandbox: Any, sf_http: requests.Session) -> None:
    url = sf_sandbox.instance_url + V + "/limits"
    assert sf_http.get(url).status_code == 200
    sf_sandbox.expire_tokens()
    resp = sf_http.get(url)
    assert resp.status_code == 401
    assert resp.json() == [{"message": "Session expired or invalid",
                            "errorCode": "INVALID_SESSION_ID", "fields": []}]
    sf_http.headers["Authorization"] = "Bearer " + sf_sandbox.login()["access_token"]
    assert sf_http.get(url).status_code == 200
    sf_sandbox.set_faults(rest_503_rate=1.0)
    assert sf_http.get(url).status_code == 503
    sf_sandbox.set_faults(rest_503_rate=0.0, rest_latency_ms=300)
    started = time.monotonic()
    assert sf_http.get(url).status_code == 200
    assert time.monotonic() - started >= 0.3


def test_a_hung_call_is_carried_out_after_its_caller_gave_up(sf_sandbox: Any,
                                                             sf_http: requests.Session) -> None:
    """``rest_hang_rate``/``rest_hang_s``: the call waits before it is handled, the client's
    timeout passes, and the write lands all the same (a slow org, not a lost request)."""
    order_id = _pending_orders(sf_sandbox, 1)[0]
    url = sf_sandbox.instance_url + V + f"/sobjects/Order/{order_id}"
    hangs = sf_sandbox.counters()["calls"].get("injected_hang", 0)
    sf_sandbox.set_faults(rest_hang_rate=1.0, rest_hang_s=1.5)
    started = time.monotonic()
    with pytest.raises(requests.Timeout):
        sf_http.patch(url, json={"Description": "written late"}, timeout=0.5)
    assert time.monotonic() - started < 1.4  # the client gave up first
    assert sf_sandbox.get_record(order_id).get("Description") is None
    sf_sandbox.set_faults(rest_hang_rate=0.0)
    deadline = time.monotonic() + 10
    while sf_sandbox.get_record(order_id).get("Description") is None:
        assert time.monotonic() < deadline, "the hung write was never carried out"
        time.sleep(0.1)
    assert sf_sandbox.get_record(order_id)["Description"] == "written late"
    assert sf_sandbox.counters()["calls"]["injected_hang"] == hangs + 1
    assert sf_http.get(url).status_code == 200  # no hang once the rate is 0


def test_simple_salesforce_sees_errors(sf_sandbox: Any, sf_http: requests.Session) -> None:
    api = _api(sf_sandbox, sf_http)
    with pytest.raises(SalesforceMalformedRequest) as info:
        api.Order.update(_pending_orders(sf_sandbox, 1)[0], {"Status": "Bogus"})
    assert info.value.content[0]["errorCode"] == "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST"


def test_the_integration_users_profile(sf_sandbox: Any, sf_http: requests.Session) -> None:
    """The requirements' profile: Create/Read/Update on the business objects, never Delete,
    Read only on Product2 and PricebookEntry — single records, collections and composite
    alike; the CS user (the admin endpoints) is not held to it, and an admin can grant more."""
    base = sf_sandbox.instance_url + V
    product = sf_http.get(base + "/query", params={"q": "SELECT Id FROM Product2 LIMIT 1"}
                          ).json()["records"][0]["Id"]
    assert sf_http.get(f"{base}/sobjects/Product2/{product}").status_code == 200  # Read: yes

    def refused(resp: requests.Response, verb: str) -> None:
        assert resp.status_code == 400, resp.text
        [error] = resp.json()
        assert error["errorCode"] == "INSUFFICIENT_ACCESS_OR_READONLY" and verb in error["message"]

    refused(sf_http.post(f"{base}/sobjects/Product2", json={"Name": "Mine"}), "create Product2")
    refused(sf_http.patch(f"{base}/sobjects/Product2/{product}", json={"Name": "Renamed"}),
            "update Product2")
    [order_id] = _pending_orders(sf_sandbox, 1)
    opp = sf_sandbox.get_record(order_id)["OpportunityId"]
    refused(sf_http.delete(f"{base}/sobjects/Opportunity/{opp}"), "delete Opportunity")
    assert not sf_sandbox.get_record(opp).get("IsDeleted")
    # a collection refuses the record, not the call; the Order beside it is written
    resp = sf_http.patch(base + "/composite/sobjects", json={"allOrNone": False, "records": [
        {"attributes": {"type": "Product2"}, "id": product, "Name": "Renamed"},
        {"attributes": {"type": "Order"}, "id": order_id, "Activation_Error__c": "profile"}]})
    assert resp.status_code == 200
    first, second = resp.json()
    assert not first["success"] and first["errors"][0]["statusCode"] == \
        "INSUFFICIENT_ACCESS_OR_READONLY"
    assert second["success"] and sf_sandbox.get_record(order_id)["Activation_Error__c"] == \
        "profile"
    # composite subrequests go through the same checks
    graph = sf_http.post(base + "/composite", json={"allOrNone": False, "compositeRequest": [
        {"method": "DELETE", "url": f"{V}/sobjects/Opportunity/{opp}", "referenceId": "d"}]})
    assert graph.status_code == 200
    [sub] = graph.json()["compositeResponse"]
    assert sub["httpStatusCode"] == 400 and sub["body"][0]["errorCode"] == \
        "INSUFFICIENT_ACCESS_OR_READONLY"
    # the CS user may; an admin may grant the integration user more
    made = sf_sandbox.create("Product2", {"Name": "By CS", "IsActive": True})
    assert made["Id"].startswith("01t")
    sf_sandbox.set_permissions(objects={"Product2": "CRU"})
    try:
        assert sf_http.patch(f"{base}/sobjects/Product2/{made['Id']}",
                             json={"Name": "Renamed"}).status_code == 204
    finally:
        sf_sandbox.reset_permissions()
    assert sf_sandbox.permissions()["objects"]["Product2"] == "R"
    assert sf_sandbox.delete(opp) == opp and sf_sandbox.get_record(opp)["IsDeleted"]


NOT_SUPPORTED = ("sObject type '{}' is not supported. If you are attempting to use a custom "
                 "object, be sure to append the '__c' after the entity name. Please reference "
                 "your WSDL or the describe call for the appropriate names.")


def test_soql_is_held_to_read(sf_sandbox: Any, sf_http: requests.Session) -> None:
    """An object the profile does not let the integration user read does not exist for its
    SOQL — FROM it, a parent path through it (the pipeline's ``Product2.WHMCS_Product_Id__c``
    in its OrderItems subquery), a child subquery of it, in WHERE too; query, queryAll and a
    composite ``query`` subrequest alike — answered with the words for an unknown name."""
    [order_id] = _pending_orders(sf_sandbox, 1)
    pipeline = ("SELECT Id, (SELECT Id, Product2Id, Product2.WHMCS_Product_Id__c FROM "
                f"OrderItems) FROM Order WHERE Id = '{order_id}'")

    def error(soql: str, resource: str = "query") -> dict:
        resp = sf_http.get(f"{sf_sandbox.instance_url}{V}/{resource}", params={"q": soql})
        assert resp.status_code == 400, (soql, resp.text)
        [body] = resp.json()
        return body

    assert _q(sf_http, sf_sandbox, pipeline).status_code == 200
    sf_sandbox.set_permissions(objects={"Product2": ""})
    try:
        for resource in ("query", "queryAll"):
            assert error("SELECT Id FROM Product2", resource) == {
                "message": NOT_SUPPORTED.format("Product2"), "errorCode": "INVALID_TYPE",
                "fields": []}
        assert error("SELECT Id FROM Nope__c")["message"] == NOT_SUPPORTED.format("Nope__c")
        for soql in (pipeline, "SELECT Id FROM OrderItem WHERE Product2.Name != null",
                     "SELECT Id FROM OrderItem ORDER BY Product2.Name LIMIT 1",
                     "SELECT Id, PricebookEntry.Product2.Name FROM OrderItem LIMIT 1"):
            found = error(soql)
            assert found["errorCode"] == "INVALID_FIELD", soql
            assert found["message"].startswith("Didn't understand relationship 'Product2' in "
                                               "field path."), soql
        # the lookup field itself is OrderItem's, which the user reads
        assert _q(sf_http, sf_sandbox, "SELECT Id, Product2Id FROM OrderItem LIMIT 1"
                  ).status_code == 200
        # a composite subrequest goes through the same check
        graph = sf_http.post(f"{sf_sandbox.instance_url}{V}/composite", json={
            "compositeRequest": [{"method": "GET", "referenceId": "q",
                                  "url": f"{V}/query?q=SELECT+Id+FROM+Product2"}]})
        [sub] = graph.json()["compositeResponse"]
        assert sub["httpStatusCode"] == 400 and sub["body"][0]["errorCode"] == "INVALID_TYPE"
        # the CS user (the admin API) is not held to the profile
        assert sf_sandbox.query("SELECT Id FROM Product2 LIMIT 1")["records"]
        sf_sandbox.set_permissions(objects={"Product2": "R", "OrderItem": ""})
        found = error(pipeline)
        assert found["errorCode"] == "INVALID_TYPE" and found["message"] == (
            "Didn't understand relationship 'OrderItems' in FROM part of query call.")
        assert error("SELECT Id FROM OrderItem")["errorCode"] == "INVALID_TYPE"
    finally:
        sf_sandbox.reset_permissions()
    assert _q(sf_http, sf_sandbox, pipeline).json()["records"][0]["OrderItems"]["records"]


def test_describe_tells_the_profile(sf_sandbox: Any, sf_http: requests.Session) -> None:
    """Describe answers as the integration user sees the org: objects it may not read are
    absent (their describe and records 404 as an unknown name's), object and field
    createable/updateable/deletable follow the profile — so the sink's start-up check
    (``sinks.fence.check_field``) sees a revoked Update as the org would show it."""
    from common.errors import ConfigError
    from sinks.fence import check_field

    base = sf_sandbox.instance_url + V

    def described(name: str) -> dict:
        resp = sf_http.get(f"{base}/sobjects/{name}/describe")
        assert resp.status_code == 200, resp.text
        return resp.json()

    def field(name: str, field_name: str) -> dict:
        return next(f for f in described(name)["fields"] if f["name"] == field_name)

    class Describer:
        def describe(self, sobject: str) -> dict:
            return described(sobject)

    listed = {o["name"]: o for o in sf_http.get(f"{base}/sobjects").json()["sobjects"]}
    assert {k: listed["Product2"][k] for k in ("queryable", "retrieveable", "createable",
                                               "updateable", "deletable")} == {
        "queryable": True, "retrieveable": True, "createable": False, "updateable": False,
        "deletable": False}
    assert listed["Order"]["updateable"] and not listed["Order"]["deletable"]
    assert field("Product2", "Name")["updateable"] is False
    assert field("Product2", "Name")["createable"] is False
    assert field("Order", "Activation_Outcome_Ms__c")["updateable"] is True
    check_field(Describer(), "Activation_Outcome_Ms__c")  # the requirements' profile passes
    sf_sandbox.set_permissions(objects={"Order": "CR"})
    try:
        outcome = field("Order", "Activation_Outcome_Ms__c")
        assert outcome["updateable"] is False and outcome["createable"] is True
        assert described("Order")["updateable"] is False
        with pytest.raises(ConfigError, match="not updatable by the integration user"):
            check_field(Describer(), "Activation_Outcome_Ms__c")
        sf_sandbox.set_permissions(objects={"Order": ""})
        assert "Order" not in {o["name"] for o in sf_http.get(f"{base}/sobjects").json()[
            "sobjects"]}
        unknown = sf_http.get(f"{base}/sobjects/Nope__c/describe")
        [order_id] = _pending_orders(sf_sandbox, 1)
        for resp in (sf_http.get(f"{base}/sobjects/Order/describe"),
                     sf_http.get(f"{base}/sobjects/Order/{order_id}"),
                     sf_http.patch(f"{base}/sobjects/Order/{order_id}",
                                   json={"Activation_Error__c": "x"})):
            assert resp.status_code == 404 and resp.json() == unknown.json() == [
                {"message": "The requested resource does not exist", "errorCode": "NOT_FOUND",
                 "fields": []}]
        assert "Orders" not in {r["relationshipName"]
                                for r in described("Account")["childRelationships"]}
    finally:
        sf_sandbox.reset_permissions()
    assert described("Order")["updateable"] is True


def test_permission_edits_are_checked_whole(sf_sandbox: Any, sf_http: requests.Session) -> None:
    """``POST /__sandbox/permissions``: names are canonicalised (``order``, an event without
    ``/event/``) so an edit takes effect; an unknown name, key or letter — or Create, Edit,
    Delete without what Setup requires for them — is a 400 that changes nothing, even where
    the rest of the body was valid."""
    url = sf_sandbox.instance_url + "/__sandbox/permissions"
    before = sf_sandbox.permissions()
    assert before["default_object"] == "R" and before["default_event"] == ""
    for body in ({"objects": {"Nope__c": "R"}}, {"events": {"/event/Nope__e": "S"}},
                 {"object": {"Order": "R"}}, {"objects": {"Order": "RX"}},
                 {"objects": {"Order": "C"}}, {"objects": {"Order": "RD"}},
                 {"objects": ["Order"]}, ["objects"], {"objects": {"Order": 7}},
                 {"objects": {"Account": "R"}, "events": {"Nope__e": "S"}}):
        resp = sf_http.post(url, json=body)
        assert resp.status_code == 400, (body, resp.text)
        assert sf_sandbox.permissions() == before, body
    [order_id] = _pending_orders(sf_sandbox, 1)
    try:
        changed = sf_http.post(url, json={"objects": {"order": "r"},
                                          "events": {"OrderProvisionRequested__e": ""}})
        assert changed.status_code == 200, changed.text
        assert changed.json()["objects"]["Order"] == "R" and "order" not in \
            changed.json()["objects"]
        assert changed.json()["events"] == {"/event/OrderProvisionRequested__e": ""}
        resp = sf_http.patch(f"{sf_sandbox.instance_url}{V}/sobjects/Order/{order_id}",
                             json={"Activation_Error__c": "x"})
        assert resp.status_code == 400
        assert resp.json()[0]["errorCode"] == "INSUFFICIENT_ACCESS_OR_READONLY"
    finally:
        sf_sandbox.reset_permissions()
    assert sf_sandbox.permissions() == before


def test_admin_writes_refuse_fields_that_are_not_an_object(sf_sandbox: Any,
                                                           sf_http: requests.Session) -> None:
    admin = sf_sandbox.instance_url + "/__sandbox"
    [order_id] = _pending_orders(sf_sandbox, 1)
    for path, body in (("/create", {"type": "Case", "fields": "Subject"}),
                       ("/create", {"type": "Case", "fields": ["Subject", "x"]}),
                       ("/update", {"type": "Order", "id": order_id, "fields": "Status"})):
        resp = sf_http.post(admin + path, json=body)
        assert resp.status_code == 400 and "fields" in resp.text, (path, body, resp.text)


def _error_array(resp: requests.Response, status: int, code: str) -> dict:
    """The one error of a Salesforce JSON error array, with the limit header stamped."""
    assert resp.status_code == status, resp.text
    assert resp.headers["Sforce-Limit-Info"].startswith("api-usage="), resp.headers
    [error] = resp.json()
    assert set(error) == {"message", "errorCode", "fields"} and error["errorCode"] == code
    return error


def test_malformed_input_answers_a_json_error(sf_sandbox: Any,
                                              sf_http: requests.Session) -> None:
    """A reference past the end of a list, ``attributes`` that is not an object, a
    subrequest that is not an object: Salesforce's error array, not a plain-text 500."""
    base = sf_sandbox.instance_url + V
    [order_id] = _pending_orders(sf_sandbox, 1)
    query = {"method": "GET", "referenceId": "q",
             "url": f"{V}/query?q=SELECT+Id+FROM+Order+WHERE+Id+=+'{order_id}'"}
    for ref in ("@{q.records[9].Id}", "@{q.records[0].Nope}", "@{q.totalSize.Id}",
                "@{q.records.Id}"):
        resp = sf_http.post(base + "/composite", json={"compositeRequest": [
            query, {"method": "GET", "url": f"{V}/sobjects/Order/{ref}", "referenceId": "o"}]})
        assert resp.status_code == 200, (ref, resp.text)
        first, second = resp.json()["compositeResponse"]
        assert first["httpStatusCode"] == 200 and second["httpStatusCode"] == 400, ref
        assert second["body"] == [{"errorCode": "INVALID_REFERENCE", "fields": [], "message":
                                   f"Invalid reference specified. No value for {ref[2:-1]} "
                                   "found in q"}]
    resp = sf_http.post(base + "/composite", json={"compositeRequest": [query, "not a request"]})
    _error_array(resp, 400, "JSON_PARSER_ERROR")
    for attributes in ("Order", ["Order"], {"type": 5}):
        resp = sf_http.patch(base + "/composite/sobjects", json={"records": [
            {"attributes": attributes, "id": order_id, "Activation_Error__c": "attr"}]})
        _error_array(resp, 400, "JSON_PARSER_ERROR")
    assert sf_sandbox.get_record(order_id)["Activation_Error__c"] != "attr"


def test_an_unexpected_error_answers_unknown_exception(tmp_path: Any, monkeypatch: Any,
                                                       caplog: Any) -> None:
    """The backstop: any other exception is a JSON 500 ``UNKNOWN_EXCEPTION`` with the limit
    header, its traceback in the sandbox's log (in-process, with a failing ``rest.call``)."""
    import asyncio
    import logging

    from aiohttp.test_utils import TestClient, TestServer

    from sandbox.salesforce import http_app, rest
    from sandbox.salesforce.core import Config, Sandbox

    sb = Sandbox(Config(db_path=str(tmp_path / "sf.db"), client_id="c",
                        username="u@example.com", jwt_cert_pem=b""))
    monkeypatch.setattr(sb, "user_for_token", lambda _token: sb.users["u@example.com"])

    def broken(*_args: Any) -> Any:
        raise RuntimeError("a bug in the sandbox")

    monkeypatch.setattr(rest, "call", broken)

    async def get() -> tuple[int, str, str]:
        async with TestClient(TestServer(http_app.make_app(sb))) as client:
            resp = await client.get(V + "/limits")
            return resp.status, resp.headers.get("Sforce-Limit-Info", ""), await resp.text()

    try:
        with caplog.at_level(logging.ERROR, logger="sandbox.salesforce"):
            status, limit_info, text = asyncio.run(get())
    finally:
        sb.store.close()
    assert status == 500 and limit_info == f"api-usage=1/{sb.faults.daily_limit}", text
    [error] = json.loads(text)
    assert error["errorCode"] == "UNKNOWN_EXCEPTION" and error["fields"] == []
    error_id = error["message"].rsplit(" ", 1)[1]
    [logged] = [r for r in caplog.records if error_id in r.getMessage()]
    assert logged.exc_info and "a bug in the sandbox" in str(logged.exc_info[1])


def test_an_id_of_another_object_is_not_found(sf_sandbox: Any,
                                              sf_http: requests.Session) -> None:
    """``/sobjects/Order/<an Account id>`` answers 404 ``NOT_FOUND``; inside sObject
    Collections the record's error stays ``INVALID_CROSS_REFERENCE_KEY``."""
    base = sf_sandbox.instance_url + V
    account_id = _q(sf_http, sf_sandbox, "SELECT Id FROM Account LIMIT 1").json()[
        "records"][0]["Id"]
    message = f"Provided external ID field does not exist or is not accessible: {account_id}"
    sf_sandbox.set_permissions(objects={"Case": "CRUD"})  # reset by sf_http
    for resp in (sf_http.get(f"{base}/sobjects/Order/{account_id}"),
                 sf_http.patch(f"{base}/sobjects/Order/{account_id}",
                               json={"Activation_Error__c": "x"}),
                 sf_http.delete(f"{base}/sobjects/Case/{account_id}")):
        assert _error_array(resp, 404, "NOT_FOUND")["message"] == message
    [result] = sf_http.patch(base + "/composite/sobjects", json={"records": [
        {"attributes": {"type": "Order"}, "id": account_id, "Activation_Error__c": "x"}]}
        ).json()
    assert not result["success"]
    assert result["errors"] == [{"statusCode": "INVALID_CROSS_REFERENCE_KEY",
                                 "message": message, "fields": ["Id"]}]


def test_error_bodies_always_carry_fields(sf_sandbox: Any, sf_http: requests.Session) -> None:
    """``fields`` is in every error, an empty list when no field is to blame: aiohttp's
    404 and 405, an SfError without fields, composite's ``PROCESSING_HALTED``."""
    base = sf_sandbox.instance_url + V
    assert _error_array(sf_http.get(sf_sandbox.instance_url + "/services/nothing"), 404,
                        "NOT_FOUND")["fields"] == []
    assert _error_array(sf_http.get(sf_sandbox.login_url + "/services/oauth2/token"), 405,
                        "METHOD_NOT_ALLOWED")["fields"] == []
    assert _error_array(sf_http.get(base + "/nothing"), 404, "NOT_FOUND")["fields"] == []
    [order_id] = _pending_orders(sf_sandbox, 1)
    out = sf_http.post(base + "/composite", json={"allOrNone": True, "compositeRequest": [
        {"method": "GET", "url": f"{V}/sobjects/Order/{order_id}", "referenceId": "ok"},
        {"method": "PATCH", "url": f"{V}/sobjects/Order/{order_id}", "referenceId": "bad",
         "body": {"Status": "Bogus"}}]}).json()["compositeResponse"]
    assert out[0]["body"] == [{"message": "The transaction was rolled back since another "
                               "operation in the same transaction failed.",
                               "errorCode": "PROCESSING_HALTED", "fields": []}]
    assert out[1]["body"][0]["fields"] == ["Status"]
