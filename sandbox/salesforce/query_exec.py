"""Evaluate a parsed SOQL :class:`~.soql.Query` and shape rows as the REST API does.

Rows carry ``attributes`` {type, url}; parent paths become nested objects (``null`` when
the parent is missing); child subqueries become ``{totalSize, done, records}`` or
``null`` when empty. A top-level ``Id = ...`` / ``Id IN (...)`` conjunct is used as an
index, so the pipeline's lookups by id stay fast on large orgs.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from . import soql
from .soql import Path, Query


def run(store: Any, text: str, version: str, *, include_deleted: bool = False,
        readable: Callable[[str], bool] | None = None) -> tuple[int, list[dict]]:
    """Run SOQL ``text``; returns (totalSize, shaped records). ``readable`` (sObject name →
    bool): the objects the querying user may read, every one when None (see :mod:`.soql`)."""
    q = soql.parse(text, store.now_ms(), readable)
    rows = _select(store, q, None, include_deleted)
    if q.count:
        return len(rows), []
    return len(rows), [_shape(store, q, rec, version, include_deleted) for rec in rows]


def _id_hint(where: Any) -> list[str] | None:
    terms = where[1] if isinstance(where, tuple) and where[0] == "and" else [where]
    for term in terms:
        if not isinstance(term, tuple) or term[1:2] == () or not isinstance(term[1], Path):
            continue
        path = term[1]
        if path.rels or path.leaf.name != "Id":
            continue
        if term[0] == "cmp" and term[2] == "=" and isinstance(term[3], str):
            return [term[3]]
        if term[0] == "in" and not term[3]:
            return [v for v in term[2] if isinstance(v, str)]
    return None


def _select(store: Any, q: Query, pool: list[str] | None, include_deleted: bool) -> list[dict]:
    table = store.by_type[q.obj.name]
    if pool is None:
        pool = _id_hint(q.where)
    if pool is not None:
        candidates = [table[i] for i in dict.fromkeys(pool) if i in table]
    else:
        candidates = list(table.values())
    rows = [r for r in candidates if (include_deleted or not r.get("IsDeleted"))
            and (q.where is None or _match(store, q.where, r))]
    for path, desc, nulls_last in reversed(q.order):
        present = [r for r in rows if path.value(store, r) is not None]
        missing = [r for r in rows if path.value(store, r) is None]
        present.sort(key=lambda r, p=path: _sort_key(p.value(store, r)), reverse=desc)
        rows = present + missing if nulls_last else missing + present
    rows = rows[q.offset:]
    return rows[:q.limit] if q.limit is not None else rows


def _sort_key(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


def _match(store: Any, node: Any, rec: dict) -> bool:
    kind = node[0]
    if kind == "and":
        return all(_match(store, n, rec) for n in node[1])
    if kind == "or":
        return any(_match(store, n, rec) for n in node[1])
    if kind == "not":
        return not _match(store, node[1], rec)
    value = node[1].value(store, rec)
    if kind == "in":
        hit = any(_compare(value, "=", lit) for lit in node[2])
        return (not hit) if node[3] else hit
    return _compare(value, node[2], node[3])


def _compare(value: Any, op: str, lit: Any) -> bool:
    if isinstance(lit, tuple):  # ("range", lo, hi): a date literal such as TODAY
        if value is None:
            return op == "!="
        lo, hi = lit[1], lit[2]
        inside = lo <= value < hi
        return {"=": inside, "!=": not inside, ">": value >= hi, ">=": value >= lo,
                "<": value < lo, "<=": value < hi}.get(op, False)
    if lit is None or value is None:
        if op == "=":
            return value is None and lit is None
        if op == "!=":
            return (value is None) != (lit is None)
        return False
    if op == "LIKE":
        if isinstance(lit, re.Pattern):  # a text pattern, escapes applied (see .soql)
            return lit.fullmatch(str(value)) is not None
        pattern = "".join(".*" if c == "%" else "." if c == "_" else re.escape(c)
                          for c in str(lit))
        return re.fullmatch(pattern, str(value), re.I | re.S) is not None
    a, b = value, lit
    if isinstance(a, bool) or isinstance(b, bool):
        a, b = a is True or str(a).lower() == "true", b is True or str(b).lower() == "true"
    elif isinstance(a, int | float) or isinstance(b, int | float):
        try:
            a, b = float(a), float(b)
        except (TypeError, ValueError):
            return op == "!="
    else:
        a, b = str(a).lower(), str(b).lower()
    if op == "=":
        return a == b
    if op == "!=":
        return a != b
    return {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[op]


def _attributes(sobject: str, record_id: str, version: str) -> dict:
    return {"type": sobject, "url": f"/services/data/v{version}/sobjects/{sobject}/{record_id}"}


def _shape(store: Any, q: Query, rec: dict, version: str, include_deleted: bool) -> dict:
    out: dict[str, Any] = {"attributes": _attributes(q.obj.name, rec["Id"], version)}
    for path in q.paths:
        target, cur = out, rec
        for ref in path.rels:
            parent_id = cur.get(ref.name)
            cur = store.get(parent_id) if parent_id else None
            rel = ref.rel or ref.name
            if rel not in target:
                target[rel] = None if cur is None else {
                    "attributes": _attributes(ref.ref or "", cur["Id"], version)}
            if target[rel] is None:
                break
            target = target[rel]
        else:
            target[path.leaf.name] = cur.get(path.leaf.name)
    for rel, child_type, fk, sub in q.subqueries:
        kids = _select(store, sub, store.child_ids(child_type, fk, rec["Id"]), include_deleted)
        out[rel] = {"totalSize": len(kids), "done": True, "records": [
            _shape(store, sub, kid, version, include_deleted) for kid in kids]} if kids else None
    return out
