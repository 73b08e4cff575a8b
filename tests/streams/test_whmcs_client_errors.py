"""common.whmcs's error translation and streams.provision's reaction to it, against answers
real WHMCS (or PHP, or a proxy in front of it) gives and the sandbox does not: an injected
``httpx.MockTransport``, or a bare socket. No sandbox needed."""

from __future__ import annotations

import asyncio
import socket
from urllib.parse import parse_qs

import httpx
import pytest

from common.errors import WhmcsAccessError, WhmcsError, WhmcsTransientError
from common.settings import WhmcsSettings
from common.whmcs import WhmcsClient
from streams.mapping import WhmcsItem, WhmcsOrderRequest
from streams.provision import Provisioner
from tests.streams.factories import policy

SECRET = "s3cr3t+value/with&chars"
ENV = {"WHMCS_API_URL": "https://whmcs.example/includes/api.php",
       "WHMCS_API_IDENTIFIER": "api-identifier-0001", "WHMCS_API_SECRET": SECRET}
ADDED = {"result": "success", "orderid": 9, "serviceids": "4,5", "invoiceid": "7"}
ORDER = "8015g00000AbCdEAAZ"


def run(coro):
    return asyncio.run(coro)


def client_answering(handler, env=ENV) -> WhmcsClient:
    return WhmcsClient(WhmcsSettings.load(env), transport=httpx.MockTransport(handler))


def action_of(request: httpx.Request) -> str:
    return parse_qs(request.content.decode())["action"][0]


def req() -> WhmcsOrderRequest:
    return WhmcsOrderRequest(order_id=ORDER, client_id=1,
                             items=(WhmcsItem(pid=4, billingcycle="annually", qty=1),),
                             notes=f"sfOrderId={ORDER}")


def free_port() -> int:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- 1. every way real WHMCS refuses this installation is an access error ------------------

REFUSALS = [
    ("Authentication Failed", 403),
    ("Invalid IP 203.0.113.9", 403),
    ("Invalid or missing credentials", 200),  # a wrong or missing API identifier
    ('Invalid Permissions: API action "addorder" is not allowed', 403),  # the API role
    ('Invalid Permissions: API action "addorder" is not allowed', 200),
    (" invalid or missing credentials", 200),  # blanks and case do not hide it
    # WHMCS 8's access control: a login ban (3 failed logins from the IP in 30 minutes;
    # answered before the access key and the credentials are looked at), a wrong access
    # key, the API credential's admin disabled or unknown
    ("IP Banned", 403),
    ("Invalid Access Key", 403),
    ("Access Denied", 403),
    ("Access Denied: Authentication not permitted", 403),
    ("Administrator Account Disabled", 403),
    ("Invalid administrative identifier", 403),
    ("IP Banned", 200),  # the words are a refusal whatever the status
    # the installation's licence lapsed: checked before any action, answered at HTTP 200
    ("Your license key has expired", 200),
    ("Your license key has been suspended", 200),
    ("Your license key is invalid", 200),
    ("Your license key is still pending (payment not received)", 200),
    ("You must enter a license key to activate and begin using WHMCS", 200),
    ("WHMCS has not been able to verify your license for the last few days", 200),
    ("Invalid Access Key", 200),
    # any result=error WHMCS answers with 401 or 403 refuses this installation, however
    # it words it
    ("Forbidden: some refusal this client has never seen", 403),
    ("Unauthorized: some refusal this client has never seen", 401),
]


def add_order_error(status: int, message: str) -> WhmcsError:
    """The error ``AddOrder`` raises when WHMCS answers ``result=error`` with ``message``."""
    def handler(_request):
        return httpx.Response(status, json={"result": "error", "message": message})

    async def go():
        async with client_answering(handler) as client:
            with pytest.raises(WhmcsError) as info:
                await client.add_order({"clientid": 1})
            return info.value
    return run(go())


@pytest.mark.parametrize(("message", "status"), REFUSALS)
def test_every_refusal_of_this_installation_is_an_access_error(message, status):
    exc = add_order_error(status, message)
    assert type(exc) is WhmcsAccessError and exc.retryable
    assert str(exc) == message


@pytest.mark.parametrize("message", ["Client ID Not Found", "Invalid IPv6 address given",
                                     "Invalid Payment Method. Valid options include mailin",
                                     "Your license key is invalidated by the panel"])
def test_an_order_refused_for_its_content_is_still_permanent(message):
    exc = add_order_error(200, message)
    assert type(exc) is WhmcsError and not exc.retryable


