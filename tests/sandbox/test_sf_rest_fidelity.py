"""The Salesforce sandbox's SOQL and REST answers where a review found them unlike an org's
(in-process: a fresh sandbox per test, driven over HTTP with aiohttp's test client).

- a date or datetime literal that is no date (``2025-13-45``, year 0, an overflowing offset
  or ``LAST_N_DAYS:n``) is 400 ``MALFORMED_QUERY``, never a 500;
- a date literal on a datetime field, and a datetime literal on a date field, are 400
  ``INVALID_QUERY_FILTER_OPERATOR``;
- ``ORDER BY`` puts nulls first unless ``NULLS LAST`` says otherwise, DESC too;
- ``NEXT_N_DAYS:n`` starts at 00:00 tomorrow;
- ``\\_`` and ``\\%`` in a ``LIKE`` pattern match themselves; the other escapes are
  Salesforce's, and a backslash anywhere else is ``MALFORMED_QUERY``;
- a number too large for any Number field is that record's error in sObject Collections
  (the others are saved), NaN and infinities are refused (as text in a field, and as JSON
  tokens in a body: 400 ``JSON_PARSER_ERROR``);
- a query locator lives two days from its query (then 400 ``INVALID_QUERY_LOCATOR``), and
  the sandbox keeps a bounded number of them.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Iterator
from typing import Any

import pytest

from sandbox.salesforce import dml, http_app, rest
from sandbox.salesforce.core import Config, Sandbox

V = "/services/data/v62.0"
DAY_S = 86400


@pytest.fixture
def sb(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Sandbox]:
    sandbox = Sandbox(Config(db_path=str(tmp_path / "sf.db"), client_id="c",
                             username="u@example.com", jwt_cert_pem=b""))
    # every call as the integration user (held to its profile), no OAuth round trip
    monkeypatch.setattr(sandbox, "user_for_token",
                        lambda _token: sandbox.users["u@example.com"])
    yield sandbox
    sandbox.store.close()


def _http(sb: Sandbox, method: str, path: str, *, params: dict | None = None,
          body: Any = None, raw: bytes | None = None,
          headers: dict | None = None) -> tuple[int, Any]:
    """One request to the sandbox's HTTP app: (status, decoded JSON body or None)."""
    from aiohttp.test_utils import TestClient, TestServer

    async def go() -> tuple[int, Any]:
        async with TestClient(TestServer(http_app.make_app(sb))) as client:
            data = raw if raw is not None else (
                None if body is None else json.dumps(body).encode())
            hdrs = {"Content-Type": "application/json", **(headers or {})}
            resp = await client.request(method, path, params=params, data=data, headers=hdrs)
            text = await resp.text()
            return resp.status, json.loads(text) if text else None

    return asyncio.run(go())


def _query(sb: Sandbox, soql: str, **headers: str) -> tuple[int, Any]:
    return _http(sb, "GET", V + "/query", params={"q": soql}, headers=headers)


def _rows(sb: Sandbox, soql: str) -> list[dict]:
    status, body = _query(sb, soql)
    assert status == 200, (soql, body)
    return body["records"]


def _refused(sb: Sandbox, soql: str, code: str) -> str:
    status, body = _query(sb, soql)
    assert status == 400, (soql, status, body)
    assert isinstance(body, list) and body[0]["errorCode"] == code, (soql, body)
    return body[0]["message"]


def _create(sb: Sandbox, sobject: str, **fields: Any) -> str:
    with sb.store.transaction() as tx:
        return dml.create(tx, sobject, fields, sb.users[sb.config.cs_username])["Id"]


def _today(sb: Sandbox) -> dt.date:
    return dt.datetime.fromtimestamp(sb.store.now_ms() / 1000, tz=dt.UTC).date()


def _order(sb: Sandbox, effective: dt.date, name: str = "o") -> str:
    account = _create(sb, "Account", Name=f"acct {name}")
    return _create(sb, "Order", AccountId=account, Status="Draft", Name=name,
                   EffectiveDate=effective.isoformat())


