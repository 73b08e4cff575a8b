"""A reconciliation pass asks Salesforce (the sandbox, which must accept what Salesforce
accepts) for the Orders unchanged since its cutoff only, and counts the rest: an approval
burst's thousands of Orders in flight are not fetched and parsed every pass."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from common import reconcile
from common.reconcile import find_stranded, soql_datetime
from common.salesforce import SalesforceClient
from common.settings import KafkaSettings, SalesforceSettings


class _Counting:
    """The pipeline's Salesforce client, counting the records each query brought back."""

    def __init__(self, client: SalesforceClient) -> None:
        self.client = client
        self.fetched: list[int] = []

    def query(self, soql: str) -> list[dict[str, Any]]:
        records = self.client.query(soql)
        self.fetched.append(len(records))
        return records

    def count(self, soql: str) -> int:
        return self.client.count(soql)


@pytest.fixture
def no_topics(monkeypatch: pytest.MonkeyPatch) -> None:
    """The requests and outcomes topics hold nothing (no broker needed: what is tested here
    is which Orders the pass reads from Salesforce)."""
    def empty(*_a: Any, **_kw: Any) -> Iterator[Any]:
        return iter(())
    monkeypatch.setattr(reconcile, "read_topic", empty)


def test_a_pass_fetches_only_orders_unchanged_since_its_cutoff(sf_sandbox: Any,
                                                                no_topics: None) -> None:
    sf = _Counting(SalesforceClient(SalesforceSettings.load(sf_sandbox.env())))
    kafka = KafkaSettings.load({})
    approved = sf_sandbox.approve(count=6)  # Activating from now on, changed now
    activating = {r["Id"] for r in sf.client.query(
        "SELECT Id FROM Order WHERE Activation_Status__c = 'Activating'")}
    assert set(approved) <= activating

    # an hour's threshold now: every one of them is counted, none fetched
    plan = find_stranded(sf, kafka, older_than_s=3600)
    assert plan.activating == len(activating)
    assert sf.fetched == [0] and plan.candidates == {}

    # the same pass two hours later: all of them are candidates, fetched whole
    sf.fetched.clear()
    plan = find_stranded(sf, kafka, older_than_s=3600, now=time.time() + 7200)
    assert set(plan.candidates) == activating and sf.fetched == [len(activating)]
    assert set(plan.no_request) == activating  # the (empty) topics hold no request
    assert all(plan.candidates[oid]["OrderNumber"] for oid in activating)  # whole records

    # a gap pass: only those changed before the gap, however old the threshold allows
    sf.fetched.clear()
    plan = find_stranded(sf, kafka, older_than_s=0, changed_before=time.time() - 600)
    assert plan.candidates == {} and sf.fetched == [0]


def test_nothing_activating_is_one_count_and_no_fetch(sf_sandbox: Any) -> None:
    sf = _Counting(SalesforceClient(SalesforceSettings.load(sf_sandbox.env())))
    for row in sf.client.query("SELECT Id FROM Order WHERE Activation_Status__c = 'Activating'"):
        sf_sandbox.update("Order", row["Id"], {"Activation_Status__c": "Provisioned"})
    plan = find_stranded(sf, KafkaSettings.load({}), older_than_s=0)
    assert plan.activating == 0 and sf.fetched == []


def test_soql_datetimes_are_utc_whole_seconds() -> None:
    assert soql_datetime(0) == "1970-01-01T00:00:00Z"
    assert soql_datetime(1_796_112_000.9) == "2026-12-01T08:00:00Z"
