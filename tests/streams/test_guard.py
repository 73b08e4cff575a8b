import asyncio

import pytest

from common.errors import SalesforceError, SalesforceLimitError
from streams.guard import MAX_IDS_PER_QUERY, Guard, guard_soql


def test_soql_selects_the_guard_fields_for_all_ids_once():
    soql = guard_soql(["801000000000002AAA", "801000000000001AAA", "801000000000001AAA"])
    assert soql.count("'801000000000001AAA'") == 1
    assert "WHERE Id IN ('801000000000001AAA', '801000000000002AAA')" in soql
    for field in ("Activation_Status__c", "WHMCS_Order_Id__c", "Account.WH_Account__c",
                  "Product2.Portal_ConfigOptions_JSON__c", "FROM OrderItems"):
        assert field in soql


@pytest.mark.parametrize("bad", ["801' OR Id != '", "", "801000000000001AAA'", "x" * 19])
def test_ids_that_are_not_salesforce_ids_are_refused(bad):
    with pytest.raises(ValueError):
        guard_soql([bad])


class Flaky:
    def __init__(self, failures):
        self.failures = list(failures)
        self.soql = []

    def query(self, soql):
        self.soql.append(soql)
        if self.failures:
            raise self.failures.pop(0)
        return [{"Id": "801000000000001AAA", "Activation_Status__c": "Activating"}]


async def _no_sleep(_s):
    return None


def test_guard_retries_while_salesforce_is_down_and_recovers():
    client = Flaky([SalesforceError("503", status=503, retryable=True),
                    SalesforceLimitError("limit", error_code="REQUEST_LIMIT_EXCEEDED"),
                    SalesforceError("bad field", error_code="INVALID_FIELD")])
    guard = Guard(client, sleep=_no_sleep)
    orders = asyncio.run(guard.fetch(["801000000000001"]))  # a 15-char id matches too
    assert Guard.find(orders, "801000000000001")["Activation_Status__c"] == "Activating"
    assert len(client.soql) == 4 and guard.unavailable_since is None


def test_large_batches_are_chunked_and_bad_ids_skipped():
    client = Flaky([])
    ids = [f"801{i:012d}AAA" for i in range(MAX_IDS_PER_QUERY + 5)] + ["not-an-id"]
    asyncio.run(Guard(client, sleep=_no_sleep).fetch(ids))
    assert len(client.soql) == 2


def test_a_full_chunk_of_ids_is_one_query_salesforce_accepts(salesforce):
    """300 ids make a ~9 KB GET URL: under Salesforce's 16,384-character URI limit (and the
    sandbox must accept what Salesforce accepts)."""
    import asyncio

    from common.salesforce import SalesforceClient
    from common.settings import SalesforceSettings
    from streams.guard import MAX_IDS_PER_QUERY

    client = SalesforceClient(SalesforceSettings.load(salesforce.env()))
    ids = [f"801ZZ{i:010d}AAA" for i in range(MAX_IDS_PER_QUERY * 2 + 5)]
    guard = Guard(client)
    found = asyncio.run(asyncio.wait_for(guard.fetch(ids), timeout=60))
    assert found == {}  # none of them exists; what matters is that each query was accepted
    assert guard.queries == 3  # 605 ids → three chunks, each accepted the first time
    assert guard.unavailable_since is None and guard.last_error is None
