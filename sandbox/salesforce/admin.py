"""Admin endpoints under ``/__sandbox`` (no auth: the sandbox is a local test double).

==========================  ======  ===================================================
path                        method  effect
==========================  ======  ===================================================
``/health``, ``/info``      GET     liveness; org id, urls, users, client id
``/seed``                   POST    ``{accounts, orders, broken_every}`` → created orders
``/approve``                POST    ``{count}`` or ``{ids}`` [+ ``username``] → approved ids
``/update``                 POST    ``{type, id, fields[, username, run_flow]}`` as a CS user
                                    (Flow runs unless ``run_flow`` is false: no event)
``/create``                 POST    ``{type, fields[, username]}`` as a CS user → record
``/delete``                 POST    ``{id[, type, username]}`` as a CS user: to the recycle
                                    bin (no Flow runs: it runs on Order saves only)
``/permissions``            GET/POST  read / merge the integration user's profile:
                                    ``{objects: {Name: "CRU"}, events: {topic: "S"}}``;
                                    names canonicalised, the whole body checked first
                                    (400 for an unknown name, key or letter: nothing set)
``/permissions/reset``      POST    back to the requirements' profile (``permissions``)
``/records/{id}``           GET     one record, raw
``/query``                  POST    ``{q}`` → ``{totalSize, records}`` (uncounted)
``/events``                 GET     ``?after=&limit=`` stored events, decoded when possible
``/events/inject``          POST    ``{kind: malformed|unknown_schema|raw}`` → a bad event
                                    (raw: ``fields`` or ``payload_b64``, optional
                                    ``schema_json`` served by GetSchema, ``uuid``)
``/faults``                 GET/POST  read / partially update :class:`~.faults.Faults`
                                    (e.g. ``subscribe_error_calls`` + ``_status`` +
                                    ``_code``: the next Subscribe calls end with a limit
                                    or INTERNAL error; ``delivery_allocation``: Pub/Sub
                                    events deliverable in 24 h, ``daily_limit``: REST calls)
``/faults/reset``           POST    all faults off (held calls are released; the profile
                                    is org configuration, not a fault: it stays)
``/hold/release``           POST    every held collection update proceeds → ``{released}``
``/tokens/expire``          POST    every issued token expires now
``/streams/drop``           POST    every open Subscribe ends with UNAVAILABLE
``/clock/advance``          POST    ``{seconds}`` or ``{hours}``; purges expired events
``/counters``               GET     API calls per kind, daily usage, events delivered in
                                    the last 24 h (``events_delivered_24h``), event counts,
                                    ``held_calls`` (records of each held call not yet done)
``/counters/reset``         POST    zero the counters and the daily (API, delivery) usage
==========================  ======  ===================================================
"""

from __future__ import annotations

import base64
import uuid
from typing import Any

from aiohttp import web

from . import dml, query_exec, seeding
from .core import Sandbox
from .errors import SfError
from .events import PROVISION_SCHEMA, SCHEMAS, TOPIC, register_extra_schema
from .faults import Faults

UNKNOWN_SCHEMA_ID = "UnknownSchemaIdXXXXXXX"


def _sb(request: web.Request) -> Sandbox:
    return request.app["sandbox"]


