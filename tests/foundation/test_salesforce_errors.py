"""How the REST client reads an error answer that is not Salesforce's own: a 400 page of a
proxy or a WAF in front of Salesforce, a 408 or 429 with its Retry-After (HTTP review).

The answers come from a requests adapter on the client's real session (simple-salesforce's
own error handling runs); the writer is the sink's real ``CollectionWriter``."""

from __future__ import annotations

import time
from typing import Any

import pytest
import requests
from requests.adapters import BaseAdapter

from common.envparse import Secret
from common.errors import SalesforceError
from common.salesforce import SalesforceClient, Token, refuses_records
from common.settings import SalesforceSettings
from sinks.batch import Entry, Tracked
from sinks.mapping import RecordKey
from sinks.writer import CollectionWriter

NGINX_400 = (b"<html><head><title>400 Bad Request</title></head><body><center><h1>400 Bad "
             b"Request</h1></center><center>Request Header Or Cookie Too Large</center>"
             b"</body></html>")
INVALID_FIELD = (b'[{"message":"No such column \'Nope__c\' on sobject of type Order",'
                 b'"errorCode":"INVALID_FIELD"}]')


class Answers(BaseAdapter):
    """Every request answered with one status, body and headers."""

    def __init__(self, status: int, body: bytes, headers: dict[str, str] | None = None,
                 content_type: str = "text/html") -> None:
        super().__init__()
        self.status, self.body, self.calls = status, body, 0
        self.headers = {"Content-Type": content_type, **(headers or {})}

    def send(self, request: Any, **_kw: Any) -> requests.Response:
        self.calls += 1
        r = requests.Response()
        r.status_code, r._content, r.url, r.request = self.status, self.body, request.url, request
        r.headers.update(self.headers)
        return r

    def close(self) -> None: ...


class FixedAuth:
    token_ = Token(Secret("00Dxx0000000001!AQ.not-a-token"), "https://example.my.salesforce.com",
                   "00Dxx0000000001AAA", "005xx0000000001AAA", time.time())

    def token(self) -> Token:
        return self.token_

    def refresh(self, stale: Token | None = None) -> Token:
        return self.token_


def client_answering(adapter: Answers) -> SalesforceClient:
    settings = SalesforceSettings(client_id="c", username="u", private_key_base64=Secret("x"))
    client = SalesforceClient(settings, auth=FixedAuth())  # type: ignore[arg-type]
    client._session.mount("https://", adapter)
    return client


def entries(n: int) -> list[Entry]:
    return [Entry(RecordKey("Order", f"801{i:012d}AAA"), {"Activation_Status__c": "Provisioned"},
                  [Tracked(0, i, b"k", b"v")], 0.0) for i in range(n)]


def refusal(adapter: Answers) -> SalesforceError:
    with pytest.raises(SalesforceError) as raised:
        client_answering(adapter).update_collection(
            [{"attributes": {"type": "Order"}, "id": "801000000000001AAA"}])
    return raised.value


def test_a_proxys_400_page_is_not_blamed_on_the_records():
    """Bisected down to single records, every record of the batch was failed for good and
    its outcome dead-lettered, in 2n − 1 calls: the page refuses every call alike."""
    adapter = Answers(400, NGINX_400)
    exc = refusal(adapter)
    assert exc.status == 400 and exc.error_code is None
    assert not refuses_records(exc)
    adapter.calls = 0
    with pytest.raises(SalesforceError):
        CollectionWriter(client_answering(adapter)).write(entries(200))
    assert adapter.calls == 1  # the batch is requeued by the sink, not bisected


def test_salesforces_own_400_is_still_bisected_to_the_record():
    exc = refusal(Answers(400, INVALID_FIELD, content_type="application/json"))
    assert exc.error_code == "INVALID_FIELD" and refuses_records(exc)


@pytest.mark.parametrize("status", [408, 429])
def test_a_408_or_429_is_retried_with_its_retry_after(status):
    """Read as a refusal of the credentials (no retry before the longest backoff, the
    operator sent to the login): it says "later"."""
    exc = refusal(Answers(status, b"slow down", {"Retry-After": "7"}))
    assert exc.retryable and exc.retry_after == 7.0
    assert not refuses_records(exc)


@pytest.mark.parametrize("value,seconds", [("", None), ("soon", None), ("-3", None),
                                           ("nan", None), ("86400", 300.0), ("2.5", 2.5)])