def accept_order_error(handler) -> WhmcsError:
    """The error ``AcceptOrder`` of order 77 raises when WHMCS answers through ``handler``."""
    async def go():
        async with client_answering(handler) as client:
            with pytest.raises(WhmcsError) as info:
                await client.accept_order(77)
            return info.value
    return run(go())


@pytest.mark.parametrize("message", [
    "Authentication failed - wrong password.", "Access denied for user 'whmcs'@'localhost'",
    "Invalid IP address for server", "IP Banned by the panel's firewall",
    "Authentication Failed: the panel refused the reseller login",
    # a module's whole text in WHMCS's own words: told apart by one read that WHMCS answers
    "Access denied", "Authentication Failed", "IP Banned", "Invalid IP 10.0.0.5"])
def test_a_module_failure_in_acceptorder_is_that_orders_error_not_a_refusal(message):
    """AcceptOrder runs the provisioning module; WHMCS answers its failure with the module's
    own text at HTTP 200. Matched as a prefix, "Authentication failed - …" read as WHMCS
    refusing this installation: /readyz 503 naming the API secret, and AcceptOrder sent
    again every 30 s, forever, re-running the module (the WHMCS review). A bare "Access
    denied" from a panel did the same after the whole-text fix (the worker review): the
    client now reads the order once, and an answer means the refusal was not WHMCS's."""
    calls: list[str] = []

    def handler(request):
        calls.append(action_of(request))
        if action_of(request) == "GetOrders":
            return httpx.Response(200, json={"result": "success", "totalresults": 1,
                                             "orders": {"order": []}})
        return httpx.Response(200, json={"result": "error", "message": message})

    exc = accept_order_error(handler)
    assert type(exc) is WhmcsError and not exc.retryable, type(exc)
    assert str(exc) == message and exc.action == "AcceptOrder"
    assert calls in (["AcceptOrder"], ["AcceptOrder", "GetOrders"])


@pytest.mark.parametrize(("message", "read_status"), [
    ("Authentication Failed", 403), ("IP Banned", 200), ("Invalid IP 203.0.113.9", 403)])
def test_an_acceptorder_refused_in_whmcs_words_is_a_refusal_when_the_read_is_too(
        message, read_status):
    def handler(request):
        return httpx.Response(read_status if action_of(request) == "GetOrders" else 200,
                              json={"result": "error", "message": message})

    exc = accept_order_error(handler)
    assert type(exc) is WhmcsAccessError and str(exc) == message


def test_an_api_role_without_acceptorder_is_a_refusal_without_a_read():
    calls: list[str] = []

    def handler(request):
        calls.append(action_of(request))
        return httpx.Response(200, json={"result": "error", "message":
                                         'Invalid Permissions: API action "acceptorder" is '
                                         "not allowed"})

    assert type(accept_order_error(handler)) is WhmcsAccessError and calls == ["AcceptOrder"]


@pytest.mark.parametrize("message", ["Invalid or missing credentials",
                                     'Invalid Permissions: API action "addorder" is not '
                                     "allowed", "Your license key has expired"])
def test_a_wrong_identifier_or_role_makes_orders_wait_not_fail(message):
    refusals = 3
    calls: list[str] = []

    def handler(request):
        calls.append(action_of(request))
        if calls.count("AddOrder") <= refusals:
            return httpx.Response(403, json={"result": "error", "message": message})
        return httpx.Response(200, json=ADDED if calls[-1] == "AddOrder"
                              else {"result": "success"})

    async def go():
        async with client_answering(handler) as client:
            refused_since: list[float | None] = []

            async def sleep(_delay):
                refused_since.append(prov.access_refused_since)

            prov = Provisioner(client, policy(retry_deadline_s=0.0), sleep=sleep)
            result = await prov.provision(req())
            return result, prov, refused_since
    result, prov, refused_since = run(go())
    assert (result.status, result.whmcs_order_id) == ("Provisioned", 9)
    # waited past a zero retry deadline, /readyz's state set meanwhile, cleared after
    assert len(refused_since) == refusals and all(refused_since)
    assert prov.access_refused_since is None and message in (prov.access_error or "")
    assert calls == ["AddOrder"] * (refusals + 1) + ["AcceptOrder"]


