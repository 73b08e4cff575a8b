"""Async client of the WHMCS external API (``includes/api.php``, REFERENCE §4).

Wire format: one ``POST`` per action, form-encoded, arrays as PHP bracket keys
(``pid[0]=5&billingcycle[0]=monthly``), ``responsetype=json``, credentials ``identifier`` +
``secret`` (+ optional ``accesskey``). The JSON ``result`` field says whether a call worked,
never the HTTP status (which only tells a ``result=error`` refusing this installation,
401/403, from one about the request).

Errors are translated here (``raise ... from exc``)::

    result=error                          WhmcsError(message)              permanent
    result=error refusing this
    installation (HTTP 401/403, or one of
    WHMCS's own refusal texts, whole:
    _ACCESS_REFUSED); a non-API
    answer HTTP 401/407 (authentication
    asked in front of api.php) or 3xx
    (WHMCS_API_URL redirected: never
    followed)                             WhmcsAccessError                 wait for the fix
    HTTP 5xx, HTML / non-JSON body,
    connection refused, connect timeout   WhmcsTransientError              retry
    timeout or dropped connection after
    the request was sent, for AddOrder /
    AcceptOrder / CancelOrder (mutating)  WhmcsUnknownResultError          LOOK IT UP first
    the same for read-only actions        WhmcsTransientError              retry

Pitfall: WHMCS has no idempotency key. After a :class:`WhmcsUnknownResultError` from
``AddOrder`` the order may exist; callers must find it with :meth:`find_orders_by_marker`
before any new ``AddOrder``. The secret and access key never appear in logs or errors
(they are only ever placed in the request body).
"""

from __future__ import annotations

import logging
import os
import re
import socket
import ssl
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, ClassVar
from urllib.parse import quote, quote_plus

import httpx
import orjson

from common.backoff import retry_after_seconds
from common.clock import lease_clock
from common.envparse import hide_userinfo
from common.errors import (
    WhmcsAccessError,
    WhmcsError,
    WhmcsNotSentError,
    WhmcsTransientError,
    WhmcsUnknownResultError,
)
from common.http_transport import SEND_DEADLINE, Http11Transport, NotSent, request_bytes
from common.log import redact
from common.settings import WhmcsSettings

log = logging.getLogger(__name__)

MUTATING = frozenset({"AddOrder", "AcceptOrder", "CancelOrder"})
NOT_PENDING = "Order ID not found or Status not Pending"
# WHMCS refusing this installation, not the request: a wrong secret ("Authentication
# Failed"), the IP allow-list ("Invalid IP 1.2.3.4"), a wrong or missing API identifier
# ("Invalid or missing credentials"), an API role without the action ('Invalid Permissions:
# API action "addorder" is not allowed'), the login ban WHMCS puts on an IP after 3 failed
# logins in 30 minutes ("IP Banned", answered before anything else is checked, the right
# secret included), a wrong access key ("Invalid Access Key"), the credential's admin
# refused, disabled or unknown ("Access Denied", "Access Denied: Authentication not
# permitted", "Administrator Account Disabled", "Invalid administrative identifier"), the
# installation's licence lapsed ("Your license key has expired", "... has been suspended",
# "... is invalid", "... is still pending ...", "You must enter a license key ...", "WHMCS
# has not been able to verify your license ...": every action refused until it is fixed).
# Matched as the *whole* message (ignoring case and surrounding blanks), never as a prefix:
# AcceptOrder runs the provisioning module, and WHMCS answers its failure as result=error
# with the module's own text — "Authentication failed - wrong password.", "Access denied for
# user ..." from a control panel — which is that Order's failure, not a refusal of this
# installation (as a prefix it made the worker wait and re-send AcceptOrder forever). WHMCS
# answers its own refusals with HTTP 403 (401 for some): a ``result=error`` with either
# status is a refusal of this installation too, however it is worded.
ACCESS_REFUSED_STATUS = frozenset({401, 403})
_ACCESS_REFUSED = re.compile(
    r"\s*(?:Authentication Failed|Invalid IP [0-9A-Fa-f.:]+|Invalid or missing credentials"
    r'|Invalid Permissions: API action "[^"]*" is not allowed|IP Banned|Invalid Access Key'
    r"|Access Denied(?:: Authentication not permitted)?|Administrator Account Disabled"
    r"|Invalid administrative identifier"
    # the installation's licence refused (checked before any action): every call fails
    # until it is renewed or re-issued — a wait, not the Order's failure
    r"|Your license key (?:has expired|has been suspended|is invalid|is still pending\b.*)"
    r"|You must enter a license key\b.*"
    r"|WHMCS has not been able to verify your license\b.*)\s*", re.IGNORECASE).fullmatch
