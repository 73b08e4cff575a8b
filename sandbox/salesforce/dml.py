"""Create / update / delete with Salesforce's validation, inside a :class:`~.store.Tx`.

Each function validates everything first — field types, required fields, then the org's
validation rules (:mod:`.validation`) — and raises :class:`~.errors.SfError` (with the
errorCode Salesforce would answer) before staging anything, so a failed record leaves
the transaction untouched. Order saves run the approval Flow (:mod:`.flow`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import flow, ids, validation
from .errors import SfError
from .model import SObject, coerce, format_datetime, sobject
from .store import Tx

_IGNORED = {"attributes"}


def resolve_type(name: str, readable: Callable[[str], bool] | None = None) -> SObject:
    """The sObject ``name`` or 404 ``NOT_FOUND``; also for one the user may not read
    (``readable``, see :mod:`.permissions`): to that user it does not exist."""
    obj = sobject(name) if name else None
    if obj is None or (readable is not None and not readable(obj.name)):
        raise SfError("NOT_FOUND", "The requested resource does not exist", status=404)
    return obj


def _values(tx: Tx, obj: SObject, fields: dict[str, Any], creating: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in fields.items():
        if key in _IGNORED or (not creating and key.lower() == "id"):
            continue
        f = obj.field(key)
        if f is None:
            raise SfError("INVALID_FIELD",
                          f"No such column '{key}' on sobject of type {obj.name}", [key])
        if not (f.createable if creating else f.updateable):
            raise SfError("INVALID_FIELD_FOR_INSERT_UPDATE",
                          f"Unable to create/update fields: {f.name}. Please check the security "
                          "settings of this field and verify that it is read/write for your "
                          "profile or permission set.", [f.name])
        coerced = coerce(obj, f, value)
        if f.type == "reference" and coerced is not None:
            target = tx.get(coerced)
            if target is None or ids.prefix_type(coerced) != f.ref:
                raise SfError("INVALID_CROSS_REFERENCE_KEY",
                              f"invalid cross reference id: {value}", [f.name])
        out[f.name] = coerced
    return out


def _check_required(obj: SObject, record: dict) -> None:
    missing = [f.name for f in obj.fields.values() if f.required and record.get(f.name) is None]
    if missing:
        raise SfError("REQUIRED_FIELD_MISSING",
                      f"Required fields are missing: [{', '.join(missing)}]", missing)


def _stamp(tx: Tx, record: dict, user_id: str) -> None:
    now = format_datetime(tx.store.now_ms())
    record["LastModifiedDate"] = now
    record["SystemModstamp"] = now
    record["LastModifiedById"] = user_id


def create(tx: Tx, type_name: str, fields: dict[str, Any], user: dict) -> dict:
    """Validate and stage a new record; returns it (with its new ``Id``)."""
    obj = resolve_type(type_name)
    values = _values(tx, obj, fields, creating=True)
    record: dict[str, Any] = {f: None for f in obj.fields}
    record.update(values)
    _check_required(obj, record)
    validation.check(obj.name, {}, record)
    record["Id"] = tx.store.new_id(obj.name, tx)
    record["IsDeleted"] = False
    record["CreatedDate"] = format_datetime(tx.store.now_ms())
    record["CreatedById"] = user["Id"]
    if obj.autonumber:
        field_name, width = obj.autonumber
        record[field_name] = tx.store.autonumber(obj.name, int(width), tx)
    _stamp(tx, record, user["Id"])
    if obj.name == "Order":
        flow.run(tx, {}, record, user)
    tx.put(obj.name, record)
    return record


def existing(tx: Tx, type_name: str | None, record_id: str, *,
             single: bool = False) -> tuple[SObject, dict]:
    """The live record ``record_id`` (of ``type_name`` when given) or the fitting error.

    An id of another object than ``type_name``: 404 ``NOT_FOUND`` for a single-record
    resource (``single``, ``/sobjects/Order/<an Account id>``); the per-record
    ``INVALID_CROSS_REFERENCE_KEY`` otherwise (sObject Collections, the admin API)."""
    rid = ids.to18(str(record_id)) if record_id else None
    if rid is None:
        raise SfError("MALFORMED_ID", f"malformed id {record_id}", ["Id"])
    current = tx.get(rid)
    rtype = ids.prefix_type(rid)
    if type_name is not None:
        obj = resolve_type(type_name)
        if rtype != obj.name:
            message = ("Provided external ID field does not exist or is not accessible: "
                       f"{record_id}")
            if single:
                raise SfError("NOT_FOUND", message, status=404)
            raise SfError("INVALID_CROSS_REFERENCE_KEY", message, ["Id"], status=404)
    if current is None or rtype is None:
        raise SfError("NOT_FOUND", "The requested resource does not exist", status=404)
    if current.get("IsDeleted"):
        raise SfError("ENTITY_IS_DELETED", "entity is deleted", [], status=404)
    return resolve_type(rtype), current


def update(tx: Tx, type_name: str | None, record_id: str, fields: dict[str, Any],
           user: dict, *, run_flow: bool = True) -> dict:
    """Validate and stage an update; returns the new record. ``run_flow=False`` (the admin
    API's data faults only) saves an Order without the approval Flow: no event is published,
    as when Salesforce loses one."""
    obj, current = existing(tx, type_name, record_id)
    values = _values(tx, obj, fields, creating=False)
    record = dict(current)
    record.update(values)
    _check_required(obj, record)
    validation.check(obj.name, current, record)
    _stamp(tx, record, user["Id"])
    if obj.name == "Order" and run_flow:
        flow.run(tx, current, record, user)
    tx.put(obj.name, record)
    return record


def delete(tx: Tx, type_name: str | None, record_id: str, user: dict) -> None:
    """Soft-delete (to the recycle bin): later access answers ``ENTITY_IS_DELETED``."""
    obj, current = existing(tx, type_name, record_id)
    record = dict(current, IsDeleted=True)
    _stamp(tx, record, user["Id"])
    tx.put(obj.name, record)