@pytest.mark.parametrize("refused", ["AddOrder", "AcceptOrder", "GetOrders"])
def test_a_login_ban_at_any_step_makes_the_order_wait_not_fail(refused):
    """``IP Banned`` (any 403) for the lookup, the ``AddOrder`` or the ``AcceptOrder``: the
    Order waits past a zero retry deadline, then goes on where it stopped — no second
    ``AddOrder`` after a refused ``AcceptOrder``, the lookup read again before any."""
    refusals = 3
    calls: list[str] = []

    def handler(request):
        action = action_of(request)
        calls.append(action)
        if action == refused and calls.count(action) <= refusals:
            return httpx.Response(403, json={"result": "error", "message": "IP Banned"})
        if action == "GetOrders":
            return httpx.Response(200, json={"result": "success", "totalresults": 0,
                                             "numreturned": 0, "orders": {"order": []}})
        return httpx.Response(200, json=ADDED if action == "AddOrder" else {"result": "success"})

    async def go():
        async with client_answering(handler) as client:
            sleeps: list[str | None] = []

            async def sleep(_delay):
                sleeps.append(prov.access_error)

            prov = Provisioner(client, policy(retry_deadline_s=0.0), sleep=sleep)
            # settle_at_ms in the past: an earlier attempt may have made the order, look first
            result = await prov.provision(req(), settle_at_ms=0 if refused == "GetOrders"
                                          else None)
            return result, sleeps
    result, sleeps = run(go())
    assert (result.status, result.whmcs_order_id, result.error_code) == ("Provisioned", 9, None)
    assert result.attempts == 1
    assert sleeps == [f"{refused}: IP Banned"] * refusals
    lookup = ["GetOrders"] * (refusals + 1) if refused == "GetOrders" else []
    assert calls == lookup + ["AddOrder"] * (refusals + 1 if refused == "AddOrder" else 1) + \
        ["AcceptOrder"] * (refusals + 1 if refused == "AcceptOrder" else 1)


def test_a_wrong_secret_tripping_the_login_ban_makes_orders_wait_until_access_is_back():
    """Real WHMCS bans an IP after 3 failed logins in 30 minutes (15 minutes by default),
    and then answers ``IP Banned`` to everything from it, the right secret too. A worker
    whose secret is wrong trips that ban at once: its Orders wait through the
    ``Authentication Failed`` and the ``IP Banned`` answers alike (none is Failed), and
    provision once the secret is right and the ban lifted."""
    whmcs = {"secret": "rotated-in-whmcs", "failures": 0, "banned": False}
    answers: list[tuple[bool, str]] = []  # (the secret sent is WHMCS's, the answer)

    def handler(request):
        right = parse_qs(request.content.decode())["secret"][0] == whmcs["secret"]
        answers.append((right, "IP Banned" if whmcs["banned"] else
                        "success" if right else "Authentication Failed"))
        if whmcs["banned"]:
            return httpx.Response(403, json={"result": "error", "message": "IP Banned"})
        if not right:
            whmcs["failures"] += 1
            whmcs["banned"] = whmcs["failures"] >= 3
            return httpx.Response(403, json={"result": "error",
                                             "message": "Authentication Failed"})
        return httpx.Response(200, json=ADDED if action_of(request) == "AddOrder"
                              else {"result": "success"})

    async def go():
        async with client_answering(handler) as client:
            seen: list[str | None] = []

            async def sleep(_delay):
                seen.append(prov.access_error)
                if len(seen) == 5:
                    whmcs["secret"] = SECRET  # the credential fixed; the ban still on
                elif len(seen) == 6:
                    whmcs["banned"] = False  # lifted (or run out)

            prov = Provisioner(client, policy(retry_deadline_s=0.0), sleep=sleep)
            return await prov.provision(req()), seen, prov
    result, seen, prov = run(go())
    assert (result.status, result.whmcs_order_id, result.attempts) == ("Provisioned", 9, 1)
    assert seen == ["AddOrder: Authentication Failed"] * 3 + ["AddOrder: IP Banned"] * 3
    assert answers[5] == (True, "IP Banned")  # the right secret, refused while banned
    assert answers[6:] == [(True, "success")] * 2  # AddOrder, AcceptOrder
    assert prov.access_refused_since is None


# -- 2. a UTF-8 byte order mark before the JSON (PHP including a file saved with one) ------

@pytest.mark.parametrize("preamble", [b"\xef\xbb\xbf", b"\xef\xbb\xbf\xef\xbb\xbf",
                                      b"\r\n\xef\xbb\xbf ", b"\xef\xbb\xbf\n"])
