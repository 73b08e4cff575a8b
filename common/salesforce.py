"""Salesforce access: OAuth 2.0 JWT bearer auth and a REST client built on simple-salesforce.

Auth (REFERENCE §2): an RS256 JWT (``iss`` consumer key, ``sub`` user, ``aud`` login URL,
``exp`` now + 3 min) is exchanged at ``{SF_LOGIN_URL}/services/oauth2/token``. There is no
refresh token: on 401 we assert again. The org id (Pub/Sub ``tenantid``) comes from the
``id`` URL of the token response. Access tokens are :class:`Secret` and never logged.

The REST client wraps ``simple_salesforce.Salesforce`` (constructed with ``instance_url`` and
``session_id`` after our own JWT exchange, since simple-salesforce's JWT login only knows
``*.salesforce.com`` hosts) and translates its exceptions at this boundary:

* 401 ``INVALID_SESSION_ID`` → re-authenticate and retry once, then :class:`SalesforceAuthError`;
* 403 ``REQUEST_LIMIT_EXCEEDED`` → :class:`SalesforceLimitError` (callers back off/pause);
* 5xx, connection errors, timeouts → :class:`SalesforceError` with ``retryable=True``;
* other 4xx → :class:`SalesforceError` with the Salesforce ``errorCode``.

``SF_CA_BUNDLE`` adds its CAs to the default ones (:func:`ssl_context`), for the token endpoint
and REST as for the Pub/Sub channel.

The latest ``Sforce-Limit-Info`` is kept in :attr:`SalesforceClient.api_usage`.
"""

from __future__ import annotations

import io
import logging
import re
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import certifi
import httpx
import jwt
import requests
import simple_salesforce
import urllib3
from requests.adapters import HTTPAdapter
from simple_salesforce import exceptions as sfexc

from common.backoff import retry_after_seconds
from common.envparse import Secret, split_userinfo
from common.errors import (
    PipelineError,
    SalesforceAuthError,
    SalesforceError,
    SalesforceLimitError,
)
from common.exchange_watchdog import WATCHED_POOLS, Watchdog, whole_within
from common.log import redact
from common.settings import SalesforceSettings

log = logging.getLogger(__name__)
JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"


def ssl_context(ca_bundle: str = "") -> ssl.SSLContext:
    """The CAs trusted without a bundle (certifi's, as httpx and requests use by default,
    and the system's) and those of ``ca_bundle``: SF_CA_BUNDLE is an extra bundle (as for
    the Pub/Sub channel); passed as ``verify=path``, httpx and requests trusted it alone.

    Always certifi's too: httpx's default (``verify=True``) trusts ``SSL_CERT_FILE`` /
    ``SSL_CERT_DIR`` *alone* when they are set — the README's way to trust WHMCS's private
    CA, in every process's environment — and the token endpoint's public certificate was
    refused: no login, no Order moved."""
    context = ssl.create_default_context()
    context.load_verify_locations(cafile=certifi.where())
    if ca_bundle:
        context.load_verify_locations(cafile=ca_bundle)
    return context


def refuses_records(exc: PipelineError) -> bool:
    """A whole-call refusal one of the call's records (or a query's ids) may have caused:
    a 400 for the request, as opposed to one about this installation (a login,
    permissions, an API version) that no record can cause and none can mend."""
    return (isinstance(exc, SalesforceError) and exc.status == 400
            and not isinstance(exc, SalesforceAuthError)
            # Salesforce's own error (its JSON list with an errorCode): a 400 page of a proxy,
            # a WAF or a load balancer in front of it refuses every call alike, whatever the
            # records — bisected, it dead-lettered every outcome of the batch
            and exc.error_code is not None)


@dataclass(frozen=True)
class Token:
    access_token: Secret
    instance_url: str
    org_id: str
    user_id: str
    issued_at: float

    def __repr__(self) -> str:
        return (f"Token(instance_url={self.instance_url!r}, org_id={self.org_id!r}, "
                f"user_id={self.user_id!r}, access_token=**********)")