#: the API role refusing one action: no module says it, and a read would still be allowed
_ROLE_REFUSED = re.compile(r"\s*Invalid Permissions: API action", re.IGNORECASE).match
_BOM = b"\xef\xbb\xbf"
_DETAIL_MAX = 300  # characters of a transport error's text kept in an error message
_REDACT_MIN = 6  # credential values this long are blanked wherever they show
_MARKER = re.compile(r"sfOrderId=([A-Za-z0-9]+)")


def marker(sf_order_id: str) -> str:
    """The ``notes`` marker that ties a WHMCS order to its Salesforce Order."""
    return f"sfOrderId={sf_order_id}"


def has_marker(notes: str | None, sf_order_id: str) -> bool:
    """True when ``notes`` carries this Order's marker: its id exactly, or the same Order's
    other form — a 15- and an 18-character id of one Order share their first 15 characters
    (an order made from a request published with the 15-character id, before the connector
    wrote every id in the 18-character form, is still found). No other prefix matches."""
    ids = _MARKER.findall(notes or "")
    if len(sf_order_id) not in (15, 18):
        return sf_order_id in ids
    return any(m == sf_order_id or ({len(m), len(sf_order_id)} == {15, 18}
                                    and m[:15] == sf_order_id[:15]) for m in ids)


def encode_form(params: Mapping[str, Any]) -> str:
    """Form-encode with PHP bracket arrays: lists become ``name[0]=..&name[1]=..``.

    ``None`` values are left out; booleans become ``1``/``0`` (PHP truthiness). The same
    text as :func:`urllib.parse.urlencode`; a value with nothing to escape is not run
    through ``quote_plus`` (most are ids, codes and cycles): 25 → 10 µs for an AddOrder.
    """
    out: list[str] = []
    for name, value in params.items():
        if value is None:
            continue
        if isinstance(value, list | tuple):
            out.extend(f"{_quoted_name(f'{name}[{i}]')}={_quoted(v)}"
                       for i, v in enumerate(value) if v is not None)
        else:
            out.append(f"{_quoted_name(name)}={_quoted(value)}")
    return "&".join(out)


_NEEDS_QUOTING = re.compile(r"[^A-Za-z0-9_.~-]").search


def _quoted(value: Any) -> str:
    if value is True or value is False:
        return "1" if value else "0"
    text = str(value)
    return quote_plus(text) if _NEEDS_QUOTING(text) else text


@lru_cache(maxsize=256)
def _quoted_name(name: str) -> str:
    return quote_plus(name)


def _ids(raw: Any) -> list[int]:
    """``"12,13"`` / ``12`` / ``["12"]`` / ``""`` → ``[12, 13]``."""
    if raw is None or raw == "":
        return []
    if isinstance(raw, int):
        return [raw]
    if isinstance(raw, list):
        return [int(x) for x in raw if str(x).strip()]
    return [int(x) for x in str(raw).split(",") if x.strip()]


def _opt_int(raw: Any) -> int | None:
    if raw is None or raw == "" or str(raw) == "0":
        return None
    return int(raw)


@dataclass(frozen=True)
class AddOrderResult:
    order_id: int
    service_ids: list[int] = field(default_factory=list)
    addon_ids: list[int] = field(default_factory=list)
    invoice_id: int | None = None


@dataclass(frozen=True)
class WhmcsOrder:
    """One row of ``GetOrders``: the fields the worker and the CLI need."""

    id: int
    client_id: int
    status: str
    notes: str
    invoice_id: int | None
    service_ids: list[int]
    raw: dict[str, Any] = field(repr=False, default_factory=dict)

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> WhmcsOrder:
        items = ((row.get("lineitems") or {}).get("lineitem")) or []
        services = [int(i["relid"]) for i in items
                    if str(i.get("type", "")).lower() == "product" and str(i.get("relid", ""))]
        return cls(id=int(row["id"]), client_id=int(row.get("userid") or 0),
                   status=str(row.get("status", "")), notes=str(row.get("notes") or ""),
                   invoice_id=_opt_int(row.get("invoiceid")), service_ids=services,
                   raw=dict(row))