def test_a_bom_before_the_json_is_read_as_the_answer(preamble):
    def handler(request):
        body = (b'{"result":"success","orderid":"9","serviceids":"4,5","invoiceid":"7"}'
                if action_of(request) == "AddOrder"
                else b'{"result":"error","message":"Client ID Not Found"}')
        return httpx.Response(200, content=preamble + body,
                              headers={"Content-Type": "application/json"})

    async def go():
        async with client_answering(handler) as client:
            added = await client.add_order({"clientid": 1})
            with pytest.raises(WhmcsError, match="Client ID Not Found") as info:
                await client.get_orders(client_id=1)
            assert type(info.value) is WhmcsError  # WHMCS's answer, not "not an API answer"
            return added
    added = run(go())
    assert (added.order_id, added.service_ids, added.invoice_id) == (9, [4, 5], 7)


def test_a_bom_before_an_html_page_is_still_not_an_api_answer():
    def handler(_request):
        return httpx.Response(200, content=b"\xef\xbb\xbf<html>oops</html>",
                              headers={"Content-Type": "text/html"})

    async def go():
        async with client_answering(handler) as client:
            with pytest.raises(WhmcsTransientError, match="not a WHMCS API answer"):
                await client.get_orders(client_id=1)
    run(go())


@pytest.mark.parametrize("status,header", [(401, "WWW-Authenticate"),
                                           (407, "Proxy-Authenticate")])
def test_authentication_asked_in_front_of_api_php_is_an_access_refusal(status, header):
    """A web server or proxy asking for HTTP authentication (api.php behind Basic auth) is a
    refusal of this installation: the worker waits and /readyz says why, rather than
    failing every Order WHMCS_UNAVAILABLE after the retry deadline. Any other page that is
    not the API's answer stays transient."""
    def handler(request):
        if action_of(request) == "GetOrders":
            return httpx.Response(status, content=b"<html>401 Authorization Required</html>",
                                  headers={"Content-Type": "text/html",
                                           header: 'Basic realm="whmcs"'})
        return httpx.Response(403, content=b"<html>Forbidden</html>",
                              headers={"Content-Type": "text/html"})

    async def go():
        async with client_answering(handler) as client:
            with pytest.raises(WhmcsAccessError, match=f"HTTP {status}.*Basic realm") as info:
                await client.get_orders(client_id=1)
            assert info.value.action == "GetOrders"
            with pytest.raises(WhmcsTransientError, match="not a WHMCS API answer"):
                await client.add_order({"clientid": 1})
    run(go())


# -- 3. "unreachable" says why --------------------------------------------------------------

