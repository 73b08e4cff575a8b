r"""A SOQL subset, parsed and evaluated against the in-memory :class:`~.store.Store`.

Supported: ``SELECT`` field lists, parent paths (``Account.WH_Account__c``,
``Product2.Item_Class__c`` inside a child subquery), child subqueries
``(SELECT ... FROM OrderItems [WHERE ...] [ORDER BY ...] [LIMIT n])``, ``COUNT()``;
``WHERE`` with ``= != <> < <= > >= LIKE IN NOT IN``, ``AND``/``OR``/``NOT`` and
parentheses; literals: strings, numbers, ``true``/``false``/``null``, dates, datetimes,
``TODAY``, ``YESTERDAY``, ``TOMORROW``, ``LAST_N_DAYS:n``, ``NEXT_N_DAYS:n``;
``ORDER BY`` (ASC/DESC, NULLS FIRST/LAST; nulls come first unless ``NULLS LAST``, DESC
too), ``LIMIT``, ``OFFSET``. Text comparisons are case-insensitive, ids match in 15- or
18-character form, and ``!=`` matches nulls — as in Salesforce. Anything else is
``MALFORMED_QUERY``; unknown objects/fields are ``INVALID_TYPE``/``INVALID_FIELD`` with
Salesforce's wording.

Literals as Salesforce reads them: ``NEXT_N_DAYS:n`` starts at 00:00 tomorrow (today is
not in it), ``LAST_N_DAYS:n`` ends with today. A date or datetime that is not one
(``2025-13-45``, year 0, a range past year 9999) is ``MALFORMED_QUERY``. A string takes
the escapes ``\n \r \t \b \f \" \' \\ \uXXXX``; ``\_`` and ``\%`` only in a ``LIKE``
pattern, where they match ``_`` and ``%`` themselves; any other backslash is
``MALFORMED_QUERY``. (The wording of these MALFORMED_QUERY messages is unverified.)

A filter value must suit its field's type, as Salesforce checks before it runs anything
(400 ``INVALID_QUERY_FILTER_OPERATOR``): a number field takes an unquoted number (``'5'``
is refused), a text, picklist, id or reference field a quoted string (``5`` is refused),
and an id or reference field only a 15- or 18-character id (``'abc'``: "invalid ID field");
``LIKE`` on an id field is refused too ("invalid operator on id field"). A date field takes
a date (``2025-01-31``) and a datetime field a datetime (``2025-01-31T00:00:00Z``), both
unquoted, or a date word (``TODAY``, ``LAST_N_DAYS:n``): anything else — a date on a
datetime field too — is refused with Salesforce's words ("value of filter criterion for
field 'CreatedDate' must be of type dateTime and should not be enclosed in quotes").
An 18-character id whose case checksum is wrong, and ``''``, are taken (they match nothing):
what an org answers to them is unverified.

An object the user may not read is, to its queries, an object that does not exist — as in
an org, whose schema a user only sees through their profile: ``FROM`` it is
``INVALID_TYPE`` (not supported), a parent path through it (``Product2.Name``) is
``INVALID_FIELD`` (didn't understand relationship), a child subquery of it is
``INVALID_TYPE`` (didn't understand relationship ... in FROM part), each with the same
words as for a name that is not there at all.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import ids
from .errors import SfError
from .model import OBJECTS, Field, SObject, format_datetime, normalize_datetime, sobject

_TOKEN = re.compile(r"""\s*(?:
    (?P<str>'(?:[^'\\]|\\.)*')
  | (?P<dtm>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:?\d{2}))
  | (?P<date>\d{4}-\d{2}-\d{2})
  | (?P<num>-?\d+(?:\.\d+)?)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_.]*(?::\d+)?)
  | (?P<op>!=|<>|<=|>=|=|<|>|\(|\)|,)
)""", re.X)
_DATE_WORDS = {"TODAY": (0, 1), "YESTERDAY": (-1, 0), "TOMORROW": (1, 2)}


def _malformed(text: str) -> SfError:
    return SfError("MALFORMED_QUERY", f"unexpected token: '{text}'")


def _invalid_field(name: str, obj: SObject) -> SfError:
    return SfError("INVALID_FIELD", f"No such column '{name}' on entity '{obj.name}'. If you are "
                   "attempting to use a custom field, be sure to append the '__c' after the "
                   "custom field name. Please reference your WSDL or the describe call for the "
                   "appropriate names.")


#: field types whose filter values are unquoted numbers, and the type Salesforce names
_NUMBER_TYPES = {"double": "double", "currency": "double"}
#: field types whose filter values are quoted strings, and the type Salesforce names
_TEXT_TYPES = {"string": "string", "textarea": "string", "picklist": "string",
               "autonumber": "string", "id": "id", "reference": "id"}
#: field types whose filter values are unquoted date/datetime literals or date words
_DATE_TYPES = {"date": "date", "datetime": "dateTime"}
_ID_SHAPE = re.compile(r"[A-Za-z0-9]{15}(?:[A-Za-z0-9]{3})?")
#: a string literal's escapes (``\n`` or ``\N``, ...): SOQL's "Quoted String Escape Sequences"
_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "b": "\b", "f": "\f", '"': '"', "'": "'",
            "\\": "\\"}
_UNICODE = re.compile(r"[0-9A-Fa-f]{4}")


def _bad_filter(message: str) -> SfError:
    return SfError("INVALID_QUERY_FILTER_OPERATOR", message)


def _wrong_type(f: Field) -> SfError:
    """A filter value of the wrong kind for ``f``, in Salesforce's words."""
    if f.type in _TEXT_TYPES:
        return _bad_filter(f"value of filter criterion for field '{f.name}' must be of type "
                           f"{_TEXT_TYPES[f.type]} and should be enclosed in quotes")
    name = {**_NUMBER_TYPES, **_DATE_TYPES}.get(f.type, f.type)
    return _bad_filter(f"value of filter criterion for field '{f.name}' must be of type "
                       f"{name} and should not be enclosed in quotes")


