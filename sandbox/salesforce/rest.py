"""The REST API resources under ``/services/data/vXX.X/``, as plain functions.

:func:`call` maps (method, resource path, params, body) to (HTTP status, JSON body) inside
a store transaction the caller commits — so ``composite`` can run its subrequests in one
transaction (``allOrNone``) and the HTTP layer stays thin. Errors are raised as
:class:`~.errors.SfError` and rendered by the caller as Salesforce's JSON error array.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable
from typing import Any

from . import dml, permissions, query_exec
from .core import Sandbox
from .errors import SfError
from .model import OBJECTS, SObject, sobject
from .store import Tx

MAX_COLLECTION = 200
MAX_CHUNKS = 10  # chunks of one type in a mixed sObject Collections call
MAX_COMPOSITE = 25
DEFAULT_BATCH = 2000
#: a query locator and its records stay 2 days after the query ran, its later pages'
#: locators too (Salesforce since the cursor change of API 56.0: "Cursors and their
#: related query results are available for 2 days"; the old 15-minute idle expiry and
#: 10-per-user cap are gone). Then ``nextRecordsUrl`` answers 400 INVALID_QUERY_LOCATOR.
CURSOR_LIFETIME_MS = 2 * 86_400_000
#: the sandbox keeps at most this many open locators (the least recently used goes first):
#: not Salesforce's (it has no cap), a bound on the memory of locators never followed
MAX_CURSORS = 1000
ROLLED_BACK = {"statusCode": "ALL_OR_NONE_OPERATION_ROLLED_BACK",
               "message": "Record rolled back because not all records were valid and the "
                          "request was using AllOrNone header", "fields": []}


def call(sb: Sandbox, user: dict, version: str, method: str, path: str,
         params: dict[str, str], body: Any, tx: Tx, headers: dict[str, str]
         ) -> tuple[int, Any]:
    parts = [p for p in path.strip("/").split("/") if p]
    head = parts[0] if parts else ""
    if not parts and method == "GET":
        sb.counters.count("resources")
        return 200, {name: f"/services/data/v{version}/{name}"
                     for name in ("query", "queryAll", "sobjects", "composite", "limits")}
    if head in ("query", "queryAll") and method == "GET":
        return _query(sb, user, version, parts, params, headers,
                      include_deleted=head == "queryAll")
    if head == "limits" and method == "GET":
        sb.counters.count("limits")
        used, limit = sb.counters.api_used, sb.faults.daily_limit
        return 200, {"DailyApiRequests": {"Max": limit, "Remaining": max(limit - used, 0)}}
    if head == "sobjects":
        return _sobjects(sb, user, version, method, parts[1:], params, body, tx)
    if head == "composite" and len(parts) == 2 and parts[1] == "sobjects":
        return _collection(sb, user, method, body, tx)
    if head == "composite" and len(parts) == 1 and method == "POST":
        from .composite import composite
        return composite(sb, user, version, body, tx, headers)
    raise SfError("NOT_FOUND", "The requested resource does not exist", status=404)


#: child records a subquery answers per parent; more come with ``done`` false and their own
#: ``nextRecordsUrl`` (the worker fails such an Order ``TOO_MANY_ITEMS``, streams.mapping)
CHILD_BATCH = 200


def _query(sb: Sandbox, user: dict, version: str, parts: list[str], params: dict[str, str],
           headers: dict[str, str], include_deleted: bool) -> tuple[int, Any]:
    now = sb.store.now_ms()
    cursors = sb.cursors
    if len(parts) == 2:
        sb.counters.count("query_more")
        cursor = cursors.pop(parts[1], None)  # each locator serves once
        if cursor is None or cursor[2] <= now:
            raise SfError("INVALID_QUERY_LOCATOR", "invalid query locator", status=400)
        rows, total, expires = cursor
    else:
        sb.counters.count("queryAll" if include_deleted else "query")
        text = params.get("q")
        if not text:
            raise SfError("MALFORMED_QUERY", "A query string has to be specified")
        total, rows = query_exec.run(sb.store, text, version, include_deleted=include_deleted,
                                     readable=_readable(sb, user))
        expires = now + CURSOR_LIFETIME_MS
        for row in rows:  # a large child set comes cut, its rest behind its own locator
            for rel, sub in row.items():
                if isinstance(sub, dict) and len(sub.get("records") or []) > CHILD_BATCH:
                    kids = sub["records"]
                    cursor_id = f"01g{secrets.token_hex(6)}-{CHILD_BATCH}"
                    cursors[cursor_id] = (kids[CHILD_BATCH:], len(kids), expires)
                    row[rel] = {**sub, "done": False, "records": kids[:CHILD_BATCH],
                                "nextRecordsUrl": f"/services/data/v{version}/query/{cursor_id}"}
        _bound_cursors(cursors, now)
    batch = DEFAULT_BATCH
    match = re.search(r"batchSize=(\d+)", headers.get("Sforce-Query-Options", ""))
    if match:
        batch = min(max(int(match.group(1)), 200), DEFAULT_BATCH)
    out: dict[str, Any] = {"totalSize": total, "done": len(rows) <= batch,
                           "records": rows[:batch]}
    if len(rows) > batch:
        cursor_id = f"01g{secrets.token_hex(6)}-{batch}"
        cursors[cursor_id] = (rows[batch:], total, expires)
        _bound_cursors(cursors, now)
        out["nextRecordsUrl"] = f"/services/data/v{version}/query/{cursor_id}"
    return 200, out


def _bound_cursors(cursors: dict[str, tuple[list[dict], int, int]], now: int) -> None:
    """Past :data:`MAX_CURSORS` open locators, drop the expired ones, then the least
    recently used (a followed locator is replaced by its next page's, at the end)."""
    if len(cursors) <= MAX_CURSORS:
        return
    for cursor_id in [c for c, (_, _, expires) in cursors.items() if expires <= now]:
        del cursors[cursor_id]
    while len(cursors) > MAX_CURSORS:
        del cursors[next(iter(cursors))]


def _may(sb: Sandbox, user: dict) -> Callable[[str, str], bool]:
    """``may(sObject, op)``: what ``user`` may do by its profile; a user no profile holds
    (the CS agent, the Flow) may do everything."""
    profile = sb.restricted(user)
    return profile.may if profile is not None else lambda _name, _op: True


def _readable(sb: Sandbox, user: dict) -> Callable[[str], bool]:
    """Which sObjects ``user`` may read (see :mod:`.soql` for what the others look like)."""
    may = _may(sb, user)
    return lambda name: may(name, permissions.READ)


def _describe_global(sb: Sandbox, user: dict, version: str) -> dict:
    """Every object ``user`` may read, with what it may do to each (its profile's letters;
    all of them for an unrestricted user)."""
    may = _may(sb, user)
    return {"encoding": "UTF-8", "maxBatchSize": 200, "sobjects": [
        {"name": name, "label": name, "keyPrefix": None,
         "queryable": True, "retrieveable": True,
         "createable": may(name, permissions.CREATE),
         "updateable": may(name, permissions.UPDATE),
         "deletable": may(name, permissions.DELETE),
         "urls": {"sobject": f"/services/data/v{version}/sobjects/{name}"}}
        for name in OBJECTS if may(name, permissions.READ)]}


def _describe(sb: Sandbox, user: dict, obj: SObject) -> dict:
    """One object's describe as ``user`` sees it: a field is createable/updateable only when
    the object is (Salesforce's field-level answer is bounded by the object permission), and
    child relationships to objects it may not read are left out, as those objects are."""
    may = _may(sb, user)
    create, update = may(obj.name, permissions.CREATE), may(obj.name, permissions.UPDATE)
    return {"name": obj.name, "queryable": True, "retrieveable": True, "createable": create,
            "updateable": update, "deletable": may(obj.name, permissions.DELETE), "fields": [
        {"name": f.name, "type": f.type, "updateable": f.updateable and update,
         "createable": f.createable and create, "nillable": not f.required, "length": f.length,
         "precision": f.precision, "scale": f.scale,
         "referenceTo": [f.ref] if f.ref else [], "relationshipName": f.rel,
         "picklistValues": [{"value": v, "label": v, "active": True} for v in f.picklist],
         "restrictedPicklist": f.type == "picklist" and f.restricted}
        for f in obj.fields.values()],
        "childRelationships": [{"relationshipName": rel, "childSObject": child,
                                "field": fk} for rel, (child, fk) in obj.children.items()
                               if may(child, permissions.READ)]}


def _full(record: dict, sobject: str, version: str, fields: str | None) -> dict:
    names = [f.strip() for f in fields.split(",")] if fields else list(record)
    obj = OBJECTS[sobject]
    out: dict[str, Any] = {"attributes": {
        "type": sobject, "url": f"/services/data/v{version}/sobjects/{sobject}/{record['Id']}"}}
    for name in names:
        f = obj.field(name)
        if f is None:
            raise SfError("INVALID_FIELD", f"No such column '{name}' on sobject of type "
                          f"{sobject}", [name])
        out[f.name] = record.get(f.name)
    return out


def _check_columns(records: list[Any]) -> None:
    """A field no record type has refuses the whole collection call, 400 ``INVALID_FIELD``
    ``No such column …``, before anything is saved: Salesforce checks the columns when it
    parses the request, not record by record (answered per record here, the sink's path for
    a field deleted or hidden — ask describe, hold those records — never ran against the
    sandbox). Unknown types and non-objects stay per-record answers."""
    for raw in records:
        known = sobject(_type_of(raw)) if isinstance(raw, dict) and _type_of(raw) else None
        if known is None:
            continue
        for name in raw:
            if name != "attributes" and name.lower() != "id" and known.field(name) is None:
                raise SfError("INVALID_FIELD", f"No such column '{name}' on sobject of type "
                              f"{known.name}", [name])


def _sobjects(sb: Sandbox, user: dict, version: str, method: str, parts: list[str],
              params: dict[str, str], body: Any, tx: Tx) -> tuple[int, Any]:
    if not parts:
        sb.counters.count("describe_global")
        return 200, _describe_global(sb, user, version)
    # an object the profile does not let the user read does not exist for it: its describe
    # and records answer 404 NOT_FOUND as an unknown name does
    obj = dml.resolve_type(parts[0], _readable(sb, user))
    if len(parts) == 2 and parts[1] == "describe" and method == "GET":
        sb.counters.count("describe")
        return 200, _describe(sb, user, obj)
    profile = sb.restricted(user)
    if len(parts) == 1 and method == "POST":
        sb.counters.count("sobject_post")
        _require_dict(body)
        if profile is not None:
            profile.check(obj.name, permissions.CREATE)
        record = dml.create(tx, obj.name, body, user)
        return 201, {"id": record["Id"], "success": True, "errors": []}
    if len(parts) == 2:
        record_id = parts[1]
        if method == "GET":
            sb.counters.count("sobject_get")  # Read: resolve_type checked it
            _, record = dml.existing(tx, obj.name, record_id, single=True)
            return 200, _full(record, obj.name, version, params.get("fields"))
        if method == "PATCH":
            sb.counters.count("sobject_patch")
            _require_dict(body)
            if profile is not None:
                profile.check(obj.name, permissions.UPDATE)
            error = sb.faults.record_error(
                dml.existing(tx, obj.name, record_id, single=True)[1]["Id"])
            if error:
                sb.counters.count(f"injected_{error.code}")
                raise error
            dml.update(tx, obj.name, record_id, body, user)
            return 204, None
        if method == "DELETE":
            sb.counters.count("sobject_delete")
            if profile is not None:
                profile.check(obj.name, permissions.DELETE)
            dml.existing(tx, obj.name, record_id, single=True)  # its 404 answers first
            dml.delete(tx, obj.name, record_id, user)
            return 204, None
    raise SfError("METHOD_NOT_ALLOWED", f"HTTP Method '{method}' not allowed.", status=405)


def _require_dict(body: Any) -> None:
    if not isinstance(body, dict):
        raise SfError("JSON_PARSER_ERROR", "Cannot deserialize instance of record from the "
                      "request body")


def _type_of(record: dict) -> Any:
    """``attributes.type`` of a collection record (None when absent)."""
    return (record.get("attributes") or {}).get("type")


def _check_attributes(records: list[Any]) -> None:
    """Every record's ``attributes`` is an object (or absent) with a text ``type``: as
    Salesforce, which cannot deserialize the body otherwise, refuse the whole call."""
    for record in records:
        if not isinstance(record, dict):
            continue  # answered per record
        attributes = record.get("attributes")
        if attributes is not None and not (
                isinstance(attributes, dict)
                and isinstance(attributes.get("type"), str | None)):
            raise SfError("JSON_PARSER_ERROR", "Cannot deserialize instance of record: "
                          "'attributes' must be an object with a text 'type'")


def _chunks(records: list[Any]) -> int:
    """How many chunks Salesforce makes of a mixed list: a new one at each change of type
    (``{a1, a2, c1, a3}`` is three)."""
    types = [_type_of(r) if isinstance(r, dict) else None for r in records]
    return sum(1 for i, t in enumerate(types) if i == 0 or t != types[i - 1])


def _collection(sb: Sandbox, user: dict, method: str, body: Any, tx: Tx) -> tuple[int, Any]:
    """sObject Collections: PATCH (update) or POST (create) up to 200 mixed records."""
    if method not in ("PATCH", "POST"):
        raise SfError("METHOD_NOT_ALLOWED", f"HTTP Method '{method}' not allowed.", status=405)
    sb.counters.count("composite_sobjects" if method == "PATCH" else "composite_sobjects_create")
    _require_dict(body)
    records = body.get("records")
    if not isinstance(records, list):
        raise SfError("JSON_PARSER_ERROR", "records: a list of records is required")
    if len(records) > MAX_COLLECTION:
        raise SfError("EXCEEDED_ID_LIMIT", "record limit reached. cannot submit more than 200 "
                      "records into this call")
    _check_attributes(records)
    chunks = _chunks(records)
    if chunks > MAX_CHUNKS:
        # Salesforce documents the limit ("a single request can process up to 10 chunks"),
        # not the shape of its answer; the sandbox refuses the whole call with Apex's words
        raise SfError("INVALID_BATCH_REQUEST", f"Cannot have more than {MAX_CHUNKS} chunks in "
                      f"a single operation ({chunks}). Please rearrange the data to reduce "
                      "chunking.")
    _check_columns(records)
    all_or_none = bool(body.get("allOrNone", False))
    profile = sb.restricted(user)
    savepoint = tx.savepoint()
    results: list[dict] = []
    failed = False
    for raw in records:
        try:
            if not isinstance(raw, dict):
                raise SfError("JSON_PARSER_ERROR", "record is not an object")
            type_name = _type_of(raw)
            if not type_name:
                raise SfError("INVALID_TYPE", "No SObject Type defined in attributes")
            fields = {k: v for k, v in raw.items() if k != "attributes"}
            known = sobject(type_name)
            if profile is not None and known is not None:  # an unknown type: dml says so
                # an unreadable type: answered as an unknown one is
                dml.resolve_type(known.name, _readable(sb, user))
                profile.check(known.name,
                              permissions.CREATE if method == "POST" else permissions.UPDATE)
            if method == "POST":
                record = dml.create(tx, type_name, fields, user)
            else:
                record_id = fields.pop("id", None) or fields.pop("Id", None)
                _, current = dml.existing(tx, type_name, str(record_id or ""))
                error = sb.faults.record_error(current["Id"])
                if error:
                    sb.counters.count(f"injected_{error.code}")
                    raise error
                record = dml.update(tx, type_name, current["Id"], fields, user)
            results.append({"id": record["Id"], "success": True, "errors": []})
        except SfError as exc:
            failed = True
            results.append({"success": False, "errors": [exc.record_error()]})
    if failed and all_or_none:
        for result in results:
            if result["success"]:
                result.update(success=False, errors=[dict(ROLLED_BACK)])
                if method == "POST":
                    result.pop("id", None)
        tx.rollback_to(savepoint)
    return 200, results