class SalesforceAuth:
    """JWT bearer flow; thread-safe; caches the token until :meth:`refresh` is called."""

    def __init__(self, settings: SalesforceSettings, *, http: httpx.Client | None = None) -> None:
        self.settings = settings
        self._key = settings.private_key()
        self._http = http or httpx.Client(timeout=settings.timeout_s,
                                          verify=ssl_context(settings.ca_bundle))
        self._token: Token | None = None
        self._lock = threading.Lock()
        self.logins = 0

    def assertion(self, *, lifetime_s: int = 170) -> str:
        claims = {"iss": self.settings.client_id, "sub": self.settings.username,
                  "aud": self.settings.jwt_audience, "exp": int(time.time()) + lifetime_s}
        return jwt.encode(claims, self._key.reveal(), algorithm="RS256")

    def token(self) -> Token:
        with self._lock:
            if self._token is None:
                self._token = self._login()
            return self._token

    def refresh(self, stale: Token | None = None) -> Token:
        """Assert again — unless another thread already replaced ``stale``."""
        with self._lock:
            if self._token is None or stale is None or self._token is stale:
                self._token = self._login()
            return self._token

    def _post_within(self, url: str, assertion: str, basic: tuple[str, str] | None
                     ) -> httpx.Response:
        """The token request, whole within ``SF_TIMEOUT_S`` (httpx bounds each read: a
        trickled answer — its head as its body — held the login, and every thread waiting
        for a token, for as long as it took). Its connection, a new one for each login
        (``Connection: close``: httpx tells of a connection only as it makes it), is shut
        down when the time is up (:class:`Watchdog`)."""
        deadline = time.monotonic() + self.settings.timeout_s
        watchdog = Watchdog(self.settings.timeout_s)

        def trace(event: str, info: dict[str, Any]) -> None:
            if event.endswith(".connect_tcp.complete"):  # before the TLS handshake
                watchdog.watch(info["return_value"].get_extra_info("socket"))

        try:
            with watchdog, self._http.stream(
                    "POST", url, data={"grant_type": JWT_GRANT, "assertion": assertion},
                    headers={"Connection": "close"}, extensions={"trace": trace},
                    auth=httpx.BasicAuth(*basic) if basic else httpx.USE_CLIENT_DEFAULT
            ) as resp:
                body = bytearray()
                for chunk in resp.iter_bytes():  # decoded (gzip)
                    body += chunk
                    if time.monotonic() > deadline:
                        raise httpx.ReadTimeout(whole_within(self.settings.timeout_s))
        except httpx.HTTPError as exc:
            if watchdog.fired:  # whatever the shut connection made of it
                raise httpx.ReadTimeout(whole_within(self.settings.timeout_s)) from exc
            raise
        if watchdog.fired:  # read to the shut connection's end, a body may look whole
            raise httpx.ReadTimeout(whole_within(self.settings.timeout_s))
        # the answer as read, whole (a new response: the streamed one is closed)
        headers = [(k, v) for k, v in resp.headers.items()
                   if k.lower() not in ("content-encoding", "content-length",
                                        "transfer-encoding")]  # it is decoded, whole
        return httpx.Response(resp.status_code, headers=headers, content=bytes(body),
                              request=resp.request)

    def _login(self) -> Token:
        # credentials in SF_LOGIN_URL (a gateway's) go as Basic authentication; the URL put
        # in errors (which reach /readyz) and the JWT's audience never carry them
        login_url, basic = split_userinfo(self.settings.login_url)
        url = login_url.rstrip("/") + "/services/oauth2/token"
        try:
            assertion = self.assertion()
        except (jwt.PyJWTError, ValueError, TypeError):
            # a key settings validation let pass: no retry mends it. Not chained, so no
            # library's text about the key reaches a log
            raise SalesforceAuthError("the private key cannot sign the JWT assertion (check "
                                      "SF_PRIVATE_KEY_PATH / SF_PRIVATE_KEY_BASE64)",
                                      error_code="invalid_key", retryable=False) from None
        try:
            resp = self._post_within(url, assertion, basic)
        except httpx.HTTPError as exc:
            raise SalesforceAuthError(f"token endpoint {url} unreachable: {exc}",
                                      retryable=True) from exc
        try:
            body = resp.json()
        except ValueError:
            body = {}
        if isinstance(body, list) and body and isinstance(body[0], dict):
            # the REST error shape, from a gateway in front of the token endpoint (503)
            body = {"error": body[0].get("errorCode"), "error_description": body[0].get("message")}
        if not isinstance(body, dict):
            body = {}
        if resp.status_code != 200:
            code = str(body.get("error") or f"http_{resp.status_code}")
            desc = body.get("error_description") or redact(resp.text)[:200]
            later = resp.status_code >= 500 or resp.status_code in RETRY_LATER
            raise SalesforceAuthError(f"JWT bearer login refused: {code}: {desc}",
                                      error_code=code, status=resp.status_code,
                                      retryable=later,
                                      retry_after=_retry_after_s(
                                          resp.headers.get("Retry-After", "")) if later
                                      else None)
        if not body.get("access_token") or not body.get("instance_url"):
            raise SalesforceAuthError(f"token endpoint {url} answered 200 without an access "
                                      "token and instance URL", status=200, retryable=True)
        ident = body.get("id", "")
        parts = urlparse(ident).path.rstrip("/").split("/")
        org_id, user_id = (parts[-2], parts[-1]) if len(parts) >= 2 else ("", "")
        self.logins += 1
        log.info("authenticated to Salesforce", extra={"cause": f"org {org_id}"})
        return Token(Secret(body["access_token"]), body["instance_url"].rstrip("/"), org_id,
                     user_id, time.time())


