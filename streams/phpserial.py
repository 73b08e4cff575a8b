"""PHP ``serialize()`` of the small values WHMCS takes in ``configoptions[]``/``customfields[]``.

Only what the worker sends: ``None``, ``bool``, ``int``, ``float``, ``str`` and ``dict``
(a PHP array). As in PHP, a string key that is a canonical decimal integer (``"12"``, not
``"012"`` nor ``"-0"``) becomes an integer key. String lengths are UTF-8 **byte** counts —
the classic bug is counting characters, which PHP's ``unserialize`` then rejects for any
non-ASCII value.
"""

from __future__ import annotations

import base64
import re
from typing import Any

_CANONICAL_INT = re.compile(r"(0|-?[1-9][0-9]*)\Z")
#: PHP's integers (64-bit): ``unserialize`` clamps a larger one to these
PHP_INT_MAX = 2**63 - 1
PHP_INT_MIN = -(2**63)


def _key(key: Any) -> bytes:
    if isinstance(key, bool) or not isinstance(key, int | str):
        raise TypeError(f"PHP array keys are int or str, not {type(key).__name__}")
    if isinstance(key, str) and _CANONICAL_INT.match(key) and \
            PHP_INT_MIN <= int(key) <= PHP_INT_MAX:  # PHP keeps a larger one a string key
        key = int(key)
    return serialize(key)


def serialize(value: Any) -> bytes:
    """``serialize($value)`` as PHP would write it."""
    if value is None:
        return b"N;"
    if isinstance(value, bool):
        return b"b:%d;" % int(value)
    if isinstance(value, int):
        if not PHP_INT_MIN <= value <= PHP_INT_MAX:
            raise ValueError(f"{value} is beyond PHP's 64-bit integers")
        return b"i:%d;" % value
    if isinstance(value, float):
        return b"d:%s;" % repr(value).encode()
    if isinstance(value, str):
        raw = value.encode("utf-8")
        return b's:%d:"%s";' % (len(raw), raw)
    if isinstance(value, dict):
        inner = b"".join(_key(k) + serialize(v) for k, v in value.items())
        return b"a:%d:{%s}" % (len(value), inner)
    raise TypeError(f"cannot PHP-serialize {type(value).__name__}")


def b64_serialize(value: Any) -> str:
    """``base64_encode(serialize($value))``: the form WHMCS's AddOrder expects."""
    return base64.b64encode(serialize(value)).decode("ascii")