def _string(body: str, like: bool) -> tuple[str, re.Pattern[str] | None]:
    """A string literal's text (escapes applied) and, in a ``LIKE``, its pattern, where
    ``%``/``_`` are wildcards and ``\\%``/``\\_`` the characters themselves."""
    text: list[str] = []
    regex: list[str] = []
    i = 0
    while i < len(body):
        c = body[i]
        if c != "\\":
            text.append(c)
            regex.append(".*" if c == "%" else "." if c == "_" else re.escape(c))
            i += 1
            continue
        seq = body[i + 1:i + 2]
        if seq.lower() in _ESCAPES:
            char, i = _ESCAPES[seq.lower()], i + 2
        elif seq == "u" and _UNICODE.fullmatch(body[i + 2:i + 6]):
            char, i = chr(int(body[i + 2:i + 6], 16)), i + 6
        elif like and seq in ("_", "%"):
            char, i = seq, i + 2
        else:
            raise SfError("MALFORMED_QUERY", f"Invalid string literal '{body}'. Illegal "
                          f"character sequence '\\{seq}' in string literal.")
        text.append(char)
        regex.append(re.escape(char))
    return "".join(text), re.compile("".join(regex), re.I | re.S) if like else None


@dataclass
class Path:
    rels: list[Field]  # reference fields walked, in order
    leaf: Field

    def value(self, store: Any, record: dict | None) -> Any:
        for ref in self.rels:
            if record is None:
                return None
            target = record.get(ref.name)
            record = store.get(target) if target else None
        return None if record is None else record.get(self.leaf.name)


@dataclass
class Query:
    obj: SObject
    paths: list[Path] = field(default_factory=list)
    subqueries: list[tuple[str, str, str, Query]] = field(default_factory=list)
    where: Any = None
    order: list[tuple[Path, bool, bool]] = field(default_factory=list)
    limit: int | None = None
    offset: int = 0
    count: bool = False
    rel: str | None = None  # child relationship name, for subqueries


