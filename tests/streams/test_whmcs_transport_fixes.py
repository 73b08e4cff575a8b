"""Two WHMCS client defects, fixed:

1. A host with a non-ASCII label was resolved and its TLS certificate checked under the
   IDNA 2003 name Python's resolver and ``ssl`` derive from the Unicode form
   (``straße.de`` → ``strasse.de``, another registrable domain) while the ``Host`` header
   carried the IDNA 2008 one (``xn--strae-oqa.de``): the credentials went to whoever owns
   the other domain. The transport connects, and checks the certificate, by the same ASCII
   name the ``Host`` header and the pool key use.
2. An answer redirecting ``api.php`` elsewhere (``http://`` to ``https://``, a site move) is a
   refusal of this installation's configuration, as a 401/407 in front of api.php is: the
   Orders wait, /readyz names the URL to set — not followed (the body carries the secret and
   may be an AddOrder), not counted as an AddOrder that may have landed.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest

from common.errors import WhmcsAccessError, WhmcsTransientError
from common.http_transport import Http11Transport
from common.settings import WhmcsSettings
from common.whmcs import WhmcsClient
from streams.mapping import WhmcsItem, WhmcsOrderRequest
from streams.provision import Provisioner
from tests.streams.factories import policy

SECRET = "s3cr3t+value/with&chars"
ENV = {"WHMCS_API_URL": "http://whmcs.example/includes/api.php",
       "WHMCS_API_IDENTIFIER": "api-identifier-0001", "WHMCS_API_SECRET": SECRET,
       "WHMCS_API_ACCESS_KEY": "the-access-key-0001"}
ADDED = {"result": "success", "orderid": 9, "serviceids": "4,5", "invoiceid": "7"}
ORDER = "8015g00000AbCdEAAZ"


def run(coro):
    return asyncio.run(coro)


def action_of(request: httpx.Request) -> str:
    return parse_qs(request.content.decode())["action"][0]


def client_answering(handler, env=ENV) -> WhmcsClient:
    return WhmcsClient(WhmcsSettings.load(env), transport=httpx.MockTransport(handler))


def req() -> WhmcsOrderRequest:
    return WhmcsOrderRequest(order_id=ORDER, client_id=1,
                             items=(WhmcsItem(pid=4, billingcycle="annually", qty=1),),
                             notes=f"sfOrderId={ORDER}")


# -- 1. the name connected to is the Host header's --------------------------------------------

@pytest.mark.parametrize(("url", "host"), [
    ("https://straße.de/includes/api.php", "xn--strae-oqa.de"),
    ("https://xn--strae-oqa.de/includes/api.php", "xn--strae-oqa.de"),
    ("https://bücher.example/includes/api.php", "xn--bcher-kva.example"),
    ("https://WHMCS.Example.COM/includes/api.php", "whmcs.example.com"),
    ("http://[::1]:8080/includes/api.php", "::1"),
    ("http://127.0.0.1:8080/includes/api.php", "127.0.0.1"),
])
def test_the_pool_connects_to_the_host_headers_ascii_name(url, host):
    async def go():
        return Http11Transport()._pool(httpx.URL(url), asyncio.get_running_loop()).host
    assert run(go()) == host


class _Refused(Exception):
    pass


@pytest.mark.parametrize(("url", "host", "port", "tls"), [
    ("https://straße.de/includes/api.php", "xn--strae-oqa.de", 443, True),
    ("https://ςιγμα.example/includes/api.php", httpx.URL("https://ςιγμα.example/").raw_host
     .decode(), 443, True),
    ("http://straße.de:8080/includes/api.php", "xn--strae-oqa.de", 8080, False),
    ("https://[::1]:8443/includes/api.php", "::1", 8443, True),
])
def test_dns_and_the_certificate_check_use_the_idna_2008_name(
        url, host, port, tls, monkeypatch):
    """What ``create_connection`` is given — the name resolved and the one the certificate
    is checked against — is the ``Host`` header's ASCII name, never the Unicode form Python
    would encode with IDNA 2003 (``ß`` → ``ss``, ``ς`` → ``σ``)."""
    seen: list[tuple[Any, Any, Any]] = []

    async def go():
        loop = asyncio.get_running_loop()

        async def create_connection(_factory, h, p, *, ssl=None, server_hostname=None):
            seen.append((h, p, server_hostname))
            raise OSError(111, "refused here")
        monkeypatch.setattr(loop, "create_connection", create_connection)
        env = {**ENV, "WHMCS_API_URL": url}
        async with WhmcsClient(WhmcsSettings.load(env)) as client:
            with pytest.raises(WhmcsTransientError, match="unreachable") as info:
                await client.get_orders(client_id=1)
        return str(info.value)
    text = run(go())
    assert seen == [(host, port, host if tls else None)]
    assert "xn--" in host or host == "::1"
    assert "strasse" not in text and SECRET not in text


def test_the_idna_2008_name_is_what_a_tls_handshake_checks(monkeypatch):
    """The whole way down: ``ssl`` is handed the punycode name as ``server_hostname`` (the
    one SNI carries and the certificate must match)."""
    names: list[str | None] = []

    def wrap_bio(self, incoming, outgoing, server_side=False, server_hostname=None,
                 session=None):
        names.append(server_hostname)
        raise ssl.SSLError("stop here")
    monkeypatch.setattr(ssl.SSLContext, "wrap_bio", wrap_bio)

    async def go():
        async def accept(_reader, writer):
            await asyncio.sleep(0.5)
            writer.close()
        server = await asyncio.start_server(accept, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        loop = asyncio.get_running_loop()
        connect = loop.create_connection

        async def to_local(factory, _host, _port, **kw):
            return await connect(factory, "127.0.0.1", port, **kw)
        monkeypatch.setattr(loop, "create_connection", to_local)
        transport = Http11Transport()
        async with server:
            with pytest.raises(httpx.ConnectError):
                await transport._pool(httpx.URL("https://straße.de/includes/api.php"),
                                      loop).connect(5.0)
    run(go())
    assert names == ["xn--strae-oqa.de"]


# -- 2. a redirect is a refusal of this installation's configuration --------------------------

@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_is_an_access_refusal_naming_the_url_to_set(status):
    calls: list[httpx.Request] = []

    def handler(request):
        calls.append(request)
        return httpx.Response(status, content=b"<html>Moved</html>",
                              headers={"Content-Type": "text/html",
                                       "Location": "https://whmcs.example/includes/api.php"})

    async def go():
        async with client_answering(handler) as client:
            with pytest.raises(WhmcsAccessError) as info:
                await client.add_order({"clientid": 1})
            return info.value
    exc = run(go())
    assert type(exc) is WhmcsAccessError and exc.retryable and exc.action == "AddOrder"
    assert str(exc) == (f"WHMCS_API_URL is redirected (HTTP {status}) to "
                        "https://whmcs.example/includes/api.php: set WHMCS_API_URL to that "
                        "URL")
    assert len(calls) == 1  # not followed


def test_a_relative_or_missing_location_is_still_named():
    locations = iter(["/whmcs/includes/api.php", None])

    def handler(_request):
        location = next(locations)
        return httpx.Response(302, headers={"Location": location} if location else {})

    async def go():
        async with client_answering(handler) as client:
            out = []
            for _ in range(2):
                with pytest.raises(WhmcsAccessError) as info:
                    await client.get_orders(client_id=1)
                out.append(str(info.value))
            return out
    relative, missing = run(go())
    assert relative == ("WHMCS_API_URL is redirected (HTTP 302) to "
                        "http://whmcs.example/whmcs/includes/api.php: set WHMCS_API_URL to "
                        "that URL")
    assert missing.startswith("WHMCS_API_URL is redirected (HTTP 302)")
    assert "no Location" in missing


def test_the_location_shown_carries_no_credentials_and_is_bounded():
    location = ("https://admin:hunter2-password@whmcs.example/includes/api.php?secret="
                + SECRET.replace("&", "%26") + "&accesskey=the-access-key-0001"
                + "&identifier=api-identifier-0001&pad=" + "x" * 2000 + "\r\n")

    def handler(_request):
        return httpx.Response(301, headers=[(b"Location", location.strip().encode())])

    async def go():
        async with client_answering(handler) as client:
            with pytest.raises(WhmcsAccessError) as info:
                await client.get_orders(client_id=1)
            return str(info.value)
    text = run(go())
    assert text.startswith("WHMCS_API_URL is redirected (HTTP 301) to https://")
    for leaked in ("hunter2", "admin:", SECRET, "s3cr3t", "the-access-key-0001",
                   "api-identifier-0001"):
        assert leaked not in text, leaked
    assert "whmcs.example" in text
    assert len(text) < 500 and "\n" not in text


@pytest.mark.parametrize("form", ["my secret value", "my+secret+value", "my%20secret%20value"])
def test_a_credential_in_the_location_is_blanked_in_each_form_it_takes(form):
    """A URL carries a space as ``%20`` (a form body as ``+``): each form of the secret is
    blanked, not only the raw value and its form encoding."""
    def handler(_request):
        return httpx.Response(302, headers={"Location": f"https://whmcs.example/{form}/api.php"})

    async def go():
        env = {**ENV, "WHMCS_API_SECRET": "my secret value"}
        async with client_answering(handler, env) as client:
            with pytest.raises(WhmcsAccessError) as info:
                await client.get_orders(client_id=1)
            return str(info.value)
    text = run(go())
    assert "https://whmcs.example/[REDACTED]/api.php" in text, text
    assert "secret" not in text.replace("[REDACTED]", ""), text


def test_an_api_answer_with_a_redirect_status_is_still_read_as_the_api():
    """A 3xx carrying WHMCS's own JSON is WHMCS's answer (api.php ran): read as such."""
    def handler(request):
        return httpx.Response(302, json=ADDED, headers={"Location": "https://elsewhere/"})

    async def go():
        async with client_answering(handler) as client:
            return await client.add_order({"clientid": 1})
    assert run(go()).order_id == 9


def test_an_add_order_redirected_makes_the_order_wait_and_never_look_up():
    """api.php did not run: the AddOrder is not one that may have landed (no wait for it
    to settle, no lookup, no attempt counted), the Order waits past a zero retry deadline
    with /readyz's state set, and provisions once WHMCS_API_URL answers."""
    redirects = 3
    calls: list[str] = []

    def handler(request):
        calls.append(action_of(request))
        if len(calls) <= redirects:
            return httpx.Response(301, content=b"<html>Moved Permanently</html>",
                                  headers={"Content-Type": "text/html",
                                           "Location": "https://whmcs.example/includes/api.php"})
        return httpx.Response(200, json=ADDED if calls[-1] == "AddOrder"
                              else {"result": "success"})

    async def go():
        async with client_answering(handler) as client:
            seen: list[tuple[float | None, str | None]] = []

            async def sleep(_delay):
                seen.append((prov.access_refused_since, prov.access_error))

            prov = Provisioner(client, policy(retry_deadline_s=0.0), sleep=sleep)
            result = await prov.provision(req())
            return result, prov, seen
    result, prov, seen = run(go())
    assert (result.status, result.whmcs_order_id, result.attempts, result.may_exist) == \
        ("Provisioned", 9, 1, False)
    assert len(seen) == redirects and all(since for since, _ in seen)
    assert all(error == "AddOrder: WHMCS_API_URL is redirected (HTTP 301) to "
               "https://whmcs.example/includes/api.php: set WHMCS_API_URL to that URL"
               for _, error in seen)
    assert calls == ["AddOrder"] * (redirects + 1) + ["AcceptOrder"]  # no GetOrders
    assert prov.access_refused_since is None


