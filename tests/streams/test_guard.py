import asyncio

import pytest

from common.errors import SalesforceAuthError, SalesforceError, SalesforceLimitError
from streams.guard import MAX_IDS_PER_QUERY, Guard, _key18, guard_soql


def test_soql_selects_the_guard_fields_for_all_ids_once():
    soql = guard_soql(["801000000000002AAA", "801000000000001AAA", "801000000000001AAA"])
    assert soql.count("'801000000000001AAA'") == 1
    assert "WHERE Id IN ('801000000000001AAA', '801000000000002AAA')" in soql
    for field in ("Activation_Status__c", "WHMCS_Order_Id__c", "Account.WH_Account__c",
                  "Product2.Portal_ConfigOptions_JSON__c", "FROM OrderItems"):
        assert field in soql
    # without ORDER BY Salesforce defines no row order, and the first Service item decides
    # where the Add-ons go and which service the Opportunity links to
    assert "FROM OrderItems ORDER BY OrderItemNumber)" in soql


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


class _CountingGuard:
    """A guard whose fetch records the ids of each read and finds every Order."""

    def __init__(self) -> None:
        self.reads: list[list[str]] = []

    async def fetch_each(self, order_ids):
        ids = list(order_ids)
        self.reads.append(ids)
        return {_key18(i): {"Id": i} for i in ids}, {}


def _oid(n: int) -> str:
    return f"801A{n:011d}AAA"


@pytest.mark.parametrize("busy, expected_reads", [(False, 2), (True, 1)])
def test_a_busy_worker_lingers_longer_for_company(busy, expected_reads):
    """Two Orders 0.2 s apart: with a backlog (``busy``) they share one read — the burst's
    reads grow toward the maximum; without, the short linger keeps each Order's latency."""
    from streams.guard import GuardReads

    guard = _CountingGuard()
    reads = GuardReads(guard, linger_s=0.05, busy_linger_s=1.0, busy=lambda: busy)

    async def main() -> None:
        first = asyncio.ensure_future(reads.get(_oid(1)))
        await asyncio.sleep(0.2)
        await asyncio.gather(first, reads.get(_oid(2)))

    asyncio.run(main())
    assert len(guard.reads) == expected_reads


def test_the_linger_is_chosen_when_the_first_order_waits():
    """The backlog gone, the next read's first Order waits the short linger again."""
    from streams.guard import GuardReads

    guard = _CountingGuard()
    state = {"busy": True}
    reads = GuardReads(guard, linger_s=0.0, busy_linger_s=0.3, busy=lambda: state["busy"])

    async def main() -> None:
        first = asyncio.ensure_future(reads.get(_oid(1)))
        await asyncio.sleep(0.1)                       # within the busy linger: shared
        await asyncio.gather(first, reads.get(_oid(2)))
        state["busy"] = False
        late = asyncio.ensure_future(reads.get(_oid(3)))
        await asyncio.sleep(0.1)                       # past the short linger: apart
        await asyncio.gather(late, reads.get(_oid(4)))

    asyncio.run(main())
    assert [sorted(r) for r in guard.reads] == [[_oid(1), _oid(2)], [_oid(3)], [_oid(4)]]


def test_query_answers_are_plain_dicts(salesforce):
    """The client asks simple_salesforce for plain dicts (its default OrderedDict hook takes
    the JSON decoder off its fast path), down to the nested OrderItems."""
    from common.salesforce import SalesforceClient
    from common.settings import SalesforceSettings

    salesforce.seed(accounts=2, orders=3)
    client = SalesforceClient(SalesforceSettings.load(salesforce.env()))
    rows = client.query("SELECT Id, (SELECT Id FROM OrderItems) FROM Order LIMIT 3")
    assert rows
    for row in rows:
        assert type(row) is dict
        assert type(row["attributes"]) is dict
        items = row["OrderItems"]
        assert items is None or type(items) is dict and all(
            type(item) is dict for item in items["records"])


def test_the_guards_query_reads_the_items_in_order_item_number_order(salesforce):
    """The guard's own query, against the sandbox: accepted, and each Order's items come in
    OrderItemNumber order."""
    from common.salesforce import SalesforceClient
    from common.settings import SalesforceSettings

    salesforce.seed(accounts=2, orders=4)
    client = SalesforceClient(SalesforceSettings.load(salesforce.env()))
    ids = [row["Id"] for row in client.query("SELECT Id FROM Order LIMIT 4")]
    rows = client.query(guard_soql(ids))
    assert len(rows) == len(ids)
    numbers = [[item["Id"] for item in (row["OrderItems"] or {"records": []})["records"]]
               for row in rows]
    assert any(len(n) > 1 for n in numbers), numbers  # something to order
    for row in rows:
        items = (row["OrderItems"] or {"records": []})["records"]
        ordered = client.query(f"SELECT Id FROM OrderItem WHERE OrderId = '{row['Id']}' "
                               "ORDER BY OrderItemNumber")
        assert [i["Id"] for i in items] == [i["Id"] for i in ordered]


