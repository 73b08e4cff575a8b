"""The client's API usage (``Sforce-Limit-Info``) follows every answer, not only some.

simple-salesforce reads the header into whichever object made the call — the ``Salesforce``
object for ``query``/``restful``, an ``SFType`` for ``get``/``update``/``describe`` — and
not at all when the answer is an error. The sink's ``sfprov_sink_api_usage_used`` gauge and
``/readyz`` read :attr:`SalesforceClient.api_usage`, so it must move on each of them: above
all on ``REQUEST_LIMIT_EXCEEDED``, the answer an operator looks at the gauge for.
"""
from __future__ import annotations

from typing import Any

import pytest

from common.errors import SalesforceError, SalesforceLimitError
from common.salesforce import SalesforceClient
from common.settings import SalesforceSettings


def _client(sf_sandbox: Any) -> SalesforceClient:
    return SalesforceClient(SalesforceSettings.load(sf_sandbox.env()))


def _used(sf_sandbox: Any) -> int:
    return int(sf_sandbox.counters()["api_used"])


def test_an_sobject_read_and_a_describe_record_the_usage(sf_sandbox: Any) -> None:
    client = _client(sf_sandbox)
    order_id = client.query("SELECT Id FROM Order LIMIT 1")[0]["Id"]
    client.api_usage = None
    client.get("Order", order_id)
    assert client.api_usage is not None and client.api_usage[0] == _used(sf_sandbox)
    client.api_usage = None
    client.describe("Opportunity")
    assert client.api_usage is not None and client.api_usage[0] == _used(sf_sandbox)


def test_an_error_answer_records_the_usage(sf_sandbox: Any) -> None:
    client = _client(sf_sandbox)
    client.query("SELECT Id FROM Order LIMIT 1")
    before = client.api_usage
    assert before is not None
    with pytest.raises(SalesforceError):
        client.update("Order", "801000000000000AAA", {"Description": "x"})
    assert client.api_usage is not None and client.api_usage[0] > before[0]
    assert client.api_usage[0] == _used(sf_sandbox)


def test_the_limit_answer_shows_the_limit_reached(sf_sandbox: Any) -> None:
    client = _client(sf_sandbox)
    client.query("SELECT Id FROM Order LIMIT 1")
    used = _used(sf_sandbox)
    sf_sandbox.set_faults(daily_limit=used)
    try:
        with pytest.raises(SalesforceLimitError):
            client.query("SELECT Id FROM Order LIMIT 1")
        assert client.api_usage == (used, used)
    finally:
        sf_sandbox.set_faults(daily_limit=5_000_000)