def test_retry_after_is_seconds_capped(value, seconds):
    headers = {"Retry-After": value} if value else {}
    assert refusal(Answers(503, b"down", headers)).retry_after == seconds


def test_a_refusal_carries_no_retry_after_of_an_earlier_answer():
    adapter = Answers(429, b"later", {"Retry-After": "9"})
    client = client_answering(adapter)
    with pytest.raises(SalesforceError):
        client.update_collection([{"attributes": {"type": "Order"}, "id": "801000000000001AAA"}])
    adapter.status, adapter.body, adapter.headers = 403, b"[]", {"Content-Type": "text/plain"}
    with pytest.raises(SalesforceError) as raised:
        client.update_collection([{"attributes": {"type": "Order"}, "id": "801000000000001AAA"}])
    assert not raised.value.retryable and raised.value.retry_after is None


@pytest.mark.parametrize("status,body", [
    (204, b""), (200, b"{}"), (200, b'{"status": "queued"}'), (202, b"[]"),
    (200, b'[{"id": "801000000000001AAA", "success": true, "errors": []}, '
          b'{"id": "801000000000002AAA", "success": true, "errors": []}]'),
    (200, b'["ok"]')])
def test_a_2xx_without_one_result_per_record_is_retried_not_read(status, body):
    """A proxy's 204 or a gateway's ``{}`` crashed the sink (TypeError: None is not
    iterable), and ``{"status": …}`` became the list of its keys (AttributeError in the
    writer), on every retry: a crash loop. No record's fate is known: retried as an outage,
    never bisected onto the records."""
    adapter = Answers(status, body, content_type="application/json")
    exc = refusal(adapter)
    assert exc.retryable and not refuses_records(exc)
    assert "without one result per record" in str(exc)
    adapter.calls = 0
    with pytest.raises(SalesforceError, match="without one result per record"):
        CollectionWriter(client_answering(adapter)).write(entries(1))
    assert adapter.calls == 1


def test_one_result_per_record_is_read():
    adapter = Answers(200, b'[{"id": "801000000000001AAA", "success": true, "errors": []}]',
                      content_type="application/json")
    assert client_answering(adapter).update_collection(
        [{"attributes": {"type": "Order"}, "id": "801000000000001AAA"}]) == [
        {"id": "801000000000001AAA", "success": True, "errors": []}]


@pytest.mark.parametrize("body", [b"{}", b'{"status": "ok"}', b"[]", b'[{"ok": true}]',
                                  b'"ok"', b'{"records": {}, "totalSize": 0, "done": true}'])
def test_a_2xx_that_is_no_query_result_is_retried_not_read_as_no_records(body):
    """A proxy's or a gateway's 200 to a query: ``{}`` read as "no records" made every Order
    of a guard read missing — ``Failed ORDER_NOT_FOUND`` written back to real Orders — and a
    list crashed the read (every waiting event dead-lettered). Now an outage: retried."""
    client = client_answering(Answers(200, body, content_type="application/json"))
    for call in (lambda: client.query("SELECT Id FROM Order"),
                 lambda: client.count("SELECT COUNT() FROM Order"),
                 lambda: client.describe("Order"),
                 lambda: client.get("Order", "801000000000001AAA")):
        with pytest.raises(SalesforceError) as raised:
            call()
        assert raised.value.retryable, str(raised.value)


def test_a_query_result_is_read():
    body = (b'{"totalSize": 1, "done": true, "records": [{"attributes": {"type": "Order"}, '
            b'"Id": "801000000000001AAA"}]}')
    client = client_answering(Answers(200, body, content_type="application/json"))
    assert [r["Id"] for r in client.query("SELECT Id FROM Order")] == ["801000000000001AAA"]
    assert client.count("SELECT COUNT() FROM Order") == 1


def test_the_guard_waits_out_a_2xx_that_is_no_query_result():
    """The guard read meets it as an outage (waited out, /readyz told), never as Orders not
    found."""
    import asyncio

    from streams.guard import Guard

    class Waited(Exception):
        pass

    async def sleep(_s: float) -> None:
        raise Waited  # the guard waits to ask again: enough seen

    guard = Guard(client_answering(Answers(200, b"{}", content_type="application/json")),
                  sleep=sleep)
    with pytest.raises(Waited):
        asyncio.run(guard.fetch_each(["801000000000001AAA"]))
    assert guard.unavailable_since is not None and "query result" in guard.last_error