CHUNK = 64 * 1024  # the most a read of an answer's body takes at once
_ENCODED = ("content-encoding", "content-length", "transfer-encoding")


class _TimeoutSession(requests.Session):
    def __init__(self, timeout: float) -> None:
        super().__init__()
        self._timeout = timeout
        for prefix in ("https://", "http://"):
            self.mount(prefix, _DeadlineAdapter(timeout))

    def request(self, method: str, url: str, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        kwargs.setdefault("timeout", self._timeout)
        return super().request(method, url, **kwargs)


class _DeadlineAdapter(HTTPAdapter):
    """Each exchange whole within ``whole_s`` (``SF_TIMEOUT_S``): requests bounds each socket
    read, so an answer that kept trickling (a proxy, a degraded link) was never cut — the
    call, and every caller queued behind the client's lock, waited as long as it took,
    with nothing reported. A :class:`Watchdog` shuts the connection down when the time is
    up, whatever the exchange is at; the body is read as it arrives, then handed on as a
    response of its own."""

    def __init__(self, whole_s: float) -> None:
        self.whole_s = whole_s
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = WATCHED_POOLS

    def proxy_manager_for(self, proxy: str, **kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **kwargs)
        if isinstance(manager, urllib3.ProxyManager):  # a SOCKS one has connections of its own
            manager.pool_classes_by_scheme = WATCHED_POOLS
        return manager

    def send(self, request: Any, stream: bool = False, timeout: Any = None,
             verify: Any = True, cert: Any = None, proxies: Any = None) -> requests.Response:
        deadline = time.monotonic() + self.whole_s
        watchdog = Watchdog(self.whole_s)
        try:
            with watchdog:  # ended before the connection goes back to its pool
                response = super().send(request, stream=True, timeout=timeout, verify=verify,
                                        cert=cert, proxies=proxies)
                body = None if stream else self._body(request, response, deadline)
        except (requests.RequestException, OSError) as exc:
            if watchdog.fired:  # whatever the shut connection made of it
                raise requests.exceptions.ReadTimeout(whole_within(self.whole_s),
                                                      request=request) from exc
            raise
        if watchdog.fired:  # read to the shut connection's end, a body may look whole
            response.close()
            raise requests.exceptions.ReadTimeout(whole_within(self.whole_s),
                                                  request=request)
        if body is None:
            return response
        response.raw.release_conn()  # read to its end: the connection is kept
        headers = urllib3.HTTPHeaderDict()
        for name, value in response.raw.headers.items():
            if name.lower() not in _ENCODED:  # the body is decoded, and whole
                headers.add(name, value)
        whole = urllib3.HTTPResponse(
            body=io.BytesIO(bytes(body)), status=response.status_code, reason=response.reason,
            headers=headers, preload_content=False, decode_content=False)
        return self.build_response(request, whole)

    def _body(self, request: Any, response: requests.Response, deadline: float
              ) -> bytearray:
        body = bytearray()
        try:
            while chunk := response.raw.read1(CHUNK, decode_content=True):
                body += chunk
                if time.monotonic() > deadline:
                    raise requests.exceptions.ReadTimeout(whole_within(self.whole_s),
                                                          request=request)
        except urllib3.exceptions.HTTPError as exc:
            # what requests raises reading a body itself (a connection broken mid-answer, a
            # read timed out, a body that does not decode): a RequestException, an outage
            response.close()
            raise requests.exceptions.ConnectionError(exc, request=request) from exc
        except BaseException:
            response.close()  # the connection is not used again
            raise
        return body


class _ContextAdapter(_DeadlineAdapter):
    """HTTPS verified against ``context`` (:func:`ssl_context`), directly or via a proxy."""

    def __init__(self, context: ssl.SSLContext, whole_s: float) -> None:
        self._context = context
        super().__init__(whole_s)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, ssl_context=self._context, **kwargs)

    def proxy_manager_for(self, proxy: str, **kwargs: Any) -> Any:
        return super().proxy_manager_for(proxy, ssl_context=self._context, **kwargs)

    def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
        # requests would load its own bundle — or REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE from
        # the environment — into the context on each connection: the context decides alone
        super().cert_verify(conn, url, verify, cert)
        conn.ca_certs = conn.ca_cert_dir = None