class WhmcsClient:
    """One shared httpx transport; safe for concurrent calls from one event loop.

    Requests go as bytes straight to :meth:`common.http_transport.Http11Transport.exchange`
    (on httpcore's pool a call cost ten times the client CPU; see that module), answers
    are decoded with orjson. Not through an ``httpx.AsyncClient``: WHMCS's API needs none
    of its cookies, redirects, auth or default headers, and its per-request machinery (the
    cookie jar above all) was a fifth of the CPU of a WHMCS call in the worker's profile.
    ``transport`` is injectable (tests point it at an ``httpx.MockTransport``); any other
    transport is handed ``httpx.Request`` objects, with the same errors.
    :attr:`calls` counts calls per action (attempts, including failed ones) and
    :attr:`latency` sums seconds per action.
    """

    #: :meth:`call` calls its ``on_write`` as the request is written — after any connect
    #: and TLS handshake (another injected transport: as the request is handed to it) —
    #: and never for a request of which nothing was written (not sent, or no connection)
    reports_writes: ClassVar[bool] = True

    def __init__(self, settings: WhmcsSettings, *,
                 transport: httpx.AsyncBaseTransport | None = None,
                 timeout_s: float | None = None, max_connections: int = 64) -> None:
        self.settings = settings
        self._timeout = timeout_s if timeout_s is not None else settings.timeout_s
        # the worker passes at least its WHMCS calls in flight (WORKER_WHMCS_PARALLELISM):
        # a smaller pool would hold calls back past their send deadlines
        self._transport = transport or Http11Transport(max_connections=max_connections)
        # parsed once: httpx parses a URL given as text on every request (~90 µs)
        self._url = httpx.URL(settings.api_url)
        connect = min(self._timeout, 5.0)
        # The read timeout is for silence: an answer trickled a byte at a time (a proxy, a
        # server sending ``102 Processing`` again and again) restarts it at each byte. The
        # whole answer is bounded too (``answer``: our transport's, from the request's
        # write, on the connection's own timer — an answer that came in while the process
        # was stopped still wins), so a call cannot hold a WHMCS slot and its Order's lane
        # past what WHMCS_TIMEOUT_S says.
        self._timeouts = {**httpx.Timeout(self._timeout, connect=connect).as_dict(),
                          "answer": self._timeout}
        self._auth_form = ""  # the credentials, form-encoded once (never logged)
        self.calls: Counter[str] = Counter()
        self.latency: dict[str, float] = defaultdict(float)
        self.observer: Any = None  # optional callable(action, seconds, outcome)

    async def aclose(self) -> None:
        await self._transport.aclose()

    async def __aenter__(self) -> WhmcsClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _auth(self) -> dict[str, str]:
        out = {"identifier": self.settings.identifier.reveal(),
               "secret": self.settings.secret.reveal(), "responsetype": "json"}
        if self.settings.access_key:
            out["accesskey"] = self.settings.access_key.reveal()
        return out

    async def call(self, action: str, params: Mapping[str, Any] | None = None, *,
                   send_deadline: float | None = None,
                   on_write: Callable[[], None] | None = None) -> dict[str, Any]:
        """Run one action; returns the success body. Raises the translated errors above.
        ``send_deadline`` (seconds on :func:`common.clock.lease_clock`): past it the request
        is not sent at all (:class:`~common.errors.WhmcsNotSentError`), checked once the
        connection is ours, right before the request is written (see
        :mod:`common.http_transport`). ``on_write``: called as the request is written
        (:attr:`reports_writes`) — when it may take effect from."""
        if not self._auth_form:
            self._auth_form = encode_form(self._auth())
        body = encode_form({"action": action, **(params or {})}) + "&" + self._auth_form
        if send_deadline is not None and lease_clock() >= send_deadline:
            raise WhmcsNotSentError(f"{action}: not sent, its send deadline had passed",
                                    action=action)
        self.calls[action] += 1
        started = time.monotonic()
        outcome = "error"
        try:
            result = await self._send(action, body, send_deadline, on_write)
            outcome = "success"
            return result
        except WhmcsUnknownResultError:
            outcome = "unknown"
            raise
        except WhmcsNotSentError:
            outcome = "not_sent"
            raise
        except WhmcsTransientError:
            outcome = "transient"
            raise
        finally:
            elapsed = time.monotonic() - started
            self.latency[action] += elapsed
            if self.observer is not None:
                self.observer(action, elapsed, outcome)

    async def _exchange(self, payload: bytes, send_deadline: float | None,
                        on_write: Callable[[], None] | None = None
                        ) -> tuple[int, Any, bytes]:
        if isinstance(self._transport, Http11Transport):
            # the request in bytes straight to our transport: no httpx.Request or
            # httpx.Response around it (~17 µs of the worker's CPU per call)
            return await self._transport.exchange(
                self._url, request_bytes(b"POST", self._url, _FORM_RAW, payload),
                self._timeouts, send_deadline=send_deadline, on_write=on_write)
        extensions: dict[str, Any] = {"timeout": self._timeouts}
        if send_deadline is not None:
            extensions[SEND_DEADLINE] = send_deadline
        if on_write is not None:
            on_write()  # another transport's write is not seen: as the request goes to it
        resp = await self._transport.handle_async_request(httpx.Request(
            "POST", self._url, stream=httpx.ByteStream(payload), headers=_FORM,
            extensions=extensions))
        content = await resp.aread()
        return resp.status_code, resp.headers.raw, content

    async def _send(self, action: str, body: str, send_deadline: float | None = None,
                    on_write: Callable[[], None] | None = None) -> dict[str, Any]:
        mutating = action in MUTATING
        payload = body.encode()
        try:
            status, headers, content = await self._exchange(payload, send_deadline, on_write)
        except NotSent as exc:
            raise WhmcsNotSentError(f"{action}: not sent: {exc}", action=action) from exc
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise WhmcsTransientError(f"{action}: WHMCS unreachable: {self._detail(exc)}",
                                      action=action) from exc
        except (httpx.TimeoutException, httpx.RemoteProtocolError, httpx.ReadError,
                httpx.WriteError) as exc:
            cls = WhmcsUnknownResultError if mutating else WhmcsTransientError
            raise cls(f"{action}: no answer after sending ({self._detail(exc)}); "
                      "the call may have taken effect", action=action) from exc
        except httpx.HTTPError as exc:
            cls = WhmcsUnknownResultError if mutating else WhmcsTransientError
            raise cls(f"{action}: HTTP failure {type(exc).__name__}", action=action) from exc
        try:
            answer = orjson.loads(content)
        except ValueError:  # orjson.JSONDecodeError, also for bytes that are not UTF-8
            answer = _loads_after_bom(content)
        if not isinstance(answer, dict) or "result" not in answer:
            # An HTML error page or a proxy's 5xx: WHMCS did not answer as the API.
            fields = httpx.Headers(headers)
            if status in (401, 407):
                # authentication asked by a web server or proxy in front of api.php, which
                # this client cannot give (WHMCS authenticates in the body): a refusal of
                # this installation, not of an Order — wait for the fix, /readyz says why
                asked = (fields.get("www-authenticate") or fields.get("proxy-authenticate")
                         or "authentication required")
                raise WhmcsAccessError(f"not a WHMCS API answer: HTTP {status} ({asked}) from a "
                                       "server or proxy in front of api.php", action=action)
            if 300 <= status < 400:
                # WHMCS_API_URL is not api.php's URL (http:// to a server redirecting to
                # https://, a site moved): nothing ran, and the next call is redirected the
                # same way — a refusal of this installation's configuration, as above, not
                # an AddOrder that may have landed. Not followed: the body carries the
                # secret (and may be an AddOrder) and would go to wherever it points.
                raise WhmcsAccessError(self._redirect(status, fields.get("location")),
                                       action=action)
            raise WhmcsTransientError(
                f"{action}: not a WHMCS API answer (HTTP {status}, "
                f"{fields.get('content-type', '?')})", action=action,
                retry_after=_retry_after(fields))
        if answer.get("result") == "success":
            return answer
        message = str(answer.get("message") or "unknown WHMCS error")
        if status >= 500:
            raise WhmcsTransientError(f"{action}: {message}", action=action,
                                      retry_after=_retry_after(httpx.Headers(headers)))
        if status in ACCESS_REFUSED_STATUS or _ACCESS_REFUSED(message):
            refused = WhmcsAccessError(message, action=action)
            refused.by_words = status not in ACCESS_REFUSED_STATUS
            raise refused
        raise WhmcsError(message, action=action)

    def _detail(self, exc: BaseException) -> str:
        """``exc`` as one bounded line for logs, ``/readyz`` and outcomes: its type and text
        (host:port and the OS or TLS reason — our transport's connect errors carry nothing
        else) and the OS reason of an errno its text leaves out ("Connection refused").
        Whatever an injected transport puts in its text, the credentials are blanked: the
        body's ``secret=``/``accesskey=``/``identifier=`` fields, and their values (raw or
        form-encoded) wherever they show, from 6 characters on."""
        text = str(exc)
        cause: BaseException | None = exc.__cause__ or exc.__context__
        while cause is not None:
            errno = getattr(cause, "errno", None)
            # an OS errno: not a TLS library code nor a resolver (EAI) code
            if (isinstance(cause, OSError) and isinstance(errno, int) and errno > 0
                    and not isinstance(cause, ssl.SSLError | socket.gaierror | socket.herror)):
                reason = os.strerror(errno)
                if reason.lower() not in text.lower():
                    text = f"{text} ({reason})"
                break
            cause = cause.__cause__ or cause.__context__
        text = self._scrub(text)
        return f"{type(exc).__name__}: {text}" if text else type(exc).__name__

    def _redirect(self, status: int, location: str | None) -> str:
        """What a redirect of ``api.php`` says: the URL it points to (resolved against
        WHMCS_API_URL; credentials of its authority, secrets in its query and this
        installation's credential values masked; bounded), the one to set."""
        if not location:
            return (f"WHMCS_API_URL is redirected (HTTP {status}) with no Location: set "
                    "WHMCS_API_URL to api.php's URL")
        try:
            target = str(self._url.join(location.strip()))
        except (httpx.InvalidURL, ValueError, TypeError):
            target = location
        return (f"WHMCS_API_URL is redirected (HTTP {status}) to "
                f"{self._scrub(hide_userinfo(target))}: set WHMCS_API_URL to that URL")

    def _scrub(self, text: str) -> str:
        """``text`` (from an injected transport, a server's header) on one bounded line,
        with every credential blanked: :func:`common.log.redact`'s shapes (the request
        body's ``secret=``/``accesskey=``/``identifier=``, a URL's password), and this
        installation's credential values (raw or form-encoded) wherever they show, from 6
        characters on."""
        text = redact(text)
        values = [self.settings.secret.reveal(), self.settings.identifier.reveal()]
        if self.settings.access_key:
            values.append(self.settings.access_key.reveal())
        for value in values:
            for form in {value, quote_plus(value), quote(value, safe="")}:
                if len(form) >= _REDACT_MIN:  # a 2-letter one would blank ordinary words
                    text = text.replace(form, "[REDACTED]")
        text = " ".join(text.split())
        if len(text) > _DETAIL_MAX:
            text = text[:_DETAIL_MAX - 1] + "…"
        return text

    # -- actions ------------------------------------------------------------------------

    async def add_order(self, params: Mapping[str, Any], *,
                        send_deadline: float | None = None,
                        on_write: Callable[[], None] | None = None) -> AddOrderResult:
        """``AddOrder`` with ready-made parameters (see ``streams.mapping``). Not idempotent."""
        data = await self.call("AddOrder", params, send_deadline=send_deadline,
                               on_write=on_write)
        return AddOrderResult(order_id=int(data["orderid"]),
                              service_ids=_ids(data.get("serviceids")),
                              addon_ids=_ids(data.get("addonids")),
                              invoice_id=_opt_int(data.get("invoiceid")))

    async def accept_order(self, order_id: int, *, autosetup: bool = True,
                           sendemail: bool = False, send_deadline: float | None = None,
                           on_write: Callable[[], None] | None = None) -> None:
        try:
            await self.call("AcceptOrder", {"orderid": order_id, "autosetup": autosetup,
                                            "sendemail": sendemail},
                            send_deadline=send_deadline, on_write=on_write)
        except WhmcsAccessError as refused:
            if not refused.by_words or _ROLE_REFUSED(str(refused)):
                raise  # a 401/403, or the API role without AcceptOrder: a read would pass
            # HTTP 200 in a refusal's words: WHMCS refusing us, or the provisioning module
            # failing in the same words (a panel's bare "Access denied"). One read with the
            # same credentials tells: answered, the refusal was the module's, and the Order
            # fails as for any AcceptOrder error instead of waiting for a fix forever
            try:
                await self.get_orders(order_id=order_id, limitnum=1)
            except WhmcsError:
                raise refused from None  # refused too (or no answer): wait, as before
            raise WhmcsError(str(refused), action="AcceptOrder") from refused

    async def cancel_order(self, order_id: int, *, send_deadline: float | None = None,
                           on_write: Callable[[], None] | None = None) -> None:
        """``CancelOrder`` of a Pending order (the worker's compensation for a duplicate)."""
        await self.call("CancelOrder", {"orderid": order_id}, send_deadline=send_deadline,
                        on_write=on_write)

    async def get_orders(self, *, client_id: int | None = None, order_id: int | None = None,
                         status: str | None = None, limitstart: int = 0,
                         limitnum: int = 25) -> tuple[int, list[WhmcsOrder]]:
        """One page: ``(totalresults, orders)``."""
        data = await self.call("GetOrders", {"userid": client_id, "id": order_id,
                                             "status": status, "limitstart": limitstart,
                                             "limitnum": limitnum})
        rows = ((data.get("orders") or {}).get("order")) or []
        return int(data.get("totalresults") or 0), [WhmcsOrder.from_row(r) for r in rows]

    async def iter_orders(self, client_id: int, *, page_size: int = 100) -> list[WhmcsOrder]:
        """Every order of a client, once each (pages through ``GetOrders``). WHMCS lists
        the newest first: an order created between two pages shifts the rest down by one,
        and the row at the page boundary comes back twice — kept once (the lookup would have
        taken its own order for a duplicate of itself). Orders deleted between two pages
        ahead of the read shift the rest *up*, and the rows at the boundary would never be
        read (the lookup would miss the Order's own order, and a second ``AddOrder``
        follows): when ``totalresults`` drops by N between two reads, the page is read again
        N rows earlier. New orders only come in at the front, so the rest cannot have moved
        up by more than the drop."""
        out: dict[int, WhmcsOrder] = {}
        start = 0
        last_total: int | None = None
        while True:
            total, page = await self.get_orders(client_id=client_id, limitstart=start,
                                                limitnum=page_size)
            for order in page:
                out.setdefault(order.id, order)
            dropped = 0 if last_total is None else last_total - total
            last_total = total
            if dropped > 0 and start > 0:
                # rows of the last page's end may have moved up past this page's start:
                # read again from where they can be now (each drop shrinks the total:
                # this ends)
                start = max(0, start - dropped)
                continue
            start += len(page)
            if not page or start >= total:
                return list(out.values())

    async def get_order(self, order_id: int) -> WhmcsOrder | None:
        _, rows = await self.get_orders(order_id=order_id, limitnum=1)
        return next((r for r in rows if r.id == order_id), None)

    async def get_clients_products(self, *, client_id: int | None = None,
                                   service_id: int | None = None,
                                   pid: int | None = None) -> list[dict[str, Any]]:
        data = await self.call("GetClientsProducts", {"clientid": client_id,
                                                      "serviceid": service_id, "pid": pid})
        return list(((data.get("products") or {}).get("product")) or [])

    async def find_orders_by_marker(self, client_id: int, sf_order_id: str) -> list[WhmcsOrder]:
        """The client's orders whose notes carry ``sfOrderId=<sf_order_id>``, oldest first."""
        found = [o for o in await self.iter_orders(client_id) if has_marker(o.notes, sf_order_id)]
        return sorted(found, key=lambda o: o.id)


_FORM = {"Content-Type": "application/x-www-form-urlencoded"}
# the fast path decodes no Content-Encoding (httpx would): ask for none
_FORM_RAW = [(b"Content-Type", b"application/x-www-form-urlencoded"),
             (b"Accept-Encoding", b"identity")]


def _loads_after_bom(content: bytes) -> Any:
    """The JSON after a UTF-8 byte order mark (and blanks): PHP sends a BOM first when a
    file it includes (``configuration.php``, a hook) was saved with one. None when there
    is none, or the rest is not JSON either."""
    start = content
    while True:
        content = content.lstrip(b" \t\r\n")
        if not content.startswith(_BOM):
            break
        content = content[len(_BOM):]
    if len(content) == len(start):
        return None
    try:
        return orjson.loads(content)
    except ValueError:
        return None


def _retry_after(headers: httpx.Headers) -> float | None:
    return retry_after_seconds(headers.get("retry-after"))


def redacted_params(params: Mapping[str, Any], keys: Iterable[str] = ("secret", "accesskey",
                                                                       "identifier")) -> dict:
    """A copy of ``params`` safe to log."""
    return {k: ("[REDACTED]" if k in keys else v) for k, v in params.items()}