class _Parser:
    def __init__(self, text: str, now_ms: int,
                 readable: Callable[[str], bool] | None = None) -> None:
        self.tokens: list[tuple[str, str]] = []
        self.now_ms = now_ms
        #: whether the querying user may read an sObject (None: every one)
        self.readable = readable or (lambda _name: True)
        pos, text = 0, text.strip()
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if not m or m.end() == pos:
                raise _malformed(text[pos:pos + 10].strip())
            kind = m.lastgroup or ""
            self.tokens.append((kind, m.group(kind)))
            pos = m.end()
        self.i = 0

    def peek(self, word: str | None = None) -> str | None:
        if self.i >= len(self.tokens):
            return None
        val = self.tokens[self.i][1]
        if word is None:
            return val
        return val if val.upper() == word else None

    def take(self, word: str | None = None) -> str:
        val = self.peek()
        if val is None:
            raise SfError("MALFORMED_QUERY", "unexpected end of query")
        if word is not None and val.upper() != word:
            raise _malformed(val)
        self.i += 1
        return val

    def query(self, parent: SObject | None = None) -> Query:
        self.take("SELECT")
        items: list[Any] = []
        while True:
            if self.peek("("):
                self.take("(")
                items.append(("sub", self.i))
                depth = 1
                while depth:
                    tok = self.take()
                    depth += {"(": 1, ")": -1}.get(tok, 0)
            else:
                name = self.take()
                if name.upper() == "COUNT" and self.peek("("):
                    self.take("(")
                    self.take(")")
                    name = "COUNT()"
                items.append(("field", name))
            if not self.peek(","):
                break
            self.take(",")
        self.take("FROM")
        from_name = self.take()
        rel: str | None = None
        if parent is None:
            obj = sobject(from_name)
            if obj is None or not self.readable(obj.name):
                raise SfError("INVALID_TYPE", f"sObject type '{from_name}' is not supported. If "
                              "you are attempting to use a custom object, be sure to append the "
                              "'__c' after the entity name. Please reference your WSDL or the "
                              "describe call for the appropriate names.")
        else:
            rel = parent.child(from_name)
            if rel is None or not self.readable(parent.children[rel][0]):
                raise SfError("INVALID_TYPE", f"Didn't understand relationship '{from_name}' in "
                              "FROM part of query call.")
            obj = OBJECTS[parent.children[rel][0]]
        q = Query(obj, rel=rel if parent is not None else None)
        end = self.i
        for kind, val in items:
            if kind == "field" and val == "COUNT()":
                q.count = True
            elif kind == "field":
                q.paths.append(self.path(obj, val))
            else:
                self.i = val
                sub = self.query(obj)
                self.take(")")
                child_type, fk = obj.children[sub.rel or ""]
                q.subqueries.append((sub.rel or "", child_type, fk, sub))
        self.i = end
        if self.peek("WHERE"):
            self.take()
            q.where = self.expr(obj)
        if self.peek("ORDER"):
            self.take()
            self.take("BY")
            while True:
                path = self.path(obj, self.take())
                desc = bool(self.peek("DESC"))
                if self.peek("DESC") or self.peek("ASC"):
                    self.take()
                nulls_last = False  # Salesforce: nulls first by default, DESC too
                if self.peek("NULLS"):
                    self.take()
                    nulls_last = self.take().upper() == "LAST"
                q.order.append((path, desc, nulls_last))
                if not self.peek(","):
                    break
                self.take(",")
        if self.peek("LIMIT"):
            self.take()
            q.limit = self._int()
        if self.peek("OFFSET"):
            self.take()
            q.offset = self._int()
        return q

    def _int(self) -> int:
        tok = self.take()
        if not tok.isdigit():
            raise _malformed(tok)
        return int(tok)

    def path(self, obj: SObject, text: str) -> Path:
        parts = text.split(".")
        if len(parts) > 1 and parts[0].lower() == obj.name.lower() and obj.field(parts[1]):
            parts = parts[1:]
        rels: list[Field] = []
        cur = obj
        for part in parts[:-1]:
            ref = cur.relationship(part)
            if ref is None or ref.ref is None or not self.readable(ref.ref):
                raise SfError("INVALID_FIELD", f"Didn't understand relationship '{part}' in "
                              f"field path. If you are attempting to use a custom relationship, "
                              "be sure to append the '__r' after the custom relationship name.")
            rels.append(ref)
            cur = OBJECTS[ref.ref]
        leaf = cur.field(parts[-1])
        if leaf is None:
            raise _invalid_field(parts[-1], cur)
        return Path(rels, leaf)

    def expr(self, obj: SObject) -> Any:
        terms = [self.conj(obj)]
        while self.peek("OR"):
            self.take()
            terms.append(self.conj(obj))
        return terms[0] if len(terms) == 1 else ("or", terms)

    def conj(self, obj: SObject) -> Any:
        terms = [self.unary(obj)]
        while self.peek("AND"):
            self.take()
            terms.append(self.unary(obj))
        return terms[0] if len(terms) == 1 else ("and", terms)

    def unary(self, obj: SObject) -> Any:
        if self.peek("NOT"):
            self.take()
            return ("not", self.unary(obj))
        if self.peek("("):
            self.take()
            inner = self.expr(obj)
            self.take(")")
            return inner
        path = self.path(obj, self.take())
        op = self.take().upper()
        if op == "NOT":
            self.take("IN")
            op = "NOT IN"
        if op in ("IN", "NOT IN"):
            self.take("(")
            values = [self.literal(path.leaf)]
            while self.peek(","):
                self.take()
                values.append(self.literal(path.leaf))
            self.take(")")
            return ("in", path, values, op == "NOT IN")
        if op not in ("=", "!=", "<>", "<", "<=", ">", ">=", "LIKE"):
            raise _malformed(op)
        if op == "LIKE" and path.leaf.type == "id":
            raise _bad_filter("invalid operator on id field")
        return ("cmp", path, "!=" if op == "<>" else op,
                self.literal(path.leaf, like=op == "LIKE"))

    def literal(self, f: Field, like: bool = False) -> Any:
        """The value of one filter literal for field ``f``: checked as Salesforce checks it
        (malformed first, then against the field's type). ``like``: a ``LIKE`` pattern,
        returned as a compiled pattern for a text field."""
        kind, val = self.tokens[self.i] if self.i < len(self.tokens) else ("", "")
        self.take()
        if kind == "str":
            text, pattern = _string(val[1:-1], like)
            if f.type in _NUMBER_TYPES or f.type in _DATE_TYPES:
                raise _wrong_type(f)
            if f.type in ("id", "reference"):
                if text and not _ID_SHAPE.fullmatch(text):  # '' unverified: let through
                    raise _bad_filter(f"invalid ID field: {text}")
                return ids.to18(text) or text  # a wrong case checksum: matches nothing
            return pattern if pattern is not None else text
        if kind == "num":
            if f.type in _TEXT_TYPES or f.type in _DATE_TYPES:
                raise _wrong_type(f)
            return float(val)
        if kind == "dtm":
            try:
                value = normalize_datetime(val)
            except (ValueError, OverflowError):
                raise SfError("MALFORMED_QUERY", f"Invalid datetime: {val}") from None
            if f.type != "datetime":
                raise _wrong_type(f)
            return value
        if kind == "date":
            try:
                day = dt.date.fromisoformat(val)
            except ValueError:
                raise SfError("MALFORMED_QUERY", f"Invalid date: {val}") from None
            if f.type != "date":
                raise _wrong_type(f)
            return day.isoformat()
        upper = val.upper()
        if upper in ("TRUE", "FALSE"):
            return upper == "TRUE"
        if upper == "NULL":
            return None
        today = dt.datetime.fromtimestamp(self.now_ms / 1000, tz=dt.UTC).replace(
            hour=0, minute=0, second=0, microsecond=0)
        span: tuple[int, int] | None = _DATE_WORDS.get(upper)
        if span is None and ":" in upper:
            word, n = upper.split(":")
            if word == "LAST_N_DAYS":  # today and the n days before it
                span = (-int(n), 1)
            elif word == "NEXT_N_DAYS":  # from 00:00 tomorrow, n days: today is not in it
                span = (1, int(n) + 1)
        if span is None:
            raise _malformed(val)
        if f.type not in _DATE_TYPES:
            raise _wrong_type(f)
        try:
            return self._range(today, *span, f)
        except OverflowError:  # before year 1 or after 9999
            raise SfError("MALFORMED_QUERY", f"Invalid date literal: {val}") from None

    @staticmethod
    def _range(day: dt.datetime, lo: int, hi: int, f: Field) -> tuple[str, str, str]:
        start, end = day + dt.timedelta(days=lo), day + dt.timedelta(days=hi)
        if f.type == "date":
            return ("range", start.date().isoformat(), end.date().isoformat())
        return ("range", format_datetime(int(start.timestamp() * 1000)),
                format_datetime(int(end.timestamp() * 1000)))


def parse(text: str, now_ms: int, readable: Callable[[str], bool] | None = None) -> Query:
    """Parse one SOQL statement; raises :class:`SfError` (MALFORMED_QUERY, INVALID_...).
    ``readable`` (sObject name → bool) hides the objects the user may not read."""
    parser = _Parser(text, now_ms, readable)
    q = parser.query()
    if parser.peek() is not None:
        raise _malformed(parser.peek() or "")
    return q