def _error_code(exc: sfexc.SalesforceError) -> str | None:
    content = exc.content
    if isinstance(content, list) and content and isinstance(content[0], dict):
        return content[0].get("errorCode")
    return None


_LIMIT_INFO = re.compile(r"api-usage=(\d+)/(\d+)")
#: statuses that say "later", retried like a 5xx
RETRY_LATER = frozenset({408, 429})
#: the longest Retry-After taken from an answer (a proxy's day-long one is not waited out)
RETRY_AFTER_MAX_S = 300.0


def _retry_after_s(value: str) -> float | None:
    """A ``Retry-After`` in seconds (:func:`common.backoff.retry_after_seconds`), capped."""
    seconds = retry_after_seconds(value)
    return None if seconds is None else min(seconds, RETRY_AFTER_MAX_S)


def _shape(value: Any) -> str:
    return "no body" if value is None else f"a JSON {type(value).__name__}"


def _query_page(result: Any) -> dict[str, Any]:
    """A query answer as Salesforce gives it — ``totalSize``, ``done`` and a ``records``
    list — or a retryable :class:`SalesforceError`: a 2xx that is not Salesforce's (a
    proxy's or a gateway's ``{}``, ``{"status": …}``, a list) read as an empty answer made
    every Order of a guard read missing (``Failed ORDER_NOT_FOUND``), or crashed the read."""
    if isinstance(result, dict) and isinstance(result.get("records"), list) and \
            isinstance(result.get("totalSize"), int) and isinstance(result.get("done"), bool):
        return result
    keys = f" with {sorted(result)[:5]}" if isinstance(result, dict) else ""
    raise SalesforceError(f"the query answered without Salesforce's query result "
                          f"({_shape(result)}{keys})", retryable=True)


def _answer(result: Any, what: str, key: str) -> dict[str, Any]:
    """A record or describe answer (a JSON object holding ``key``), or a retryable
    :class:`SalesforceError`, as for a query (:func:`_query_page`)."""
    if isinstance(result, dict) and key in result:
        return dict(result)
    raise SalesforceError(f"{what} answered without Salesforce's answer ({_shape(result)})",
                          retryable=True)


