"""The HTTP side: REST under ``/services/data``, OAuth under ``/services/oauth2``, admin.

A middleware applies the REST faults (latency, random 503; a held collection update
waits in :func:`_data` until released), renders
:class:`~.errors.SfError` as Salesforce's JSON error array (any other exception as a 500
``UNKNOWN_EXCEPTION`` one, its traceback logged), and stamps
``Sforce-Limit-Info: api-usage=used/limit`` on every response except ``/``. Each
``/services/data/vXX.X/...`` request is one API call against the daily limit (a
``composite`` with 25 subrequests too) and runs in one store transaction.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from typing import Any

from aiohttp import web

from . import admin, oauth, rest
from .core import Sandbox
from .errors import SfError

ADMIN_PREFIX = "/__sandbox"
log = logging.getLogger(__name__)


@web.middleware
async def _middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    sb: Sandbox = request.app["sandbox"]
    path = request.path
    is_admin = path.startswith(ADMIN_PREFIX)
    response: web.StreamResponse
    try:
        if not is_admin and path != "/":
            if sb.faults.rest_latency_ms:
                await asyncio.sleep(sb.faults.rest_latency_ms / 1000)
            hang_s = sb.faults.rest_hang()
            if hang_s:
                sb.counters.count("injected_hang")
                await request.read()  # received in full, then slow to be processed:
                await asyncio.sleep(hang_s)  # handled after the caller may have given up
            if sb.faults.rest_unavailable():
                sb.counters.count("injected_503")
                raise SfError("SERVER_UNAVAILABLE", "Service temporarily unavailable",
                              status=503)
        response = await handler(request)
    except SfError as exc:
        response = web.json_response(exc.rest_body(), status=exc.status)
    except web.HTTPNotFound:
        response = web.json_response(SfError(
            "NOT_FOUND", "The requested resource does not exist").rest_body(), status=404)
    except web.HTTPMethodNotAllowed:
        response = web.json_response(SfError(
            "METHOD_NOT_ALLOWED", f"HTTP Method '{request.method}' not allowed.").rest_body(),
            status=405)
    except web.HTTPException as exc:  # aiohttp's own answers (413 too large, ...) stay as
        if path != "/" and not is_admin:  # they are, with the header every API answer has
            exc.headers["Sforce-Limit-Info"] = sb.limit_info()
        raise
    except Exception:
        # a bug (or input no check foresaw): Salesforce's shape, not aiohttp's plain-text 500
        error_id = secrets.token_hex(4)
        log.exception("unexpected error (ErrorId %s) on %s %s", error_id, request.method, path)
        response = web.json_response(SfError(
            "UNKNOWN_EXCEPTION", "An unexpected error occurred. Please include this ErrorId "
            f"if you contact support: {error_id}").rest_body(), status=500)
    if path != "/" and not is_admin:
        response.headers["Sforce-Limit-Info"] = sb.limit_info()
    return response


def _not_json(token: str) -> Any:
    """``NaN``, ``Infinity``, ``-Infinity``: Python's json takes them, JSON (and Salesforce's
    parser) does not — a body with one is a ``JSON_PARSER_ERROR``, never a stored NaN."""
    raise ValueError(f"Non-standard token '{token}': not a JSON number")


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() in ("bearer", "oauth") and value else None


async def _data(request: web.Request) -> web.Response:
    sb: Sandbox = request.app["sandbox"]
    version = request.match_info["version"]
    if version not in sb.config.api_versions:
        raise SfError("NOT_FOUND", "The requested resource does not exist", status=404)
    user = sb.user_for_token(_bearer(request))
    if not sb.counters.use_api(sb.store.now_ms(), sb.faults.daily_limit):
        sb.counters.count("limit_exceeded")
        raise SfError("REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded.", status=403)
    body = None
    if request.body_exists:  # read already (and cached) when the call hung first
        raw = await request.read()
        if raw:
            try:
                body = json.loads(raw, parse_constant=_not_json)
            except ValueError as exc:
                raise SfError("JSON_PARSER_ERROR", f"Unexpected character in request body: "
                              f"{exc}") from exc
    headers = dict(request.headers)
    tail = request.match_info.get("tail", "")
    held = None
    if request.method == "PATCH" and tail.strip("/") == "composite/sobjects":
        records = body.get("records") if isinstance(body, dict) else None
        held = sb.take_hold(len(records) if isinstance(records, list) else 0)
        if held is not None:
            await sb.wait_release()
    try:
        with sb.store.transaction() as tx:
            status, payload = rest.call(sb, user, version, request.method, tail,
                                        dict(request.query), body, tx, headers)
    finally:
        if held is not None:
            sb.held.pop(held, None)
    if status == 204:
        return web.Response(status=204)
    return web.json_response(payload, status=status)


async def _versions(request: web.Request) -> web.Response:
    sb: Sandbox = request.app["sandbox"]
    return web.json_response([{"label": f"v{v}", "url": f"/services/data/v{v}", "version": v}
                              for v in sb.config.api_versions])


async def _root(request: web.Request) -> web.Response:
    return web.Response(text="Salesforce sandbox (sfprov)\n")


def make_app(sb: Sandbox) -> web.Application:
    app = web.Application(middlewares=[_middleware], client_max_size=32 * 1024 * 1024)
    app["sandbox"] = sb
    app.router.add_get("/", _root)
    app.router.add_post("/services/oauth2/token", oauth.token)
    app.router.add_route("*", "/services/oauth2/userinfo", oauth.userinfo)
    app.router.add_get("/services/data", _versions)
    app.router.add_get("/services/data/", _versions)
    app.router.add_route("*", r"/services/data/v{version:\d+\.\d}", _data)
    app.router.add_route("*", r"/services/data/v{version:\d+\.\d}/{tail:.*}", _data)
    admin.add_routes(app, ADMIN_PREFIX)
    return app
