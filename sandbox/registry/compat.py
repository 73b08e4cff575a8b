"""Can a reader schema read data written with a writer schema? (Avro resolution rules.)

``BACKWARD`` compatibility of a new schema = the new schema (reader) can read data written
with the latest registered one (writer). :func:`can_read` returns the list of problems,
empty when compatible. Covers what this project's schemas use — records, enums, arrays,
maps, unions, fixed, primitives with the spec's promotions, logical types (compared by
their underlying type) — and named-type references. Records, enums and fixed must keep
their (unqualified) name, or list the old full name among their ``aliases``: a rename
without one is refused, as Confluent refuses it (``NAME_MISMATCH``).
"""

from __future__ import annotations

from typing import Any

PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}
COMPLEX = {"record", "error", "enum", "array", "map", "fixed"}
PROMOTIONS = {("int", "long"), ("int", "float"), ("int", "double"), ("long", "float"),
              ("long", "double"), ("float", "double"), ("string", "bytes"),
              ("bytes", "string")}


def _full_name(schema: dict[str, Any], namespace: str | None) -> str:
    name = schema["name"]
    if "." in name:
        return name
    ns = schema.get("namespace", namespace)
    return f"{ns}.{name}" if ns else name


def _collect(schema: Any, namespace: str | None, names: dict[str, Any]) -> None:
    """Index every named type by its full name (for references by name)."""
    if isinstance(schema, list):
        for branch in schema:
            _collect(branch, namespace, names)
    elif isinstance(schema, dict):
        kind = schema.get("type")
        if kind in ("record", "error", "enum", "fixed"):
            full = _full_name(schema, namespace)
            names[full] = schema
            ns = full.rsplit(".", 1)[0] if "." in full else None
            for field in schema.get("fields", []):
                _collect(field["type"], ns, names)
        elif kind == "array":
            _collect(schema["items"], namespace, names)
        elif kind == "map":
            _collect(schema["values"], namespace, names)
        elif isinstance(kind, dict | list):
            _collect(kind, namespace, names)


class _Side:
    def __init__(self, root: Any) -> None:
        self.names: dict[str, Any] = {}
        ns = root.get("namespace") if isinstance(root, dict) else None
        _collect(root, ns, self.names)

    def resolve(self, schema: Any, namespace: str | None) -> tuple[Any, str | None]:
        """Follow name references; unwrap ``{"type": "long", "logicalType": ...}``."""
        while True:
            if isinstance(schema, str) and schema not in PRIMITIVES:
                full = schema if "." in schema or not namespace else f"{namespace}.{schema}"
                target = self.names.get(full) or self.names.get(schema)
                if target is None:
                    return schema, namespace
                schema = target
                namespace = full.rsplit(".", 1)[0] if "." in full else None
                continue
            if isinstance(schema, dict) and not isinstance(schema.get("type"), str | type(None)):
                schema = schema["type"]
                continue
            if isinstance(schema, dict) and schema.get("type") in PRIMITIVES:
                return schema["type"], namespace
            if isinstance(schema, dict) and schema.get("type") not in COMPLEX:
                schema = schema["type"]  # {"type": "some.Named"}: a reference
                continue
            return schema, namespace


def _names_match(r: dict[str, Any], r_ns: str | None, w: dict[str, Any],
                 w_ns: str | None) -> bool:
    """Named types resolve when their unqualified names are equal or the reader has an
    alias naming the writer's full name (an alias without a dot is in the reader's
    namespace), as Avro's ``SchemaCompatibility.schemaNameEquals`` (Confluent's check)."""
    r_full, w_full = _full_name(r, r_ns), _full_name(w, w_ns)
    if r_full.rsplit(".", 1)[-1] == w_full.rsplit(".", 1)[-1]:
        return True
    space = r_full.rsplit(".", 1)[0] if "." in r_full else None
    aliases = {a if "." in a or not space else f"{space}.{a}" for a in r.get("aliases", [])}
    return w_full in aliases


def _kind(schema: Any) -> str:
    if isinstance(schema, str):
        return schema
    if isinstance(schema, list):
        return "union"
    return str(schema.get("type"))


def can_read(reader: Any, writer: Any) -> list[str]:
    """Problems that stop ``reader`` from reading data written with ``writer`` ([] = ok)."""
    r_side, w_side = _Side(reader), _Side(writer)
    r_ns = reader.get("namespace") if isinstance(reader, dict) else None
    w_ns = writer.get("namespace") if isinstance(writer, dict) else None
    problems: list[str] = []
    _check(r_side, reader, r_ns, w_side, writer, w_ns, "", problems, set())
    return problems


def _check(rs: _Side, r: Any, r_ns: str | None, ws: _Side, w: Any, w_ns: str | None,
           path: str, problems: list[str], seen: set[tuple[str, str]]) -> None:
    r, r_ns = rs.resolve(r, r_ns)
    w, w_ns = ws.resolve(w, w_ns)
    rk, wk = _kind(r), _kind(w)
    where = path or "/"
    if wk == "union":
        for branch in w:  # every writer branch must be readable
            _check(rs, r, r_ns, ws, branch, w_ns, path, problems, seen)
        return
    if rk == "union":
        for branch in r:
            sub: list[str] = []
            _check(rs, branch, r_ns, ws, w, w_ns, path, sub, seen)
            if not sub:
                return
        problems.append(f"{where}: reader union has no branch for writer type {wk}")
        return
    if rk != wk:
        if (wk, rk) not in PROMOTIONS:
            problems.append(f"{where}: writer type {wk} cannot be read as {rk}")
        return
    if rk in PRIMITIVES:
        return
    if rk in ("record", "error", "enum", "fixed") and not _names_match(r, r_ns, w, w_ns):
        problems.append(f"{where}: {rk} name {_full_name(r, r_ns)} does not match the "
                        f"writer's {_full_name(w, w_ns)} (no alias of it)")
        return
    if rk in ("record", "error"):
        r_full, w_full = _full_name(r, r_ns), _full_name(w, w_ns)
        if (r_full, w_full) in seen:
            return
        seen = seen | {(r_full, w_full)}
        r_child_ns = r_full.rsplit(".", 1)[0] if "." in r_full else None
        w_child_ns = w_full.rsplit(".", 1)[0] if "." in w_full else None
        # matched by the reader's name or aliases only (the writer's aliases play no part:
        # Avro's resolution, Confluent's check, fastavro)
        w_fields = {f["name"]: f for f in w.get("fields", [])}
        for field in r.get("fields", []):
            names = [field["name"], *field.get("aliases", [])]
            match = next((w_fields[n] for n in names if n in w_fields), None)
            if match is None:
                if "default" not in field:
                    problems.append(f"{path}/{field['name']}: field added without a default")
                continue
            _check(rs, field["type"], r_child_ns, ws, match["type"], w_child_ns,
                   f"{path}/{field['name']}", problems, seen)
    elif rk == "enum":
        missing = set(w.get("symbols", [])) - set(r.get("symbols", []))
        if missing and "default" not in r:
            problems.append(f"{where}: enum symbols removed: {sorted(missing)}")
    elif rk == "array":
        _check(rs, r["items"], r_ns, ws, w["items"], w_ns, f"{path}/[]", problems, seen)
    elif rk == "map":
        _check(rs, r["values"], r_ns, ws, w["values"], w_ns, f"{path}/{{}}", problems, seen)
    elif rk == "fixed" and r.get("size") != w.get("size"):
        problems.append(f"{where}: fixed size {w.get('size')} cannot be read as {r.get('size')}")