class SalesforceClient:
    """Synchronous REST client (one per thread of use is simplest; calls are serialized)."""

    def __init__(self, settings: SalesforceSettings, auth: SalesforceAuth | None = None) -> None:
        self.settings = settings
        self.auth = auth or SalesforceAuth(settings)
        self._session = _TimeoutSession(settings.timeout_s)
        # every answer's Sforce-Limit-Info, errors and SFType calls (get, update, describe)
        # included: simple-salesforce keeps it only for the object that made the call, and
        # not at all when the answer is an error — REQUEST_LIMIT_EXCEEDED among them
        self._session.hooks["response"].append(self._record_usage)
        if settings.ca_bundle:
            self._session.mount("https://", _ContextAdapter(ssl_context(settings.ca_bundle),
                                                             settings.timeout_s))
        self._sf: simple_salesforce.Salesforce | None = None
        self._sf_token: Token | None = None
        self._lock = threading.RLock()
        self.api_usage: tuple[int, int] | None = None
        self._retry_after: float | None = None
        self.calls = 0

    def _client(self) -> simple_salesforce.Salesforce:
        token = self.auth.token()
        if self._sf is None or self._sf_token is not token:
            self._sf = simple_salesforce.Salesforce(
                instance_url=token.instance_url, session_id=token.access_token.reveal(),
                session=self._session, version=self.settings.api_version,
                # plain dicts: simple_salesforce's default OrderedDict hook takes the JSON
                # decoder off its fast path (a 48-Order guard answer: 770 → 358 µs)
                object_pairs_hook=None)
            self._sf_token = token
        return self._sf

    def _call(self, fn: Any) -> Any:
        with self._lock:
            for attempt in (1, 2):
                sf = self._client()
                try:
                    self.calls += 1
                    return fn(sf)
                except sfexc.SalesforceExpiredSession as exc:
                    if attempt == 2:
                        raise SalesforceAuthError("session refused after re-authentication",
                                                  error_code="INVALID_SESSION_ID",
                                                  status=401) from exc
                    log.info("Salesforce session expired; re-authenticating")
                    self.auth.refresh(self._sf_token)
                except sfexc.SalesforceError as exc:
                    raise self._translate(exc) from exc
                except requests.RequestException as exc:
                    raise SalesforceError(f"Salesforce unreachable: {type(exc).__name__}: {exc}",
                                          retryable=True) from exc
        raise AssertionError("unreachable")

    def _translate(self, exc: sfexc.SalesforceError) -> SalesforceError:
        code = _error_code(exc)
        status = getattr(exc, "status", None)
        message = f"Salesforce {status} {code or ''}: {redact(str(exc.content))[:300]}"
        if code == "REQUEST_LIMIT_EXCEEDED":
            return SalesforceLimitError(message, error_code=code, status=status, retry_after=60.0)
        # 408 and 429 (a proxy's or a gateway's, or Salesforce's own concurrency limit) are
        # "later", not a refusal of the credentials or the records
        retryable = (status is not None and (status >= 500 or status in RETRY_LATER)
                     or code == "UNABLE_TO_LOCK_ROW")
        return SalesforceError(message, error_code=code, status=status, retryable=retryable,
                               retry_after=self._retry_after if retryable else None)

    def _record_usage(self, response: requests.Response, *_args: Any, **_kw: Any) -> None:
        match = _LIMIT_INFO.search(response.headers.get("Sforce-Limit-Info", ""))
        if match:
            self.api_usage = (int(match[1]), int(match[2]))
        # the last answer's Retry-After (seconds), for the error _translate makes of it
        self._retry_after = _retry_after_s(response.headers.get("Retry-After", ""))

    # -- operations -------------------------------------------------------------------

    def query(self, soql: str) -> list[dict[str, Any]]:
        """All records of a SOQL query (follows ``nextRecordsUrl``)."""
        result = _query_page(self._call(lambda sf: sf.query(soql)))
        records: list[dict[str, Any]] = list(result["records"])
        while not result["done"] and result.get("nextRecordsUrl"):
            next_url = result["nextRecordsUrl"]
            result = _query_page(self._call(
                lambda sf, url=next_url: sf.query_more(url, identifier_is_url=True)))
            records.extend(result["records"])
        return records

    def count(self, soql: str) -> int:
        """The ``totalSize`` of a ``SELECT COUNT() …`` query (no records come back)."""
        return int(_query_page(self._call(lambda sf: sf.query(soql)))["totalSize"])

    def get(self, sobject: str, record_id: str) -> dict[str, Any]:
        return _answer(self._call(lambda sf: getattr(sf, sobject).get(record_id)),
                       f"{sobject} {record_id}", "attributes")

    def describe(self, sobject: str) -> dict[str, Any]:
        """``GET sobjects/{sobject}/describe``: the object's fields as the user sees them."""
        return _answer(self._call(lambda sf: getattr(sf, sobject).describe()),
                       f"{sobject} describe", "fields")

    def update(self, sobject: str, record_id: str, fields: dict[str, Any]) -> None:
        self._call(lambda sf: getattr(sf, sobject).update(record_id, fields))

    def update_collection(self, records: list[dict[str, Any]], *,
                          all_or_none: bool = False) -> list[dict[str, Any]]:
        """PATCH composite/sobjects (≤ 200 records, each with ``attributes.type`` and ``id``).

        Returns one ``{"id","success","errors"}`` per record, in order.
        """
        if len(records) > 200:
            raise ValueError("sObject Collections take at most 200 records")
        body = {"allOrNone": all_or_none, "records": records}
        result = self._call(lambda sf: sf.restful("composite/sobjects", method="PATCH",
                                                  json=body))
        if not isinstance(result, list) or len(result) != len(records) or \
                not all(isinstance(r, dict) for r in result):
            # a 2xx that is not Salesforce's answer (a proxy's 204, a gateway's {} or
            # {"status": …}): no record's fate is known, so the call is retried like an
            # outage — read as results it crashed the sink on every retry
            shape = (f"{len(result)} item(s) for {len(records)} record(s)"
                     if isinstance(result, list) else
                     "no body" if result is None else f"a JSON {type(result).__name__}")
            raise SalesforceError(f"composite/sobjects answered without one result per "
                                  f"record ({shape})", retryable=True)
        return result