# -- date and datetime literals ----------------------------------------------------------

@pytest.mark.parametrize("soql", [
    "SELECT Id FROM Order WHERE LastModifiedDate < 2025-13-45T00:00:00Z",
    "SELECT Id FROM Order WHERE LastModifiedDate < 0000-01-01T00:00:00Z",
    "SELECT Id FROM Order WHERE CreatedDate < 9999-12-31T23:59:59-01:00",
    "SELECT Id FROM Order WHERE CreatedDate = LAST_N_DAYS:99999999",
    "SELECT Id FROM Order WHERE CreatedDate = NEXT_N_DAYS:99999999",
    "SELECT Id FROM Order WHERE EffectiveDate < 2025-13-45",
    "SELECT Id FROM Order WHERE EffectiveDate IN (2025-01-01, 2025-02-30)",
])
def test_a_literal_that_is_no_date_is_malformed_not_a_500(sb: Sandbox, soql: str) -> None:
    _order(sb, _today(sb))
    _refused(sb, soql, "MALFORMED_QUERY")


def test_a_date_literal_on_a_datetime_field_and_back_are_refused(sb: Sandbox) -> None:
    _order(sb, _today(sb))
    assert _refused(sb, "SELECT Id FROM Order WHERE CreatedDate > 2000-01-01",
                    "INVALID_QUERY_FILTER_OPERATOR") == (
        "value of filter criterion for field 'CreatedDate' must be of type dateTime and "
        "should not be enclosed in quotes")
    assert _refused(sb, "SELECT Id FROM Order WHERE EffectiveDate < 2025-01-01T00:00:00Z",
                    "INVALID_QUERY_FILTER_OPERATOR") == (
        "value of filter criterion for field 'EffectiveDate' must be of type date and "
        "should not be enclosed in quotes")
    assert _refused(sb, "SELECT Id FROM Order WHERE CreatedDate > '2000-01-01T00:00:00Z'",
                    "INVALID_QUERY_FILTER_OPERATOR") == (
        "value of filter criterion for field 'CreatedDate' must be of type dateTime and "
        "should not be enclosed in quotes")
    # the right kinds still work
    assert _rows(sb, "SELECT Id FROM Order WHERE CreatedDate > 2000-01-01T00:00:00Z")
    assert _rows(sb, "SELECT Id FROM Order WHERE EffectiveDate > 2000-01-01")
    assert _rows(sb, "SELECT Id FROM Order WHERE EffectiveDate = TODAY")
    assert _rows(sb, "SELECT Id FROM Order WHERE CreatedDate = LAST_N_DAYS:3")


def test_next_n_days_starts_tomorrow(sb: Sandbox) -> None:
    today = _today(sb)
    ids = {offset: _order(sb, today + dt.timedelta(days=offset), f"d{offset}")
           for offset in (-1, 0, 1, 2, 3)}
    got = {r["Id"] for r in _rows(sb, "SELECT Id FROM Order WHERE EffectiveDate = "
                                      "NEXT_N_DAYS:2")}
    assert got == {ids[1], ids[2]}
    got = {r["Id"] for r in _rows(sb, "SELECT Id FROM Order WHERE EffectiveDate = TODAY")}
    assert got == {ids[0]}
    # a datetime field: a record made now (today) is not in the next days
    assert not _rows(sb, "SELECT Id FROM Order WHERE CreatedDate = NEXT_N_DAYS:5")


# -- ORDER BY nulls ----------------------------------------------------------------------

