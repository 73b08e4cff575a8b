"""Per-record verdicts of one flush, and bisection of a batch refused as a whole."""

from __future__ import annotations

import pytest

from common.errors import SalesforceAuthError, SalesforceError, SalesforceLimitError
from sinks.batch import Batcher, Entry, Tracked
from sinks.mapping import RecordKey, RecordUpdate
from sinks.writer import CollectionWriter
from tests.sinks.fakes import FakeCollections, bad_request, limit_error


def entries(n: int) -> list[Entry]:
    batcher = Batcher()
    for i in range(n):
        batcher.add(Tracked(0, i, None, None),
                    [RecordUpdate(RecordKey("Order", f"801{i:04d}"), {"Activation_Status__c":
                                                                      "Provisioned"})], now=i)
    return batcher.take(now=n, limit=10_000)


def test_per_record_errors_are_sorted_transient_or_permanent() -> None:
    fake = FakeCollections()
    fake.record_errors["8010001"] = [{"statusCode": "UNABLE_TO_LOCK_ROW", "message": "locked",
                                      "fields": []}]
    fake.record_errors["8010002"] = [{"statusCode": "ENTITY_IS_DELETED", "message": "deleted",
                                      "fields": []}]
    fake.record_errors["8010003"] = [{"statusCode": "INVALID_FIELD", "message": "no such",
                                      "fields": ["WHMCS_Order_Id__c"]}]
    result = CollectionWriter(fake).write(entries(5))
    assert [e.key.record_id for e in result.acked] == ["8010000", "8010004"]
    assert [(e.key.record_id, err.code) for e, err in result.transient] == \
        [("8010001", "UNABLE_TO_LOCK_ROW")]
    assert [(e.key.record_id, err.code, err.fields) for e, err in result.permanent] == \
        [("8010002", "ENTITY_IS_DELETED", ()),
         ("8010003", "INVALID_FIELD", ("WHMCS_Order_Id__c",))]
    assert result.calls == 1


def test_chunks_of_at_most_batch_size() -> None:
    fake = FakeCollections()
    result = CollectionWriter(fake, chunk_size=200).write(entries(450))
    assert [len(c) for c in fake.calls] == [200, 200, 50]
    assert len(result.acked) == 450


def test_limit_and_outage_propagate() -> None:
    fake = FakeCollections()
    fake.fail_call = lambda _records: limit_error()
    with pytest.raises(SalesforceLimitError):
        CollectionWriter(fake).write(entries(3))
    fake.fail_call = lambda _records: SalesforceError("503", status=503, retryable=True)
    with pytest.raises(SalesforceError):
        CollectionWriter(fake).write(entries(3))


def test_whole_call_refusal_is_bisected_to_the_culprit() -> None:
    fake = FakeCollections()
    fake.fail_call = lambda records: bad_request() if any(
        r["id"] == "8010005" for r in records) else None
    result = CollectionWriter(fake).write(entries(16))
    assert [(e.key.record_id, err.code) for e, err in result.permanent] == \
        [("8010005", "JSON_PARSER_ERROR")]
    assert len(result.acked) == 15
    assert result.calls <= 1 + 2 * 4  # log2(16) levels, two calls each


def test_mixed_transient_and_permanent_errors_count_as_permanent() -> None:
    fake = FakeCollections()
    fake.record_errors["8010000"] = [
        {"statusCode": "UNABLE_TO_LOCK_ROW", "message": "locked"},
        {"statusCode": "FIELD_CUSTOM_VALIDATION_EXCEPTION", "message": "rule"}]
    result = CollectionWriter(fake).write(entries(1))
    assert [err.code for _e, err in result.permanent] == ["FIELD_CUSTOM_VALIDATION_EXCEPTION"]


def outcomes_with_opportunities(n: int) -> list[Entry]:
    """``n`` Provisioned outcomes, each an Order and its Opportunity, as the sink maps them:
    taken oldest first, the two types alternate."""
    batcher = Batcher()
    for i in range(n):
        batcher.add(Tracked(0, i, None, None), [
            RecordUpdate(RecordKey("Order", f"801{i:04d}"), {"Activation_Status__c": "Provisioned"}),
            RecordUpdate(RecordKey("Opportunity", f"006{i:04d}"), {"StageName": "Active"})],
            now=i)
    return batcher.take(now=n, limit=10_000)


