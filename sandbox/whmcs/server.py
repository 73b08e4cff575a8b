"""The aiohttp application: ``POST /includes/api.php`` plus the ``/__sandbox/...`` admin API.

Request handling order for the API (mirrors WHMCS, then the faults):

1. parse the form body (and query string) into PHP-style params; count the call; draw the
   request's faults (:meth:`Faults.plan`: the RNG moves, nothing is used up yet);
2. the login ban, checked before anything else: an IP that failed to log in ``ban_after``
   (3) times within ``ban_window_s`` (30 minutes) is answered 403 ``IP Banned`` for
   ``ban_s`` (15 minutes, WHMCS's default "Invalid Login Ban Time"; 0 = no ban) — whatever
   it sends, the right secret and access key included;
3. the IP allow-list — skipped when ``accesskey`` matches — answering 403
   ``{"result":"error","message":"Invalid IP <ip>"}``; then the "Invalid IP" flap (the same
   answer; the fault fires); a configured access key given wrong from an allowed IP: 403
   ``Invalid Access Key``;
4. credentials, as WHMCS takes them — 403 ``Authentication Failed`` otherwise (a failed
   login, counted towards the ban): the API credential as ``identifier`` + ``secret``, or
   the same pair in ``username`` + ``password`` (WHMCS's "forwards compatibility" for
   integrations written for login credentials), or an admin's login credentials —
   ``username`` + the MD5 hex of the password — when the sandbox is given an admin
   (``--admin-username``);
5. the request's faults fire (:meth:`Faults.fire`: counted, ``times`` used up — a request
   refused in 2–4 other than by the flap gets no fault and uses none up); fault latency;
6. pre-commit faults (HTTP 500/503/HTML page, chosen WHMCS error);
7. the action (commits its writes);
8. post-commit faults: commit-then-hang (delay or dropped connection), errors-after-commit;
9. the answer: JSON with ``responsetype=json``, otherwise WHMCS's default XML
   (``<whmcsapi>``) — auth and IP refusals are always JSON here.

Admin endpoints (JSON, no auth — the sandbox listens on localhost):

- ``GET /__sandbox/health`` → ``{"ok": true}``
- ``GET /__sandbox/counters`` → ``calls`` per action, ``orders_created``,
  ``orders_by_marker`` (Salesforce Order id → WHMCS orders), ``duplicates`` (markers with
  more than one order); ``POST /__sandbox/counters/reset`` zeroes the call counts.
- ``GET /__sandbox/calls`` → the call counts alone (``{"AddOrder": n, ...}``), cheap to poll.
- ``GET /__sandbox/orders?sf_order_id=&userid=&status=&limit=`` → ``{"orders": [...]}``
- ``GET /__sandbox/faults`` → ``{"seed", "fired", "fired_kinds", "faults"}``;
  ``POST /__sandbox/faults`` with ``{"action": "AddOrder"|"*", ...FaultSpec fields}`` or
  ``{"faults": {action: spec, ...}, "seed": n, "replace": bool}`` — checked whole first: a
  400 (naming the field, or an action the sandbox does not answer) changes nothing;
  ``DELETE /__sandbox/faults[?action=AddOrder]`` clears.
- ``GET/POST /__sandbox/allowed-ips`` (``{"allowed_ips": ["127.0.0.1", ...]}``, a list of
  strings, else 400; ``"*"`` = any)
- ``GET /__sandbox/login-ban`` → ``{"ban_after", "ban_window_s", "ban_s", "banned": {ip:
  seconds left}, "failed_logins": {ip: n}}``; ``POST`` with any of ``ban_after``,
  ``ban_window_s``, ``ban_s`` (finite, not negative) changes them (bans already on keep
  their end); ``DELETE`` lifts every ban and forgets the failed logins (an admin removing
  them in WHMCS).
- ``POST /__sandbox/seed`` with ``{"accounts": n}``.

Secrets (``secret``, ``password``, ``accesskey``) are compared in constant time and never
logged.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any
from xml.sax.saxutils import escape

from aiohttp import web

from sandbox.whmcs.actions import Context, dispatch
from sandbox.whmcs.faults import NO_FAULT, Faults, Plan
from sandbox.whmcs.forms import parse_form, scalar
from sandbox.whmcs.store import Store

log = logging.getLogger("sandbox.whmcs")

JSON_TYPE = "application/json"
HTML_ERROR = ("<html><head><title>{code} {reason}</title></head><body><h1>{reason}</h1>"
              "<p>The server encountered a temporary error.</p></body></html>")
PHP_FATAL = ("<br />\n<b>Fatal error</b>:  Uncaught PDOException: SQLSTATE[HY000] [2002] "
             "Connection refused in /var/www/whmcs/vendor/illuminate/database/"
             "Connectors/Connector.php:70<br />")


@dataclass
class Config:
    """Who may call the API. ``allowed_ips`` containing ``"*"`` allows everyone."""

    identifier: str
    secret: str
    access_key: str = ""
    allowed_ips: set[str] = field(default_factory=lambda: {"127.0.0.1", "::1"})
    context: Context = field(default_factory=Context)
    admin_username: str = ""  # legacy login credentials ('' = none)
    admin_password: str = ""
    # WHMCS's login ban: ``ban_after`` failed logins from one IP within ``ban_window_s`` ban
    # it for ``ban_s`` seconds (0 = never)
    ban_after: int = 3
    ban_window_s: float = 1800.0
    ban_s: float = 900.0


class Sandbox:
    """State shared by the handlers: the store, config, faults and counters."""

    def __init__(self, store: Store, config: Config, faults: Faults | None = None, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.config = config
        self.faults = faults or Faults()
        self.calls: Counter[str] = Counter()
        self._names: dict[str, str] = {}
        self._clock = clock
        self._failed_logins: dict[str, deque[float]] = {}  # ip → when, within the window
        self._banned_until: dict[str, float] = {}  # ip → end of its ban (clock seconds)

    def action_name(self, raw: str) -> str:
        """The action as WHMCS spells it (``addorder`` → ``AddOrder``) for the counters."""
        name = self._names.get(raw)
        if name is None:
            name = _PRETTY.get(raw.strip().lower(), raw.strip() or "(none)")
            if len(self._names) < 1000:
                self._names[raw] = name
        return name

    # -- the login ban (WHMCS: tblbannedips, "Invalid Login Ban Time") --------------------

    def banned(self, ip: str) -> bool:
        until = self._banned_until.get(ip)
        if until is None:
            return False
        if self._clock() < until:
            return True
        del self._banned_until[ip]  # run out
        return False

    def _failed_login(self, ip: str) -> None:
        """One failed login from ``ip``: its ``ban_after``-th within the window bans it."""
        config, now = self.config, self._clock()
        if config.ban_s <= 0 or config.ban_after <= 0:
            return
        failures = self._failed_logins.setdefault(ip, deque())
        failures.append(now)
        while failures and failures[0] <= now - config.ban_window_s:
            failures.popleft()
        if len(failures) >= config.ban_after:
            self._banned_until[ip] = now + config.ban_s
            del self._failed_logins[ip]
            log.warning("IP %s banned for %.0f s after %d failed logins", ip, config.ban_s,
                        config.ban_after)
        elif len(self._failed_logins) > 10_000:  # bounded: the oldest IP's count goes
            self._failed_logins.pop(next(iter(self._failed_logins)))

    def lift_bans(self) -> None:
        self._banned_until.clear()
        self._failed_logins.clear()

    def login_ban(self) -> dict[str, Any]:
        config, now = self.config, self._clock()
        for ip in list(self._banned_until):
            self.banned(ip)  # drops those run out
        return {"ban_after": config.ban_after, "ban_window_s": config.ban_window_s,
                "ban_s": config.ban_s,
                "banned": {ip: round(until - now, 3) for ip, until in self._banned_until.items()},
                "failed_logins": {ip: sum(1 for t in at if t > now - config.ban_window_s)
                                  for ip, at in self._failed_logins.items()}}

    def _ip_allowed(self, ip: str) -> bool:
        allowed = self.config.allowed_ips
        return "*" in allowed or ip in allowed

    def _has_access_key(self, params: dict[str, Any]) -> bool:
        key = self.config.access_key
        return bool(key) and hmac.compare_digest(scalar(params, "accesskey").encode(),
                                                 key.encode())

    def _authenticated(self, params: dict[str, Any]) -> bool:
        if "identifier" in params or "secret" in params:
            return self._credential(scalar(params, "identifier"), scalar(params, "secret"))
        user, password = scalar(params, "username"), scalar(params, "password")
        return self._credential(user, password) or self._admin_login(user, password)

    def _credential(self, ident: str, secret: str) -> bool:
        ok_ident = hmac.compare_digest(ident.encode(), self.config.identifier.encode())
        ok_secret = hmac.compare_digest(secret.encode(), self.config.secret.encode())
        return ok_ident and ok_secret

    def _admin_login(self, user: str, password_md5: str) -> bool:
        """Login credentials: the admin's username and the MD5 hex of its password."""
        if not self.config.admin_username:
            return False
        want = hashlib.md5(self.config.admin_password.encode(),  # noqa: S324 - WHMCS's scheme
                           usedforsecurity=False).hexdigest()
        ok_user = hmac.compare_digest(user.encode(), self.config.admin_username.encode())
        ok_password = hmac.compare_digest(password_md5.lower().encode(), want.encode())
        return ok_user and ok_password

    async def api(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        params = parse_form(body)
        if request.query_string:
            params = {**parse_form(request.query_string), **params}
        action = self.action_name(scalar(params, "action"))
        self.calls[action] += 1
        # Drawn now, used up (``fire``) only once it reaches the request: no await between
        # the two, so ``times`` holds under concurrent requests.
        plan = self.faults.plan(action, params)
        ip = request.remote or ""
        if self.banned(ip):
            return _json({"result": "error", "message": "IP Banned"}, 403)
        has_key = self._has_access_key(params)
        if not has_key and not self._ip_allowed(ip):
            return _json({"result": "error", "message": f"Invalid IP {ip}"}, 403)
        if plan.invalid_ip:
            if has_key and plan.invalid_ip_bypassable:
                plan = replace(plan, invalid_ip=False)  # the access key bypasses the flap
            elif self.faults.fire(plan):
                return _json({"result": "error", "message": f"Invalid IP {ip}"}, 403)
            else:
                plan = NO_FAULT
        if self.config.access_key and not has_key and scalar(params, "accesskey"):
            return _json({"result": "error", "message": "Invalid Access Key"}, 403)
        if not self._authenticated(params):
            self._failed_login(ip)
            return _json({"result": "error", "message": "Authentication Failed"}, 403)
        if plan.active and not self.faults.fire(plan):
            plan = NO_FAULT
        if plan.latency_s:
            await asyncio.sleep(plan.latency_s)
        if plan.whmcs_error is not None and not plan.whmcs_error_after_commit:
            # answered as the action's own errors are (step 9): XML unless responsetype=json
            return _answer(action, params, {"result": "error", "message": plan.whmcs_error})
        if plan.error_kind and not plan.error_after_commit:
            return _error_page(plan)
        result = dispatch(self.store, params, self.config.context,
                          error_after_commit=plan.whmcs_error
                          if plan.whmcs_error_after_commit else None)
        if plan.error_kind:
            return _error_page(plan)
        if plan.drop:
            if request.transport is not None:
                request.transport.abort()
            raise asyncio.CancelledError  # nothing more to send on a dropped connection
        if plan.hang_s is not None:
            await asyncio.sleep(plan.hang_s)
        return _answer(action, params, result)


_PRETTY = {"addclient": "AddClient", "getclientsdetails": "GetClientsDetails",
           "addorder": "AddOrder", "acceptorder": "AcceptOrder", "cancelorder": "CancelOrder",
           "getorders": "GetOrders", "getclientsproducts": "GetClientsProducts",
           "getproducts": "GetProducts"}


def _answer(action: str, params: dict[str, Any], body: dict[str, Any]) -> web.Response:
    """An API answer: JSON with ``responsetype=json``, otherwise WHMCS's default XML."""
    if scalar(params, "responsetype", "xml").strip().lower() != "json":
        return _xml(action, body)
    return _json(body)


def _json(body: dict[str, Any], status: int = 200) -> web.Response:
    return web.Response(body=json.dumps(body).encode(), status=status,
                        content_type=JSON_TYPE)


def _xml_value(key: str, value: Any) -> str:
    if isinstance(value, dict):
        inner = "".join(_xml_value(k, v) for k, v in value.items())
        return f"<{key}>{inner}</{key}>"
    if isinstance(value, list):
        return "".join(_xml_value(key, v) for v in value)
    return f"<{key}>{escape(str(value))}</{key}>"


def _xml(action: str, body: dict[str, Any]) -> web.Response:
    """WHMCS's default (no ``responsetype=json``) answer: ``<whmcsapi>`` XML."""
    inner = "".join(_xml_value(k, v) for k, v in body.items())
    text = (f'<?xml version="1.0" encoding="utf-8"?>\n<whmcsapi version="8.13.0">'
            f"<action>{escape(action.lower())}</action>{inner}</whmcsapi>")
    return web.Response(text=text, content_type="text/xml")


def _error_page(plan: Plan) -> web.Response:
    if plan.error_kind == "html":
        return web.Response(text=PHP_FATAL, content_type="text/html")
    code = int(plan.error_kind or 500)
    reason = "Service Unavailable" if code == 503 else "Internal Server Error"
    return web.Response(text=HTML_ERROR.format(code=code, reason=reason), status=code,
                        content_type="text/html")