def test_nulls_come_first_by_default_ascending_and_descending(sb: Sandbox) -> None:
    blank = _create(sb, "Account", Name="blank")
    low = _create(sb, "Account", Name="low", Phone="100")
    high = _create(sb, "Account", Name="high", Phone="200")

    def ids(soql: str) -> list[str]:
        return [r["Id"] for r in _rows(sb, soql)]

    assert ids("SELECT Id FROM Account ORDER BY Phone") == [blank, low, high]
    assert ids("SELECT Id FROM Account ORDER BY Phone ASC") == [blank, low, high]
    assert ids("SELECT Id FROM Account ORDER BY Phone DESC") == [blank, high, low]
    assert ids("SELECT Id FROM Account ORDER BY Phone DESC NULLS LAST") == [high, low, blank]
    assert ids("SELECT Id FROM Account ORDER BY Phone NULLS LAST") == [low, high, blank]
    assert ids("SELECT Id FROM Account ORDER BY Phone DESC NULLS FIRST") == [blank, high, low]


# -- string escapes and LIKE -------------------------------------------------------------

def test_like_escapes_match_the_character_itself(sb: Sandbox) -> None:
    underscore = _create(sb, "Account", Name="Seed_order 000000")
    space = _create(sb, "Account", Name="Seed order 000000")
    percent = _create(sb, "Account", Name="Seed% off")
    backslash = _create(sb, "Account", Name="Seed\\x")
    tab = _create(sb, "Account", Name="Tab\there")
    quote = _create(sb, "Account", Name="Bob's BBQ")

    def ids(soql: str) -> set[str]:
        return {r["Id"] for r in _rows(sb, soql)}

    assert ids(r"SELECT Id FROM Account WHERE Name LIKE 'Seed\_order%'") == {underscore}
    assert ids("SELECT Id FROM Account WHERE Name LIKE 'Seed_order%'") == {underscore, space}
    assert ids(r"SELECT Id FROM Account WHERE Name LIKE 'Seed\%%'") == {percent}
    assert ids(r"SELECT Id FROM Account WHERE Name LIKE 'Seed\\%'") == {backslash}
    assert ids(r"SELECT Id FROM Account WHERE Name = 'Seed\\x'") == {backslash}
    assert ids(r"SELECT Id FROM Account WHERE Name = 'Tab\there'") == {tab}
    assert ids(r"SELECT Id FROM Account WHERE Name = 'Bob\'s BBQ'") == {quote}
    assert ids(r"SELECT Id FROM Account WHERE Name LIKE 'Bob\'s%'") == {quote}
    # \_ and \% belong to LIKE only; any other backslash is an error
    for soql in (r"SELECT Id FROM Account WHERE Name = 'Seed\_order 000000'",
                 r"SELECT Id FROM Account WHERE Name IN ('Seed\%')",
                 r"SELECT Id FROM Account WHERE Name = 'Seed\x'",
                 r"SELECT Id FROM Account WHERE Name LIKE 'Seed\q%'"):
        _refused(sb, soql, "MALFORMED_QUERY")


# -- numbers -----------------------------------------------------------------------------

def _collection(sb: Sandbox, records: list[dict], raw: bytes | None = None
                ) -> tuple[int, Any]:
    return _http(sb, "PATCH", V + "/composite/sobjects",
                 body=None if raw is not None else {"allOrNone": False, "records": records},
                 raw=raw)


def _rec(record_id: str, **fields: Any) -> dict:
    return {"attributes": {"type": "Order"}, "id": record_id, **fields}


def test_a_number_too_large_is_that_records_error(sb: Sandbox) -> None:
    first, second, third = (_order(sb, _today(sb), n) for n in ("a", "b", "c"))
    status, results = _collection(sb, [
        _rec(first, Activation_Error__c="written"),
        _rec(second, WHMCS_Order_Id__c=10 ** 400),
        _rec(third, WHMCS_Order_Id__c=10 ** 18)])
    assert status == 200, results
    assert results[0] == {"id": first, "success": True, "errors": []}
    for result in results[1:]:
        assert result["success"] is False
        [error] = result["errors"]
        assert error["statusCode"] == "NUMBER_OUTSIDE_VALID_RANGE"
        assert error["fields"] == ["WHMCS_Order_Id__c"]
    assert sb.store.get(first)["Activation_Error__c"] == "written"
    assert sb.store.get(second)["WHMCS_Order_Id__c"] is None
    # the largest whole number of 18 digits is taken
    status, results = _collection(sb, [_rec(third, WHMCS_Order_Id__c=10 ** 17)])
    assert results[0]["success"] is True, results
    assert sb.store.get(third)["WHMCS_Order_Id__c"] == 1e17