def test_one_call_holds_each_type_together() -> None:
    taken = outcomes_with_opportunities(100)
    assert [e.key.sobject for e in taken[:4]] == ["Order", "Opportunity"] * 2  # interleaved
    fake = FakeCollections()  # refuses a call of more than 10 chunks, as Salesforce does
    result = CollectionWriter(fake).write(taken)
    assert result.calls == 1 and len(result.acked) == 200 and not result.permanent
    types = [r["attributes"]["type"] for r in fake.calls[0]]
    assert types == ["Opportunity"] * 100 + ["Order"] * 100  # two chunks
    assert [r["id"] for r in fake.calls[0][100:103]] == ["8010000", "8010001", "8010002"]


def test_a_refusal_no_record_caused_fails_no_record() -> None:
    """A login refused for good (a revoked certificate, a frozen user) or a 403/404 about the
    installation: the call is refused whatever it holds. Bisecting it would dead-letter every
    outcome; it propagates (the sink pauses and retries) after one call."""
    for refusal in (
            SalesforceAuthError("JWT bearer login refused: invalid_grant: user is inactive",
                                error_code="invalid_grant", status=400, retryable=False),
            SalesforceError("Salesforce 403 INSUFFICIENT_ACCESS", error_code="INSUFFICIENT_ACCESS",
                            status=403, retryable=False),
            SalesforceError("Salesforce 404 NOT_FOUND", error_code="NOT_FOUND", status=404,
                            retryable=False)):
        fake = FakeCollections()
        fake.fail_call = lambda _records, refusal=refusal: refusal
        with pytest.raises(SalesforceError) as raised:
            CollectionWriter(fake).write(entries(16))
        assert raised.value is refusal and len(fake.calls) == 1


def test_a_lock_met_by_a_trigger_is_transient() -> None:
    fake = FakeCollections()
    fake.record_errors["8010000"] = [{
        "statusCode": "CANNOT_INSERT_UPDATE_ACTIVATE_ENTITY",
        "message": "OrderTrigger: execution of AfterUpdate caused by: System.DmlException: "
                   "Update failed. First exception on row 0; first error: UNABLE_TO_LOCK_ROW, "
                   "unable to obtain exclusive access to this record: []"}]
    fake.record_errors["8010001"] = [{
        "statusCode": "CANNOT_INSERT_UPDATE_ACTIVATE_ENTITY",
        "message": "OrderTrigger: execution of AfterUpdate caused by: System.NullPointerException"}]
    result = CollectionWriter(fake).write(entries(2))
    assert [e.key.record_id for e, _err in result.transient] == ["8010000"]
    assert [e.key.record_id for e, _err in result.permanent] == ["8010001"]


def opportunities(n: int) -> list[Entry]:
    batcher = Batcher()
    for i in range(n):
        batcher.add(Tracked(0, i, None, None),
                    [RecordUpdate(RecordKey("Opportunity", f"006{i:04d}"),
                                  {"StageName": "Active", "WHMCS_Service_ID__c": i})], now=i)
    return batcher.take(now=n, limit=10_000)


def test_records_refused_for_a_lost_permission_are_not_permanent() -> None:
    """Update on Opportunity removed: each record comes back INSUFFICIENT_ACCESS_OR_READONLY
    and describe says Opportunity is not updatable — a refusal no record caused, returned
    apart (the sink requeues and pauses), one describe for the whole write."""
    fake = FakeCollections()
    fake.revoke_update("Opportunity")
    result = CollectionWriter(fake).write(opportunities(5) + entries(2))
    assert not result.permanent and len(result.acked) == 2  # the Orders went
    assert [err.code for _e, err in result.no_access] == ["INSUFFICIENT_ACCESS_OR_READONLY"] * 5
    assert fake.describes == ["Opportunity"]
    [problem] = result.access_problems
    assert "may not update Opportunity" in problem and "Update (Edit)" in problem


@pytest.mark.parametrize(("code", "change", "named"), [
    ("INVALID_FIELD_FOR_INSERT_UPDATE", {"updateable": False},
     "Opportunity.WHMCS_Service_ID__c is read-only"),
    ("INVALID_FIELD_FOR_INSERT_UPDATE", None, "Opportunity.WHMCS_Service_ID__c is not visible"),
])
def test_a_field_made_read_only_holds_the_records(code: str, change: dict | None,
                                                  named: str) -> None:
    fake = FakeCollections()
    if change is None:
        del fake.fields["Opportunity"]["WHMCS_Service_ID__c"]
    else:
        fake.fields["Opportunity"]["WHMCS_Service_ID__c"].update(change)
    for entry in opportunities(3):
        fake.record_errors[entry.key.record_id] = [{"statusCode": code, "message": "x"}]
    result = CollectionWriter(fake).write(opportunities(3))
    assert not result.permanent and len(result.no_access) == 3
    assert named in result.access_problems[0]