def test_a_connection_idle_past_the_keepalive_expiry_is_not_reused(monkeypatch):
    """A call refused by its send deadline (NotSent) gave its untouched connection back as
    if just used, and idle times ran on the loop's clock, which a host suspend stops: a
    connection idle past Apache's 5 s keep-alive was written into, reset, and the Order's
    AddOrder left in doubt. Scaled: expiry 0.4 s."""
    import asyncio

    import httpx

    from common import clock, http_transport
    from common.http_transport import Http11Transport, NotSent, request_bytes

    monkeypatch.setattr(http_transport, "KEEPALIVE_EXPIRY_S", 0.4)
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"
    timeouts = {"pool": 5, "connect": 2, "read": 2, "answer": 2}

    async def run(suspend: bool) -> int:
        opened = 0

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal opened
            opened += 1
            try:
                while True:
                    head = await reader.readuntil(b"\r\n\r\n")
                    length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
                    await reader.readexactly(length)
                    writer.write(answer)
                    await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        url = httpx.URL(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/api.php")
        data = request_bytes(b"POST", url, [], b"x")
        transport = Http11Transport()
        try:
            await transport.exchange(url, data, timeouts)
            if suspend:  # the host slept 1 s: the lease clock counts it, the loop's does not
                real = clock.lease_clock
                monkeypatch.setattr(http_transport, "lease_clock", lambda: real() + 1.0)
            else:
                await asyncio.sleep(0.3)
                with pytest.raises(NotSent):
                    await transport.exchange(url, data, timeouts,
                                             send_deadline=clock.lease_clock() - 1)
                await asyncio.sleep(0.3)  # 0.6 s idle in all
            await transport.exchange(url, data, timeouts)
        finally:
            server.close()
        return opened
    assert asyncio.run(run(suspend=False)) == 2
    assert asyncio.run(run(suspend=True)) == 2