@pytest.mark.parametrize("value", ["NaN", "nan", "Infinity", "-Infinity", "inf", "1e400"])
def test_a_number_field_refuses_non_finite_text(sb: Sandbox, value: str) -> None:
    order = _order(sb, _today(sb))
    status, results = _collection(sb, [_rec(order, WHMCS_Order_Id__c=value)])
    assert status == 200, results
    [error] = results[0]["errors"]
    expected = "NUMBER_OUTSIDE_VALID_RANGE" if value == "1e400" else \
        "INVALID_TYPE_ON_FIELD_IN_RECORD"
    assert error["statusCode"] == expected and error["fields"] == ["WHMCS_Order_Id__c"]
    assert sb.store.get(order)["WHMCS_Order_Id__c"] is None


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
def test_a_body_with_a_non_json_number_is_a_parser_error(sb: Sandbox, token: str) -> None:
    order = _order(sb, _today(sb))
    raw = ('{"allOrNone": false, "records": [{"attributes": {"type": "Order"}, '
           f'"id": "{order}", "Activation_Outcome_Ms__c": {token}}}]}}').encode()
    status, body = _collection(sb, [], raw=raw)
    assert status == 400, body
    assert body[0]["errorCode"] == "JSON_PARSER_ERROR" and body[0]["fields"] == []
    status, body = _http(sb, "PATCH", f"{V}/sobjects/Order/{order}",
                         raw=f'{{"WHMCS_Order_Id__c": {token}}}'.encode())
    assert status == 400 and body[0]["errorCode"] == "JSON_PARSER_ERROR", body
    assert sb.store.get(order)["Activation_Outcome_Ms__c"] is None
    assert sb.store.get(order)["WHMCS_Order_Id__c"] is None


# -- query locators ----------------------------------------------------------------------

def test_a_query_locator_lives_two_days_from_its_query(sb: Sandbox,
                                                       monkeypatch: pytest.MonkeyPatch
                                                       ) -> None:
    monkeypatch.setattr(rest, "DEFAULT_BATCH", 2)  # pages of 2 (Salesforce's least is 200)
    for n in range(7):
        _create(sb, "Account", Name=f"a{n}")
    status, first = _query(sb, "SELECT Id FROM Account")
    assert status == 200 and first["done"] is False and len(first["records"]) == 2
    sb.store.advance_clock(2 * DAY_S - 60)
    status, second = _http(sb, "GET", first["nextRecordsUrl"])
    assert status == 200 and len(second["records"]) == 2, second
    sb.store.advance_clock(120)  # the next page's locator is as old as the query
    status, body = _http(sb, "GET", second["nextRecordsUrl"])
    assert status == 400 and body[0]["errorCode"] == "INVALID_QUERY_LOCATOR", body
    # a new query pages on
    status, again = _query(sb, "SELECT Id FROM Account")
    status, page = _http(sb, "GET", again["nextRecordsUrl"])
    assert status == 200 and len(page["records"]) == 2


def test_the_sandbox_keeps_a_bounded_number_of_locators(sb: Sandbox,
                                                        monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    monkeypatch.setattr(rest, "DEFAULT_BATCH", 2)
    monkeypatch.setattr(rest, "MAX_CURSORS", 3)
    for n in range(5):
        _create(sb, "Account", Name=f"a{n}")
    urls = [_query(sb, "SELECT Id FROM Account")[1]["nextRecordsUrl"] for _ in range(4)]
    assert len(sb.cursors) == 3
    status, body = _http(sb, "GET", urls[0])  # the oldest was let go
    assert status == 400 and body[0]["errorCode"] == "INVALID_QUERY_LOCATOR", body
    for url in urls[1:]:
        status, page = _http(sb, "GET", url)
        assert status == 200 and len(page["records"]) == 2, page