async def _json(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    body = await request.json()
    return body if isinstance(body, dict) else {}


async def health(request: web.Request) -> web.Response:
    return web.json_response({"ok": True, "org_id": _sb(request).org_id})


async def info(request: web.Request) -> web.Response:
    sb = _sb(request)
    cfg = sb.config
    return web.json_response({
        "org_id": sb.org_id, "login_url": cfg.login_url, "instance_url": cfg.instance_url,
        "client_id": cfg.client_id, "username": cfg.username, "cs_username": cfg.cs_username,
        "users": {name: u["Id"] for name, u in sb.users.items()},
        "topic": TOPIC, "schema_id": PROVISION_SCHEMA.schema_id, "now_ms": sb.store.now_ms()})


async def seed(request: web.Request) -> web.Response:
    body = await _json(request)
    result = seeding.seed(_sb(request), accounts=int(body.get("accounts", 20)),
                          orders=int(body.get("orders", 50)),
                          broken_every=int(body.get("broken_every", 50)))
    return web.json_response(result)


async def approve(request: web.Request) -> web.Response:
    body = await _json(request)
    ids = body.get("ids")
    approved = _sb(request).approve(list(ids) if ids is not None else None,
                                    count=int(body.get("count", 0)),
                                    username=body.get("username"))
    return web.json_response({"approved": approved})


def _fields(body: dict) -> dict[str, Any]:
    """``body["fields"]``: a JSON object of field → value (400 otherwise, not a 500)."""
    fields = body.get("fields") or {}
    if not isinstance(fields, dict):
        raise web.HTTPBadRequest(text="fields: a JSON object of field name → value is required")
    return dict(fields)


async def update(request: web.Request) -> web.Response:
    sb = _sb(request)
    body = await _json(request)
    fields, user = _fields(body), _acting(sb, body)
    with sb.store.transaction() as tx:
        record = dml.update(tx, body.get("type"), str(body.get("id", "")), fields, user,
                            run_flow=bool(body.get("run_flow", True)))
    return web.json_response(record)


def _acting(sb: Sandbox, body: dict) -> dict:
    username = body.get("username") or sb.config.cs_username
    return sb.users.get(username) or sb.ensure_user(username)


async def create(request: web.Request) -> web.Response:
    sb = _sb(request)
    body = await _json(request)
    fields, user = _fields(body), _acting(sb, body)
    with sb.store.transaction() as tx:
        made = dml.create(tx, str(body.get("type") or ""), fields, user)
    return web.json_response(made)


async def delete(request: web.Request) -> web.Response:
    sb = _sb(request)
    body = await _json(request)
    user = _acting(sb, body)
    with sb.store.transaction() as tx:
        dml.delete(tx, body.get("type"), str(body.get("id", "")), user)
    return web.json_response({"deleted": str(body.get("id", ""))})


async def permissions(request: web.Request) -> web.Response:
    sb = _sb(request)
    if request.method == "POST":
        try:  # the body as sent (not _json's {} for a non-object): Profile.update refuses it
            sb.profile.update(await request.json() if request.can_read_body else {})
        except (ValueError, TypeError) as exc:
            raise web.HTTPBadRequest(text=str(exc)) from exc
    return web.json_response(sb.profile.as_dict())


async def permissions_reset(request: web.Request) -> web.Response:
    sb = _sb(request)
    sb.profile.reset()
    return web.json_response(sb.profile.as_dict())


async def record(request: web.Request) -> web.Response:
    found = _sb(request).store.get(request.match_info["id"])
    if found is None:
        raise SfError("NOT_FOUND", "The requested resource does not exist", status=404)
    return web.json_response(found)


async def query(request: web.Request) -> web.Response:
    sb = _sb(request)
    body = await _json(request)
    total, rows = query_exec.run(sb.store, str(body.get("q", "")), "62.0")
    return web.json_response({"totalSize": total, "done": True, "records": rows})


async def events(request: web.Request) -> web.Response:
    sb = _sb(request)
    after = int(request.query.get("after", "0"))
    limit = int(request.query.get("limit", "100"))
    out = []
    for ev in sb.store.events_after(TOPIC, after, limit):
        decoded: Any = None
        schema = SCHEMAS.get(ev.schema_id)
        if schema is not None:
            try:
                decoded = schema.decode(ev.payload)
            except Exception:  # noqa: BLE001 - malformed payloads are shown as undecodable
                decoded = None
        out.append({"replay": ev.replay, "uuid": ev.uuid, "schema_id": ev.schema_id,
                    "created_ms": ev.created_ms, "payload": decoded})
    return web.json_response({"events": out, "purged_upto": sb.store.purged_upto})


async def inject_event(request: web.Request) -> web.Response:
    sb = _sb(request)
    body = await _json(request)
    kind = body.get("kind", "malformed")
    now = sb.store.now_ms()
    if kind == "malformed":
        schema_id, payload = PROVISION_SCHEMA.schema_id, b"\xff\xff\xff\xff\x0fnot-avro"
    elif kind == "unknown_schema":
        schema_id = UNKNOWN_SCHEMA_ID
        payload = PROVISION_SCHEMA.encode({"CreatedDate": now, "CreatedById": "005000000000000AAA",
                                           "OrderId__c": body.get("order_id")})
    elif kind == "raw":
        schema_id, payload = _raw_event(body, now)
    else:
        raise web.HTTPBadRequest(text=f"unknown kind {kind!r}")
    event_uuid = str(body.get("uuid") or uuid.uuid4())
    with sb.store.transaction() as tx:
        tx.add_event(TOPIC, event_uuid, schema_id, payload, now)
    return web.json_response({"uuid": event_uuid, "schema_id": schema_id})


def _raw_event(body: dict[str, Any], now: int) -> tuple[str, bytes]:
    """A hand-made event: ``payload_b64`` verbatim, or ``fields`` Avro-encoded with
    ``schema_json`` (registered for GetSchema, even when it is not valid Avro) or the topic's
    schema; ``schema_id`` overrides the id the event carries."""
    schema = PROVISION_SCHEMA
    schema_id = schema.schema_id
    if body.get("schema_json") is not None:
        schema_id, parsed = register_extra_schema(str(body["schema_json"]))
        schema = parsed or schema
    if body.get("payload_b64") is not None:
        payload = base64.b64decode(body["payload_b64"])
    else:
        fields = {"CreatedDate": now, "CreatedById": "005000000000000AAA",
                  **dict(body.get("fields") or {})}
        try:
            payload = schema.encode(fields)
        except Exception as exc:  # noqa: BLE001 - report what fastavro refused
            raise web.HTTPBadRequest(text=f"cannot encode fields: {exc}") from exc
    return str(body.get("schema_id") or schema_id), payload


async def faults(request: web.Request) -> web.Response:
    sb = _sb(request)
    if request.method == "POST":
        try:
            sb.faults.update(await _json(request))
        except (ValueError, TypeError) as exc:
            raise web.HTTPBadRequest(text=str(exc)) from exc
    return web.json_response(sb.faults.as_dict())


async def faults_reset(request: web.Request) -> web.Response:
    sb = _sb(request)
    sb.faults.update({"rest_latency_ms": 0, "grpc_latency_ms": 0, "rest_503_rate": 0,
                      "rest_hang_rate": 0, "rest_hang_s": 0,
                      "lock_row_rate": 0, "record_errors": {}, "keepalives_paused": False,
                      "keepalives_hold_position": False,
                      "daily_limit": sb.config.daily_limit,
                      "delivery_allocation": sb.config.delivery_allocation,
                      "hold_collection_calls": 0,
                      "subscribe_error_calls": 0,
                      "subscribe_error_status": Faults.subscribe_error_status,
                      "subscribe_error_code": Faults.subscribe_error_code})
    sb.release_held()
    return web.json_response(sb.faults.as_dict())


async def release_held(request: web.Request) -> web.Response:
    return web.json_response({"released": _sb(request).release_held()})


async def expire_tokens(request: web.Request) -> web.Response:
    return web.json_response({"expired": _sb(request).store.expire_tokens()})


async def drop_streams(request: web.Request) -> web.Response:
    return web.json_response({"dropped": _sb(request).drop_streams()})


async def advance_clock(request: web.Request) -> web.Response:
    sb = _sb(request)
    body = await _json(request)
    seconds = float(body.get("seconds", 0)) + float(body.get("hours", 0)) * 3600
    now = sb.store.advance_clock(seconds)
    return web.json_response({"now_ms": now, "purged": sb.purge()})


async def counters(request: web.Request) -> web.Response:
    sb = _sb(request)
    snap = sb.counters.snapshot()
    snap.update(daily_limit=sb.faults.daily_limit,
                delivery_allocation=sb.faults.delivery_allocation, events_stored=sb.store.event_count(),
                last_replay=sb.store.last_replay, open_streams=len(sb.streams),
                held_calls=list(sb.held.values()))
    return web.json_response(snap)


async def counters_reset(request: web.Request) -> web.Response:
    _sb(request).counters.reset()
    return web.json_response({"ok": True})


def add_routes(app: web.Application, prefix: str) -> None:
    r = app.router
    r.add_get(prefix + "/health", health)
    r.add_get(prefix + "/info", info)
    r.add_post(prefix + "/seed", seed)
    r.add_post(prefix + "/approve", approve)
    r.add_post(prefix + "/update", update)
    r.add_post(prefix + "/create", create)
    r.add_post(prefix + "/delete", delete)
    r.add_route("*", prefix + "/permissions", permissions)
    r.add_post(prefix + "/permissions/reset", permissions_reset)
    r.add_get(prefix + "/records/{id}", record)
    r.add_post(prefix + "/query", query)
    r.add_get(prefix + "/events", events)
    r.add_post(prefix + "/events/inject", inject_event)
    r.add_route("*", prefix + "/faults", faults)
    r.add_post(prefix + "/faults/reset", faults_reset)
    r.add_post(prefix + "/hold/release", release_held)
    r.add_post(prefix + "/tokens/expire", expire_tokens)
    r.add_post(prefix + "/streams/drop", drop_streams)
    r.add_post(prefix + "/clock/advance", advance_clock)
    r.add_get(prefix + "/counters", counters)
    r.add_post(prefix + "/counters/reset", counters_reset)
