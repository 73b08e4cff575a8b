"""The ``/__sandbox/...`` admin endpoints and the application/serve wiring.

See :mod:`sandbox.whmcs.server` for the endpoint list. :func:`serve` runs until SIGTERM or
SIGINT, writing the ready file (``{"url", "port", "pid"}``, atomically) once listening.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
from pathlib import Path
from typing import Any

from aiohttp import web

from sandbox.whmcs.actions import ACTIONS
from sandbox.whmcs.faults import FaultSpec
from sandbox.whmcs.server import Sandbox, log

SANDBOX_KEY: web.AppKey[Sandbox] = web.AppKey("sandbox", Sandbox)


def _sb(request: web.Request) -> Sandbox:
    return request.app[SANDBOX_KEY]


async def health(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


def counters_of(sb: Sandbox) -> dict[str, Any]:
    by_marker = sb.store.marker_counts()
    total = sb.store.db.execute("SELECT COUNT(*) FROM orders").fetchone()[0]
    return {"calls": dict(sb.calls), "orders_created": total,
            "orders_by_marker": by_marker,
            "duplicates": {k: v for k, v in by_marker.items() if v > 1}}


async def counters(request: web.Request) -> web.Response:
    return web.json_response(counters_of(_sb(request)))


async def calls(request: web.Request) -> web.Response:
    """Only the call counts: cheap enough to poll while a run is under way (``counters``
    groups every order by its marker)."""
    return web.json_response(dict(_sb(request).calls))


async def counters_reset(request: web.Request) -> web.Response:
    _sb(request).calls.clear()
    return web.json_response({"ok": True})


async def orders(request: web.Request) -> web.Response:
    sb, q = _sb(request), request.query
    filters: dict[str, Any] = {}
    if q.get("sf_order_id"):
        filters["sf_order_id"] = q["sf_order_id"]
    if q.get("userid"):
        filters["userid"] = int(q["userid"])
    if q.get("status"):
        filters["status"] = q["status"]
    total, rows = sb.store.find_orders(filters, int(q.get("start", 0)), int(q.get("limit", 100)))
    keys = ("id", "ordernum", "userid", "date", "amount", "paymentmethod", "invoiceid",
            "status", "notes", "sf_order_id")
    out = []
    for row in rows:
        item = {k: row[k] for k in keys}
        item["serviceids"] = [s["id"] for s in sb.store.order_services(row["id"])]
        out.append(item)
    return web.json_response({"total": total, "orders": out})


async def faults_get(request: web.Request) -> web.Response:
    return web.json_response(_sb(request).faults.describe())


def _check_action(action: Any) -> None:
    """An action the sandbox answers (any case), or ``*``: a spec set for a misspelt one
    (``AddOrders``) would never fire, and nothing would say so."""
    if not isinstance(action, str):
        raise ValueError(f"action: a name is expected, not {action!r}")
    if action.strip().lower() not in (*ACTIONS, "*", ""):
        raise ValueError(f"action: {action!r} is not one the sandbox answers "
                         f"({', '.join(sorted(ACTIONS))}, or *)")


def _fault_request(data: Any) -> tuple[bool, tuple[bool, int | None], dict[str, FaultSpec]]:
    """``replace``, ``(whether seed is given, seed)`` and the specs by action of a POST to
    ``/__sandbox/faults``, every part checked; ``ValueError`` naming what is wrong."""
    if not isinstance(data, dict):
        raise ValueError("a JSON object is expected")
    seed = data.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ValueError(f"seed: a whole number or null is expected, not {seed!r}")
    table = data.get("faults")
    if table is None and "action" in data:
        table = {data["action"]: {k: v for k, v in data.items()
                                  if k not in ("action", "seed", "replace")}}
    if table is not None and not isinstance(table, dict):
        raise ValueError("faults: an object of action → fault spec is expected")
    specs: dict[str, FaultSpec] = {}
    for action, spec in (table or {}).items():
        _check_action(action)
        try:
            specs[action] = FaultSpec.from_dict(spec)
        except ValueError as exc:
            raise ValueError(f"{action}: {exc}") from None
    return bool(data.get("replace")), ("seed" in data, seed), specs


async def faults_set(request: web.Request) -> web.Response:
    """Checks the whole request before changing anything: a 400 leaves the table as it was."""
    sb = _sb(request)
    try:
        replace, (seeded, seed), specs = _fault_request(await request.json())
    except (ValueError, TypeError) as exc:
        return web.json_response({"error": str(exc)}, status=400)
    if replace:
        sb.faults.clear()
    if seeded:
        sb.faults.reseed(seed)
    for action, spec in specs.items():
        sb.faults.set(action, spec)
    return web.json_response(sb.faults.describe())


async def faults_clear(request: web.Request) -> web.Response:
    sb = _sb(request)
    sb.faults.clear(request.query.get("action"))
    return web.json_response(sb.faults.describe())


async def allowed_ips(request: web.Request) -> web.Response:
    sb = _sb(request)
    if request.method == "POST":
        try:
            data = await request.json()
        except ValueError as exc:
            return web.json_response({"error": f"not JSON: {exc}"}, status=400)
        ips = data.get("allowed_ips") if isinstance(data, dict) else None
        # a string (``"10.0.0.5,127.0.0.1"``) was stored as the set of its characters
        if not isinstance(ips, list) or not all(isinstance(ip, str) for ip in ips):
            return web.json_response(
                {"error": f"allowed_ips: a list of strings is expected, not {ips!r}"},
                status=400)
        sb.config.allowed_ips = set(ips)
    return web.json_response({"allowed_ips": sorted(sb.config.allowed_ips)})


_BAN_FIELDS = {"ban_after": int, "ban_window_s": float, "ban_s": float}


async def login_ban(request: web.Request) -> web.Response:
    """The login ban: GET shows it, POST sets ``ban_after``/``ban_window_s``/``ban_s``,
    DELETE lifts every ban and forgets the failed logins."""
    sb = _sb(request)
    if request.method == "DELETE":
        sb.lift_bans()
    elif request.method == "POST":
        try:
            data = await request.json()
            if not isinstance(data, dict):
                raise TypeError("a JSON object is expected")
            unknown = set(data) - set(_BAN_FIELDS)
            if unknown:
                raise ValueError(f"unknown field(s): {', '.join(sorted(unknown))}")
            values = {k: _BAN_FIELDS[k](v) for k, v in data.items()}
            # NaN passes ``v < 0`` (a ban that never ends, or never starts); int(inf) overflows
            if not all(math.isfinite(v) and v >= 0 for v in values.values()):
                raise ValueError("values must be finite and not negative")
        except (ValueError, TypeError, OverflowError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        for key, value in values.items():
            setattr(sb.config, key, value)
    return web.json_response(sb.login_ban())


async def seed_accounts(request: web.Request) -> web.Response:
    sb = _sb(request)
    data = await request.json()
    count = sb.store.seed(int(data.get("accounts", 100)))
    return web.json_response({"clients": count})


def build_app(sb: Sandbox) -> web.Application:
    app = web.Application(client_max_size=4 * 1024 * 1024)
    app[SANDBOX_KEY] = sb
    app.router.add_route("POST", "/includes/api.php", sb.api)
    app.router.add_route("GET", "/includes/api.php", sb.api)
    app.router.add_get("/__sandbox/health", health)
    app.router.add_get("/__sandbox/counters", counters)
    app.router.add_post("/__sandbox/counters/reset", counters_reset)
    app.router.add_get("/__sandbox/calls", calls)
    app.router.add_get("/__sandbox/orders", orders)
    app.router.add_get("/__sandbox/faults", faults_get)
    app.router.add_post("/__sandbox/faults", faults_set)
    app.router.add_delete("/__sandbox/faults", faults_clear)
    app.router.add_route("*", "/__sandbox/allowed-ips", allowed_ips)
    for method in ("GET", "POST", "DELETE"):
        app.router.add_route(method, "/__sandbox/login-ban", login_ban)
    app.router.add_post("/__sandbox/seed", seed_accounts)
    return app


def _write_ready(path: Path, info: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(info))
    os.replace(tmp, path)


async def serve(sb: Sandbox, host: str, port: int, ready_file: Path | None = None) -> None:
    """Listen until SIGTERM/SIGINT; then stop accepting, close the store and return."""
    runner = web.AppRunner(build_app(sb), access_log=None, handle_signals=False,
                            shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024, reuse_address=True)
    await site.start()
    bound = int(runner.addresses[0][1])
    url_host = "127.0.0.1" if host in ("0.0.0.0", "") else host
    url = f"http://{url_host}:{bound}/includes/api.php"
    log.info("WHMCS sandbox listening on %s", url)
    if ready_file is not None:
        _write_ready(ready_file, {"url": url, "port": bound, "pid": os.getpid()})
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        sb.store.close()
        log.info("WHMCS sandbox stopped")
