"""Salesforce record ids: 15-character case-sensitive ids and their 18-character form.

An id is a 3-character key prefix (``001`` Account, ``801`` Order, ...), a 2-character
pod/instance part, and a 10-character base-62 sequence; the 18-character form appends
Salesforce's case checksum (one character per 5-character chunk, encoding which
characters of the chunk are upper-case letters), so ids survive case-insensitive
systems. :func:`to18` accepts either form and refuses anything else.
"""

from __future__ import annotations

import re

KEY_PREFIXES: dict[str, str] = {
    "Account": "001",
    "Contact": "003",
    "Opportunity": "006",
    "Order": "801",
    "OrderItem": "802",
    "Product2": "01t",
    "Pricebook2": "01s",
    "PricebookEntry": "01u",
    "Case": "500",
    "User": "005",
    "Organization": "00D",
}
_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_CHECKSUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"
_ID_RE = re.compile(r"^[a-zA-Z0-9]{15}(?:[A-Z0-5]{3})?$")


def checksum(id15: str) -> str:
    """The 3-character case-checksum suffix of a 15-character id."""
    out = []
    for chunk in range(3):
        flags = 0
        for pos, ch in enumerate(id15[chunk * 5:chunk * 5 + 5]):
            if "A" <= ch <= "Z":
                flags |= 1 << pos
        out.append(_CHECKSUM[flags])
    return "".join(out)


def base62(number: int, width: int) -> str:
    digits = []
    while number:
        number, rem = divmod(number, 62)
        digits.append(_BASE62[rem])
    text = "".join(reversed(digits)) or "0"
    if len(text) > width:
        raise ValueError(f"{number} does not fit in {width} base-62 digits")
    return text.rjust(width, "0")


def make_id(prefix: str, pod: str, sequence: int) -> str:
    """The 18-character id number ``sequence`` with key ``prefix`` on ``pod`` (2 chars)."""
    id15 = prefix + pod + base62(sequence, 10)
    return id15 + checksum(id15)


def is_valid(value: str) -> bool:
    """True if ``value`` is a well-formed 15- or 18-character id (checksum included)."""
    if not isinstance(value, str) or not _ID_RE.match(value):
        return False
    return len(value) == 15 or checksum(value[:15]) == value[15:]


def to18(value: str) -> str | None:
    """The canonical 18-character form, or None if ``value`` is not an id."""
    if not is_valid(value):
        return None
    return value if len(value) == 18 else value + checksum(value)


def prefix_type(value: str) -> str | None:
    """The sObject type an id's key prefix names, or None."""
    for name, prefix in KEY_PREFIXES.items():
        if value.startswith(prefix):
            return name
    return None