def test_read_removed_holds_the_records() -> None:
    fake = FakeCollections()
    for entry in opportunities(2):
        fake.record_errors[entry.key.record_id] = [{"statusCode": "NOT_FOUND", "message": "x"}]

    def hidden(_sobject: str) -> dict:
        raise SalesforceError("Salesforce 404 NOT_FOUND", status=404, error_code="NOT_FOUND",
                              retryable=False)

    fake.describe = hidden  # type: ignore[method-assign]
    result = CollectionWriter(fake).write(opportunities(2))
    assert not result.permanent and len(result.no_access) == 2
    assert "cannot read Opportunity" in result.access_problems[0]


def test_a_refusal_of_one_record_on_an_updatable_object_stays_permanent() -> None:
    """A sharing rule on one record, a deleted record: describe says the object and the
    fields are updatable, so the record is dead-lettered as before."""
    fake = FakeCollections()
    fake.record_errors["0060001"] = [{"statusCode": "INSUFFICIENT_ACCESS_OR_READONLY",
                                      "message": "insufficient access rights on object id"}]
    fake.record_errors["0060002"] = [{"statusCode": "NOT_FOUND", "message": "no such record"}]
    result = CollectionWriter(fake).write(opportunities(4))
    assert [(e.key.record_id, err.code) for e, err in result.permanent] == [
        ("0060001", "INSUFFICIENT_ACCESS_OR_READONLY"), ("0060002", "NOT_FOUND")]
    assert not result.no_access and fake.describes == ["Opportunity"]


@pytest.mark.parametrize("failure", [
    SalesforceError("Salesforce 503", status=503, retryable=True),
    SalesforceLimitError("Salesforce 403 REQUEST_LIMIT_EXCEEDED", status=403,
                         error_code="REQUEST_LIMIT_EXCEEDED", retry_after=60.0),
])
def test_a_describe_that_cannot_answer_decides_nothing(failure: SalesforceError) -> None:
    fake = FakeCollections()
    fake.record_errors["0060000"] = [{"statusCode": "INSUFFICIENT_ACCESS_OR_READONLY",
                                      "message": "x"}]

    def down(_sobject: str) -> dict:
        raise failure

    fake.describe = down  # type: ignore[method-assign]
    result = CollectionWriter(fake).write(opportunities(2))
    assert not result.permanent and len(result.no_access) == 1 and len(result.acked) == 1
    assert result.access_problems[0].startswith("cannot tell whether")
    assert result.describe_limited is isinstance(failure, SalesforceLimitError)


APEX_LIMIT = [{"statusCode": "CANNOT_INSERT_UPDATE_ACTIVATE_ENTITY", "fields": [],
               "message": "OrderTrigger: System.LimitException: Too many SOQL queries: 101"}]


@pytest.mark.parametrize("others", ["superseded", "permanent"])
def test_a_governor_limit_beside_other_answers_is_still_the_calls(others: str) -> None:
    """Records refused by a governor limit beside one the fence refused (or one refused for
    its own reason) were dead-lettered at once: the limit is the call's (regression review)."""
    fake = FakeCollections()
    for i in range(1, 50):
        fake.record_errors[f"801{i:04d}"] = APEX_LIMIT
    fake.record_errors["8010000"] = (
        [{"statusCode": "FIELD_CUSTOM_VALIDATION_EXCEPTION", "message": "SFPROV_SUPERSEDED",
          "fields": []}] if others == "superseded" else
        [{"statusCode": "ENTITY_IS_DELETED", "message": "deleted", "fields": []}])
    with pytest.raises(SalesforceError, match="governor limit") as raised:
        CollectionWriter(fake).write(entries(50))
    assert raised.value.retryable


def test_a_governor_limit_met_by_a_record_alone_is_its_own() -> None:
    fake = FakeCollections()
    fake.record_errors["8010000"] = APEX_LIMIT
    result = CollectionWriter(fake).write(entries(1))
    assert [(e.key.record_id, err.code) for e, err in result.permanent] == \
        [("8010000", "CANNOT_INSERT_UPDATE_ACTIVATE_ENTITY")]


def test_one_records_own_governor_limit_beside_successes_is_its_own() -> None:
    """Its automation alone exceeds the limit: made a whole-call failure, the call was halved
    down to it while the sink paused for minutes (regression review)."""
    fake = FakeCollections()
    fake.record_errors["8010007"] = APEX_LIMIT
    result = CollectionWriter(fake).write(entries(50))
    assert [e.key.record_id for e, _err in result.permanent] == ["8010007"]
    assert len(result.acked) == 49 and result.calls == 1