class RefusesOne:
    """Salesforce refusing any query that names ``bad`` (an 18-char id with a wrong case
    checksum: 'invalid ID field'), answering the others."""

    def __init__(self, *bad, everything=False):
        self.bad, self.everything = bad, everything
        self.soql = []

    def query(self, soql):
        self.soql.append(soql)
        assert len(self.soql) < 100, "the same refused query, again and again"
        named = [b for b in self.bad if f"'{b}'" in soql]
        if self.everything or named:
            raise SalesforceError(f"Salesforce 400 INVALID_QUERY_FILTER_OPERATOR: invalid ID "
                                  f"field: {(named or self.bad)[0]}", status=400,
                                  error_code="INVALID_QUERY_FILTER_OPERATOR", retryable=False)
        ids = [part.split("'")[1] for part in soql.split("IN (")[1].split(",")]
        return [{"Id": i, "Activation_Status__c": "Activating"} for i in ids]


def test_one_id_salesforce_refuses_fails_its_own_order_not_the_batch():
    """One refused id took its whole query with it, retried every 30 s forever: up to 200
    Orders held, their partitions' commits too. The batch is split down to that id."""
    from streams.guard import GuardReads

    good = [f"801{i:012d}AAA" for i in range(1, 40)]
    bad = "801000000000777XYZ"
    client = RefusesOne(bad)

    async def go():
        reads = GuardReads(Guard(client, sleep=_no_sleep), linger_s=0.01)
        return await asyncio.gather(*(reads.get(i) for i in [*good, bad]),
                                    return_exceptions=True)
    results = asyncio.run(go())
    assert all(r["Activation_Status__c"] == "Activating" for r in results[:-1])
    assert isinstance(results[-1], SalesforceError) and bad in str(results[-1])
    assert len(client.soql) <= 1 + 2 * 6  # bisected: log2(40) levels, two queries each


def test_an_id_refused_in_a_mixed_read_is_no_outage():
    """The read's last query was the refused id's half: Salesforce answered, yet the guard
    stayed "unavailable" until another query succeeded — on a quiet worker /readyz failed
    and SfprovSalesforceUnavailable paged while Salesforce was fine."""
    good, bad = "801000000000001AAA", "801000000000777XYZ"  # the refused one sorts last
    guard = Guard(RefusesOne(bad), sleep=_no_sleep)
    orders, refused = asyncio.run(guard.fetch_each([good, bad]))
    assert list(refused) == [bad] and Guard.find(orders, good) is not None
    assert guard.unavailable_since is None and guard.last_error is None


def test_a_query_refused_for_every_id_is_waited_out_not_failed():
    """Refused whatever ids it names: the org's fields, not an Order's — no Order is failed
    for it; the guard waits (as before) until it is fixed."""
    client = RefusesOne("none", everything=True)
    sleeps = []

    async def stop_after_two(seconds):
        sleeps.append(seconds)
        if len(sleeps) == 2:
            client.everything = False  # the org fixed
    guard = Guard(client, sleep=stop_after_two)
    orders, refused = asyncio.run(guard.fetch_each([f"801{i:012d}AAA" for i in range(1, 5)]))
    assert refused == {} and len(orders) == 4 and len(sleeps) == 2


async def _must_not_wait(seconds):
    raise AssertionError(f"the guard waited {seconds}s for an id Salesforce refuses")


@pytest.mark.parametrize("bad", [["801000000000777XYZ"],  # alone in its read (low traffic)
                                 ["801000000000777XYZ", "801000000000778XYZ"]])  # only bad
def test_ids_refused_alone_in_their_read_fail_their_orders_not_wait(bad):
    """A read naming only ids Salesforce refuses was retried every 30 s forever: no outcome,
    no dead letter, its partition's commits frozen, a GuardReads slot held. A query for an id
    it accepts is answered, so the ids are at fault: each Order gets the refusal."""
    from streams.guard import GuardReads

    client = RefusesOne(*bad)

    async def go():
        reads = GuardReads(Guard(client, sleep=_must_not_wait), linger_s=0.01)
        return await asyncio.gather(*(reads.get(i) for i in bad), return_exceptions=True)
    results = asyncio.run(go())
    for order_id, result in zip(bad, results, strict=True):
        assert isinstance(result, SalesforceError) and order_id in str(result), result
        assert result.retryable is False
        assert "INVALID_QUERY_FILTER_OPERATOR" in str(result)


