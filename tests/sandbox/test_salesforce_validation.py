"""The seeded org's validation rule behind the sink's outcome fence, over real HTTPS:
an older ``Activation_Outcome_Ms__c`` is refused with Salesforce's own error shape, an
equal or newer one (or none) is saved — on Order and Opportunity, in sObject Collections
and single-record PATCHes; and the hold that delays a collection update at will."""

from __future__ import annotations

import threading
import time
from typing import Any

import requests

V = "/services/data/v62.0"
FIELD = "Activation_Outcome_Ms__c"
MESSAGE = "SFPROV_SUPERSEDED: a newer provisioning outcome is already written on this record"


def _orders(sf: Any, n: int, offset: int) -> list[dict]:
    return sf.query(f"SELECT Id, OpportunityId FROM Order WHERE OpportunityId != null "
                    f"ORDER BY OrderNumber LIMIT {n} OFFSET {offset}")["records"]


def _patch(sf: Any, http: requests.Session, records: list[dict], all_or_none: bool = False
           ) -> list[dict]:
    resp = http.patch(sf.instance_url + V + "/composite/sobjects",
                      json={"allOrNone": all_or_none, "records": records})
    assert resp.status_code == 200, resp.text
    return resp.json()


def _rec(sobject: str, record_id: str, **fields: Any) -> dict:
    return {"attributes": {"type": sobject}, "id": record_id, **fields}


def test_collections_refuse_an_older_outcome_per_record(sf_sandbox: Any,
                                                        sf_http: requests.Session) -> None:
    rows = _orders(sf_sandbox, 5, 0)
    ids = [r["Id"] for r in rows]
    opp = rows[0]["OpportunityId"]
    first = [_rec("Order", i, Activation_Status__c="Failed", **{FIELD: 2000}) for i in ids]
    first.append(_rec("Opportunity", opp, StageName="Active", WHMCS_Service_ID__c=1,
                      **{FIELD: 2000}))
    assert all(r["success"] for r in _patch(sf_sandbox, sf_http, first))  # blank prior: saved

    results = _patch(sf_sandbox, sf_http, [
        _rec("Order", ids[0], Activation_Status__c="Provisioned", **{FIELD: 1999}),  # older
        _rec("Order", ids[1], Activation_Status__c="Provisioned", **{FIELD: 2000}),  # equal
        _rec("Order", ids[2], Activation_Status__c="Provisioned", **{FIELD: 2001}),  # newer
        _rec("Order", ids[3], Activation_Error__c="no outcome field"),               # untouched
        _rec("Order", ids[4], Activation_Status__c="Provisioned", **{FIELD: None}),  # blanked
        _rec("Opportunity", opp, WHMCS_Service_ID__c=2, **{FIELD: 1000}),           # older
    ])
    assert [r["success"] for r in results] == [False, True, True, True, True, False]
    for refused in (results[0], results[5]):
        assert refused["errors"] == [{"statusCode": "FIELD_CUSTOM_VALIDATION_EXCEPTION",
                                      "message": MESSAGE, "fields": [FIELD]}]
        assert "id" not in refused or refused["id"] in ids + [opp]
    stored = {i: sf_sandbox.get_record(i) for i in ids}
    assert stored[ids[0]]["Activation_Status__c"] == "Failed"  # nothing of it was saved
    assert stored[ids[0]][FIELD] == 2000
    assert stored[ids[1]]["Activation_Status__c"] == "Provisioned"
    assert stored[ids[2]][FIELD] == 2001
    assert stored[ids[3]]["Activation_Error__c"] == "no outcome field"
    assert stored[ids[4]][FIELD] is None
    assert sf_sandbox.get_record(opp)["WHMCS_Service_ID__c"] == 1


def test_all_or_none_rolls_the_others_back(sf_sandbox: Any, sf_http: requests.Session) -> None:
    ids = [r["Id"] for r in _orders(sf_sandbox, 2, 10)]
    _patch(sf_sandbox, sf_http, [_rec("Order", i, **{FIELD: 5000}) for i in ids])
    results = _patch(sf_sandbox, sf_http, [_rec("Order", ids[0], **{FIELD: 6000}),
                                           _rec("Order", ids[1], **{FIELD: 4000})],
                     all_or_none=True)
    assert [r["errors"][0]["statusCode"] for r in results] == [
        "ALL_OR_NONE_OPERATION_ROLLED_BACK", "FIELD_CUSTOM_VALIDATION_EXCEPTION"]
    assert sf_sandbox.get_record(ids[0])[FIELD] == 5000


def test_single_record_patch_answers_the_error_array(sf_sandbox: Any,
                                                     sf_http: requests.Session) -> None:
    [row] = _orders(sf_sandbox, 1, 20)
    url = f"{sf_sandbox.instance_url}{V}/sobjects/Order/{row['Id']}"
    assert sf_http.patch(url, json={FIELD: 1_741_064_767_892}).status_code == 204
    resp = sf_http.patch(url, json={FIELD: 1_741_064_767_891})  # one millisecond older
    assert resp.status_code == 400
    assert resp.json() == [{"message": MESSAGE, "errorCode": "FIELD_CUSTOM_VALIDATION_EXCEPTION",
                            "fields": [FIELD]}]
    # a user's edit of other fields keeps the value and passes
    sf_sandbox.update("Order", row["Id"], {"Description": "edited by customer service"})
    assert sf_sandbox.get_record(row["Id"])[FIELD] == 1_741_064_767_892


def test_describe_lists_the_field_on_order_and_opportunity(sf_sandbox: Any,
                                                           sf_http: requests.Session) -> None:
    for sobject in ("Order", "Opportunity"):
        fields = sf_http.get(f"{sf_sandbox.instance_url}{V}/sobjects/{sobject}/describe"
                             ).json()["fields"]
        [found] = [f for f in fields if f["name"] == FIELD]
        assert found["type"] == "double" and found["updateable"] is True


def test_a_held_collection_update_is_saved_only_when_released(
        sf_sandbox: Any, sf_http: requests.Session) -> None:
    ids = [r["Id"] for r in _orders(sf_sandbox, 2, 30)]
    sf_sandbox.set_faults(hold_collection_calls=1)
    answers: list[Any] = []
    sender = threading.Thread(target=lambda: answers.append(_patch(
        sf_sandbox, sf_http, [_rec("Order", ids[0], Activation_Error__c="held")])))
    sender.start()
    deadline = time.monotonic() + 30
    while sf_sandbox.counters()["held_calls"] != [1]:
        assert time.monotonic() < deadline, "the call was never held"
        time.sleep(0.05)
    # the hold counted down: the next call goes through, the held one is still unsaved
    other = requests.Session()  # a second connection: the first waits for its answer
    other.trust_env = False
    other.verify, other.headers = sf_http.verify, sf_http.headers
    assert _patch(sf_sandbox, other, [_rec("Order", ids[1], Activation_Error__c="free")])
    assert sf_sandbox.get_record(ids[1])["Activation_Error__c"] == "free"
    assert sf_sandbox.get_record(ids[0])["Activation_Error__c"] != "held"
    assert sf_sandbox.release_held() == 1
    sender.join(timeout=30)
    assert answers and answers[0][0]["success"] is True
    assert sf_sandbox.get_record(ids[0])["Activation_Error__c"] == "held"
    assert sf_sandbox.counters()["held_calls"] == []
