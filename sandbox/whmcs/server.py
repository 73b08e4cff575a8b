"""The aiohttp application: ``POST /includes/api.php`` plus the ``/__sandbox/...`` admin API.

Request handling order for the API (mirrors WHMCS, then the faults):

1. parse the form body (and query string) into PHP-style params; count the call;
2. fault latency; "Invalid IP" flap;
3. IP allow-list — skipped when ``accesskey`` matches — answering 403
   ``{"result":"error","message":"Invalid IP <ip>"}``;
4. credentials, as WHMCS takes them — 403 ``Authentication Failed`` otherwise: the API
   credential as ``identifier`` + ``secret``, or the same pair in ``username`` +
   ``password`` (WHMCS's "forwards compatibility" for integrations written for login
   credentials), or an admin's login credentials — ``username`` + the MD5 hex of the
   password — when the sandbox is given an admin (``--admin-username``);
5. pre-commit faults (HTTP 500/503/HTML page, chosen WHMCS error);
6. the action (commits its writes);
7. post-commit faults: commit-then-hang (delay or dropped connection), errors-after-commit;
8. the answer: JSON with ``responsetype=json``, otherwise WHMCS's default XML
   (``<whmcsapi>``) — auth and IP refusals are always JSON here.

Admin endpoints (JSON, no auth — the sandbox listens on localhost):

- ``GET /__sandbox/health`` → ``{"ok": true}``
- ``GET /__sandbox/counters`` → ``calls`` per action, ``orders_created``,
  ``orders_by_marker`` (Salesforce Order id → WHMCS orders), ``duplicates`` (markers with
  more than one order); ``POST /__sandbox/counters/reset`` zeroes the call counts.
- ``GET /__sandbox/calls`` → the call counts alone (``{"AddOrder": n, ...}``), cheap to poll.
- ``GET /__sandbox/orders?sf_order_id=&userid=&status=&limit=`` → ``{"orders": [...]}``
- ``GET /__sandbox/faults``; ``POST /__sandbox/faults`` with ``{"action": "AddOrder"|"*",
  ...FaultSpec fields}`` or ``{"faults": {action: spec, ...}, "seed": n, "replace": bool}``;
  ``DELETE /__sandbox/faults[?action=AddOrder]`` clears.
- ``GET/POST /__sandbox/allowed-ips`` (``{"allowed_ips": ["127.0.0.1", ...]}``, ``"*"`` = any)
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
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from xml.sax.saxutils import escape

from aiohttp import web

from sandbox.whmcs.actions import Context, dispatch
from sandbox.whmcs.faults import Faults, Plan
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


class Sandbox:
    """State shared by the handlers: the store, config, faults and counters."""

    def __init__(self, store: Store, config: Config, faults: Faults | None = None) -> None:
        self.store = store
        self.config = config
        self.faults = faults or Faults()
        self.calls: Counter[str] = Counter()
        self._names: dict[str, str] = {}

    def action_name(self, raw: str) -> str:
        """The action as WHMCS spells it (``addorder`` → ``AddOrder``) for the counters."""
        name = self._names.get(raw)
        if name is None:
            name = _PRETTY.get(raw.strip().lower(), raw.strip() or "(none)")
            if len(self._names) < 1000:
                self._names[raw] = name
        return name

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
        plan = self.faults.plan(action, params)
        if plan.latency_s:
            await asyncio.sleep(plan.latency_s)
        ip = request.remote or ""
        has_key = self._has_access_key(params)
        flap = plan.invalid_ip and not (has_key and plan.invalid_ip_bypassable)
        if flap or (not has_key and not self._ip_allowed(ip)):
            return _json({"result": "error", "message": f"Invalid IP {ip}"}, 403)
        if not self._authenticated(params):
            return _json({"result": "error", "message": "Authentication Failed"}, 403)
        if plan.whmcs_error and not plan.whmcs_error_after_commit:
            return _json({"result": "error", "message": plan.whmcs_error})
        if plan.error_kind and not plan.error_after_commit:
            return _error_page(plan)
        result = dispatch(self.store, params, self.config.context,
                          error_after_commit=plan.whmcs_error)
        if plan.error_kind:
            return _error_page(plan)
        if plan.drop:
            if request.transport is not None:
                request.transport.abort()
            raise asyncio.CancelledError  # nothing more to send on a dropped connection
        if plan.hang_s is not None:
            await asyncio.sleep(plan.hang_s)
        if scalar(params, "responsetype", "xml").strip().lower() != "json":
            return _xml(action, result)
        return _json(result)


_PRETTY = {"addclient": "AddClient", "getclientsdetails": "GetClientsDetails",
           "addorder": "AddOrder", "acceptorder": "AcceptOrder", "cancelorder": "CancelOrder",
           "getorders": "GetOrders", "getclientsproducts": "GetClientsProducts",
           "getproducts": "GetProducts"}


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