def test_a_15_char_id_refused_alone_is_checked_against_an_id_answered_before():
    bad = "801000000000777"
    client = RefusesOne(bad)
    guard = Guard(client, sleep=_must_not_wait)
    asyncio.run(guard.fetch(["801000000000001AAA"]))
    orders, refused = asyncio.run(guard.fetch_each([bad]))
    assert orders == {} and list(refused) == [bad]
    assert client.soql[-1].endswith("('801000000000001AAA')")


@pytest.mark.parametrize("error", [
    SalesforceError("Salesforce 400 INVALID_FIELD: No such column 'WHMCS_Order_Id__c'",
                    status=400, error_code="INVALID_FIELD", retryable=False),
    SalesforceError("Salesforce 400 INVALID_QUERY_FILTER_OPERATOR: invalid ID field",
                    status=400, error_code="INVALID_QUERY_FILTER_OPERATOR", retryable=False)])
def test_a_one_id_read_refused_for_the_orgs_fields_is_waited_out_not_failed(error):
    """Alone in its read, the id is no proof: the query for an id Salesforce accepts is
    refused too, so it is the org's — waited out, and the Order is not failed."""
    client = Flaky([error] * 4)
    sleeps = []

    async def record(seconds):
        sleeps.append(seconds)
    guard = Guard(client, backoff_max_s=30.0, sleep=record)
    orders, refused = asyncio.run(guard.fetch_each(["801000000000001AAA"]))
    assert refused == {} and Guard.find(orders, "801000000000001AAA") is not None
    assert sleeps and set(sleeps) == {30.0}


class _Stop(Exception):
    pass


def _refused_login(tmp_path, kind):
    """A real client whose login is refused: ``invalid_grant`` from the token endpoint, or
    a key that cannot sign (settings built without their check); and the token requests."""
    import httpx

    from common.salesforce import SalesforceAuth, SalesforceClient
    from common.settings import SalesforceSettings
    from sandbox.salesforce.tlsgen import jwt_keypair

    key, cert = jwt_keypair(tmp_path / "jwt")
    settings = SalesforceSettings(client_id="cid", username="u@example.com",
                                  login_url="https://login.example.test",
                                  private_key_path=str(cert if kind == "invalid_key" else key))
    posts = []

    def refuse(request):
        posts.append(request.url.path)
        return httpx.Response(400, json={"error": "invalid_grant",
                                         "error_description": "user hasn't approved"})
    auth = SalesforceAuth(settings, http=httpx.Client(transport=httpx.MockTransport(refuse)))
    return SalesforceClient(settings, auth), posts


class _Refuses:
    def __init__(self, error):
        self.error = error

    def query(self, soql):
        raise self.error


@pytest.mark.parametrize("kind", [
    "invalid_grant", "invalid_key",
    SalesforceError("Salesforce 404 NOT_FOUND: The requested resource does not exist",
                    error_code="NOT_FOUND", status=404, retryable=False),
    SalesforceError("Salesforce 403 INSUFFICIENT_ACCESS: no access to Order",
                    error_code="INSUFFICIENT_ACCESS", status=403, retryable=False),
    SalesforceAuthError("session refused after re-authentication",
                        error_code="INVALID_SESSION_ID", status=401, retryable=False)])
def test_a_refusal_no_id_causes_is_waited_out_not_split(tmp_path, caplog, kind):
    """A refused login, a wrong API version or missing permissions refuse any query, so
    splitting the read asked ~2n times back to back (401 token requests for one 200-id
    read before the first wait), and a key that cannot sign raised past the guard: every
    event dead-lettered. Such a refusal is waited out at the longest backoff instead."""
    if isinstance(kind, str):
        client, posts = _refused_login(tmp_path, kind)
    else:
        client, posts = _Refuses(kind), []
    sleeps = []

    async def stop(seconds):
        sleeps.append(seconds)
        raise _Stop
    guard = Guard(client, backoff_max_s=30.0, sleep=stop)
    guard._accepted = "801000000000001"  # answered before: the probe is at hand too
    with pytest.raises(_Stop):
        asyncio.run(guard.fetch_each([f"801{n:012d}AAA" for n in range(200)]))
    assert guard.queries <= 2 and len(posts) <= 2, (guard.queries, len(posts))
    assert sleeps == [30.0] and guard.unavailable_since is not None
    assert "check the login, the integration user's permissions, the API version" in caplog.text
