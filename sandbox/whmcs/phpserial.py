"""PHP ``serialize()`` / ``unserialize()`` for the values WHMCS exchanges.

WHMCS's AddOrder takes ``configoptions[i]`` and ``customfields[i]`` as
``base64_encode(serialize(array(id => value, ...)))``. This module speaks that format:

- ``dumps(value) -> bytes`` accepts ``None``, ``bool``, ``int``, ``float``, ``str``,
  ``bytes``, ``dict`` and ``list``/``tuple`` (a list becomes a PHP array keyed 0..n-1).
  Dict keys must be ``int`` or ``str``; like PHP, a string key that is a canonical decimal
  integer (``"12"``, not ``"012"``) is stored as an integer key.
- ``loads(data) -> value`` returns a PHP array as a ``dict`` (keys ``int`` or ``str``, in
  order). String lengths are **byte** lengths of UTF-8; strings decode as UTF-8 (bytes that
  are not UTF-8 come back as ``bytes``). Objects (``O:``) and references are refused with
  :class:`PhpSerialError`, as is anything malformed or trailing data.
- ``b64dumps`` / ``b64loads`` wrap the base64 layer WHMCS puts around it.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

_INT_KEY = re.compile(r"-?(0|[1-9][0-9]*)\Z")


class PhpSerialError(ValueError):
    """The input is not a PHP-serialized value this module supports."""


def _key(key: Any) -> bytes:
    if isinstance(key, bool) or not isinstance(key, int | str):
        raise PhpSerialError(f"unsupported array key type {type(key).__name__}")
    if isinstance(key, str) and _INT_KEY.match(key):
        key = int(key)
    return _dump(key)


def _dump(value: Any) -> bytes:
    if value is None:
        return b"N;"
    if isinstance(value, bool):
        return b"b:1;" if value else b"b:0;"
    if isinstance(value, int):
        return b"i:%d;" % value
    if isinstance(value, float):
        return b"d:" + repr(value).encode() + b";"
    if isinstance(value, str):
        value = value.encode("utf-8")
    if isinstance(value, bytes):
        return b's:%d:"' % len(value) + value + b'";'
    if isinstance(value, list | tuple):
        value = dict(enumerate(value))
    if isinstance(value, dict):
        body = b"".join(_key(k) + _dump(v) for k, v in value.items())
        return b"a:%d:{" % len(value) + body + b"}"
    raise PhpSerialError(f"cannot serialize {type(value).__name__}")


def dumps(value: Any) -> bytes:
    """PHP ``serialize($value)``."""
    return _dump(value)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def until(self, stop: bytes) -> bytes:
        end = self.data.find(stop, self.pos)
        if end < 0:
            raise PhpSerialError(f"expected {stop!r} after offset {self.pos}")
        out = self.data[self.pos:end]
        self.pos = end + len(stop)
        return out

    def expect(self, token: bytes) -> None:
        if self.data[self.pos:self.pos + len(token)] != token:
            raise PhpSerialError(f"expected {token!r} at offset {self.pos}")
        self.pos += len(token)

    def integer(self, stop: bytes) -> int:
        raw = self.until(stop)
        try:
            return int(raw)
        except ValueError:
            raise PhpSerialError(f"bad integer {raw!r}") from None

    def value(self) -> Any:
        tag = self.data[self.pos:self.pos + 2]
        self.pos += 2
        if tag == b"N;":
            return None
        if tag == b"b:":
            flag = self.integer(b";")
            if flag not in (0, 1):
                raise PhpSerialError(f"bad boolean {flag}")
            return bool(flag)
        if tag == b"i:":
            return self.integer(b";")
        if tag == b"d:":
            raw = self.until(b";")
            try:
                return float(raw.replace(b"INF", b"inf").replace(b"NAN", b"nan"))
            except ValueError:
                raise PhpSerialError(f"bad float {raw!r}") from None
        if tag == b"s:":
            length = self.integer(b":")
            self.expect(b'"')
            raw = self.data[self.pos:self.pos + length]
            if len(raw) != length or length < 0:
                raise PhpSerialError("string shorter than its declared length")
            self.pos += length
            self.expect(b'";')
            try:
                return raw.decode("utf-8")
            except UnicodeDecodeError:
                return raw
        if tag == b"a:":
            count = self.integer(b":")
            self.expect(b"{")
            out: dict[Any, Any] = {}
            for _ in range(count):
                key = self.value()
                if not isinstance(key, int | str) or isinstance(key, bool):
                    raise PhpSerialError(f"bad array key {key!r}")
                out[key] = self.value()
            self.expect(b"}")
            return out
        raise PhpSerialError(f"unsupported type tag {tag!r} at offset {self.pos - 2}")


def loads(data: bytes | str) -> Any:
    """PHP ``unserialize($data)``; raises :class:`PhpSerialError` on anything else."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    reader = _Reader(data)
    value = reader.value()
    if reader.pos != len(data):
        raise PhpSerialError(f"trailing data at offset {reader.pos}")
    return value


def b64dumps(value: Any) -> str:
    """``base64_encode(serialize($value))`` as WHMCS expects in configoptions[]."""
    return base64.b64encode(dumps(value)).decode("ascii")


def b64loads(text: str) -> Any:
    """Inverse of :func:`b64dumps`; bad base64 is a :class:`PhpSerialError` too."""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError) as exc:
        raise PhpSerialError(f"not base64: {exc}") from None
    return loads(raw)