def test_unreachable_over_tls_names_the_tls_failure():
    """An https URL on a plain-HTTP listener: the TLS handshake fails; the error says so."""
    async def go():
        async def plain_http(reader, writer):
            await reader.read(100)
            writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            writer.close()

        server = await asyncio.start_server(plain_http, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        env = {**ENV, "WHMCS_API_URL": f"https://127.0.0.1:{port}/includes/api.php"}
        async with server, WhmcsClient(WhmcsSettings.load(env)) as client:
            with pytest.raises(WhmcsTransientError) as info:
                await client.get_orders(client_id=1)
        return str(info.value), port
    text, port = run(go())
    assert text.startswith("GetOrders: WHMCS unreachable: ConnectError: ")
    assert f"127.0.0.1:{port}" in text and "SSL" in text
    assert SECRET not in text and "\n" not in text


def test_unreachable_names_a_refused_connection():
    port = free_port()
    env = {**ENV, "WHMCS_API_URL": f"http://127.0.0.1:{port}/includes/api.php"}

    async def go():
        async with WhmcsClient(WhmcsSettings.load(env)) as client:
            with pytest.raises(WhmcsTransientError) as info:
                await client.add_order({"clientid": 1})
        return info.value
    exc = run(go())
    assert type(exc) is WhmcsTransientError
    assert f"127.0.0.1:{port}" in str(exc) and "Connection refused" in str(exc)


def test_the_cause_of_unreachable_never_carries_the_credentials():
    """Whatever an injected transport's error says (here: the whole request body, over
    several lines and very long), the message keeps neither secret nor access key, on one
    bounded line."""
    env = {**ENV, "WHMCS_API_ACCESS_KEY": "access-key-value-42"}

    def handler(request):
        raise httpx.ConnectError(f"refused\nbody={request.content.decode()} "
                                 f"raw={SECRET} key=access-key-value-42 " + "x" * 2000)

    async def go():
        async with client_answering(handler, env) as client:
            with pytest.raises(WhmcsTransientError) as info:
                await client.add_order({"clientid": 1})
        return str(info.value)
    text = run(go())
    assert text.startswith("AddOrder: WHMCS unreachable: ConnectError: refused body=")
    assert SECRET not in text and "s3cr3t" not in text and "access-key-value-42" not in text
    assert "api-identifier-0001" not in text and "[REDACTED]" in text
    assert "\n" not in text and len(text) < 400


# -- 4. Retry-After is honoured by the provisioner -------------------------------------------

def provision_sleeping(handler, settings):
    """Provision one Order against ``handler`` with a wall clock that moves only when the
    provisioner sleeps (its retry deadline runs on the real monotonic clock): the result and
    the sleeps it asked for."""
    sleeps: list[float] = []
    clock = [1_800_000_000.0]

    async def sleep(delay):
        sleeps.append(delay)
        clock[0] += delay

    async def go():
        async with client_answering(handler) as client:
            return await Provisioner(client, settings, sleep=sleep,
                                     wall=lambda: clock[0]).provision(req())
    return run(go()), sleeps


@pytest.mark.parametrize("kind", ["html", "json"])
def test_a_503_with_retry_after_is_not_retried_sooner(kind):
    calls: list[str] = []

    def handler(request):
        calls.append(action_of(request))
        if len(calls) == 1:
            if kind == "html":
                return httpx.Response(503, content=b"<html>busy</html>",
                                      headers={"Content-Type": "text/html", "Retry-After": "2"})
            return httpx.Response(503, json={"result": "error", "message": "maintenance"},
                                  headers={"Retry-After": "2"})
        return httpx.Response(200, json=ADDED if calls[-1] == "AddOrder"
                              else {"result": "success"})

    result, sleeps = provision_sleeping(handler, policy())
    assert result.status == "Provisioned"
    # a 503 may come after WHMCS committed: looked up (after the wait) before adding again
    assert calls == ["AddOrder", "GetOrders", "AddOrder", "AcceptOrder"]
    # one wait, as long as asked (the provisioner's own backoff: at most 0.2 s), and the
    # lookup's settle moment (1.1 s after the send) passed during it
    assert len(sleeps) == 1 and sleeps[0] >= 2.0


def test_a_retry_after_past_the_deadline_waits_only_until_the_deadline():
    """Retry-After longer than what is left of the retry deadline: one last try at the
    deadline (never a wait past it, never a failure before it)."""
    calls: list[str] = []

    def handler(request):
        calls.append(action_of(request))
        if len(calls) == 1:
            return httpx.Response(503, content=b"busy", headers={"Retry-After": "3600"})
        return httpx.Response(200, json=ADDED if calls[-1] == "AddOrder"
                              else {"result": "success"})

    result, sleeps = provision_sleeping(handler, policy(retry_deadline_s=5))
    assert result.status == "Provisioned"
    assert calls == ["AddOrder", "GetOrders", "AddOrder", "AcceptOrder"]
    # the deadline runs on the real monotonic clock: less than 5 s may be left by then, but
    # far more than the own backoff (0.2 s), never past the deadline nor the 3,600 asked
    assert len(sleeps) == 1 and policy().backoff_max_s < sleeps[0] <= 5.0


def test_a_short_credential_does_not_blank_the_cause():
    """A credential too short to tell apart from ordinary text (a test installation's "s")
    is not blanked inside words; in a request body it is, by its field name."""
    env = {**ENV, "WHMCS_API_IDENTIFIER": "i", "WHMCS_API_SECRET": "s"}

    def handler(request):
        raise httpx.ConnectError(f"ssl handshake failed; sent {request.content.decode()}")

    async def go():
        async with client_answering(handler, env) as client:
            with pytest.raises(WhmcsTransientError) as info:
                await client.get_orders(client_id=1)
        return str(info.value)
    text = run(go())
    assert "ConnectError: ssl handshake failed; sent action=GetOrders" in text
    assert "identifier=[REDACTED]&secret=[REDACTED]&" in text


# -- a trickled answer is bounded by the whole call's limit, not only by silence ------------

@pytest.mark.parametrize("shape", ["bytes", "interim"])
def test_an_answer_trickled_past_the_timeout_ends_the_call(shape):
    """The read timeout restarts at every byte: a proxy or server dripping its answer a byte
    at a time (or sending ``102 Processing`` again and again) held AddOrder, its WHMCS slot
    and its Order's lane for as long as it liked. The call is bounded by WHMCS_TIMEOUT_S
    plus the time to connect; AddOrder then ends as a result not known."""
    from common.errors import WhmcsUnknownResultError
    body = b'{"result":"success","orderid":9,"serviceids":"4","invoiceid":"7"}'
    answer = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n%s" % (len(body), body))

    async def go():
        async def serve(reader, writer):
            await reader.readuntil(b"\r\n\r\n")
            pieces = ([answer[i:i + 1] for i in range(len(answer))] if shape == "bytes"
                      else [b"HTTP/1.1 102 Processing\r\n\r\n"] * 40 + [answer])
            try:
                for piece in pieces:
                    writer.write(piece)
                    await writer.drain()
                    await asyncio.sleep(0.05)
            except ConnectionError:
                pass
        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        env = {**ENV, "WHMCS_API_URL": f"http://127.0.0.1:{port}/includes/api.php"}
        client = WhmcsClient(WhmcsSettings.load(env), timeout_s=0.3)
        started = asyncio.get_running_loop().time()
        try:
            with pytest.raises(WhmcsUnknownResultError, match="no whole answer"):
                await client.add_order({"clientid": 1})
            took = asyncio.get_running_loop().time() - started
        finally:
            await client.aclose()
            server.close()
        return took
    took = run(go())
    assert took < 1.5, took  # 0.3 s + 0.3 s to connect; dripped whole, it took over 2 s


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_an_answer_that_came_while_the_process_was_stopped_is_taken(loop):
    """The whole-answer bound is the connection's own timer, as the read timeout is: an
    answer that arrived while the process was stopped past both (SIGSTOP, a frozen VM, a long
    pause) is read before the timer runs, and the call succeeds. Bounded from outside the
    transport, the expired bound cancelled the call on resume and threw the answer away."""
    import threading
    import time

    import uvloop
    body = b'{"result":"success","orderid":9,"serviceids":"4","invoiceid":"7"}'
    answer = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def serve() -> None:  # another thread: it answers while the event loop is stopped
        conn, _ = listener.accept()
        with conn:
            got = b""
            while b"\r\n\r\n" not in got:
                got += conn.recv(65536)
            time.sleep(0.5)
            conn.sendall(answer)
            time.sleep(3)
    threading.Thread(target=serve, daemon=True).start()
    env = {**ENV, "WHMCS_API_URL": f"http://127.0.0.1:{listener.getsockname()[1]}/api.php"}

    async def go():
        client = WhmcsClient(WhmcsSettings.load(env), timeout_s=1.0)
        asyncio.get_running_loop().call_later(0.2, time.sleep, 2.5)  # the process stopped
        try:
            return await client.add_order({"clientid": 1})
        finally:
            await client.aclose()
    factory = uvloop.new_event_loop if loop == "uvloop" else asyncio.new_event_loop
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            added = runner.run(go())
    finally:
        listener.close()
    assert added.order_id == 9


@pytest.mark.parametrize(("lookup", "code"), [
    (httpx.Response(200, json={"result": "error", "message": "Some failure"}), "WHMCS_ERROR"),
    (httpx.Response(503, text="down"), "WHMCS_UNAVAILABLE")])
def test_an_addorder_refusal_whose_lookup_fails_keeps_the_refusal_in_the_outcome(lookup, code):
    """AddOrder refused ("Invalid Payment Method"), then the lookup for an order it may have
    made fails: the outcome said only the lookup's failure (an outage to wait out), and no
    log line kept WHMCS's refusal (a payment method to fix). Either way the next attempt
    looks first (may_exist) and no second AddOrder is sent."""
    calls: list[str] = []

    def handler(request):
        calls.append(action_of(request))
        if calls[-1] == "AddOrder":
            return httpx.Response(200, json={"result": "error", "message":
                                             "Invalid Payment Method. Valid options include"})
        return lookup

    async def go():
        async with client_answering(handler) as client:
            async def sleep(_delay):
                pass
            return await Provisioner(client, policy(retry_deadline_s=0.0),
                                     sleep=sleep).provision(req())
    res = run(go())
    assert (res.status, res.error_code, res.may_exist) == ("Failed", code, True)
    assert (res.error_message or "").startswith(
        "AddOrder: Invalid Payment Method. Valid options include; the lookup"), res
    assert calls.count("AddOrder") == 1 and "GetOrders" in calls
