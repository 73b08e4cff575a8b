"""Decode a WHMCS API request body the way PHP fills ``$_POST``.

``pid[0]=1&pid[1]=5`` and ``pid[]=1&pid[]=5`` both become ``{"pid": {"0": "1", "1": "5"}}``
(a PHP array: string keys in arrival order; ``[]`` takes the next integer key). Plain keys
stay strings; a later plain key overwrites an earlier one, as in PHP. Only one bracket level
is supported, which is all the WHMCS API uses.
"""

from __future__ import annotations

from urllib.parse import parse_qsl

Params = dict[str, "str | dict[str, str]"]


def parse_form(body: bytes | str) -> Params:
    """Parse an ``application/x-www-form-urlencoded`` body (or query string)."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    out: Params = {}
    for key, value in parse_qsl(text, keep_blank_values=True):
        bracket = key.find("[")
        if bracket <= 0 or not key.endswith("]"):
            out[key] = value
            continue
        name, index = key[:bracket], key[bracket + 1:-1]
        array = out.get(name)
        if not isinstance(array, dict):
            array = out[name] = {}
        if index == "":
            ints = [int(k) for k in array if k.lstrip("-").isdigit()]
            index = str(max(ints) + 1 if ints else 0)
        array[index] = value
    return out


def scalar(params: Params, name: str, default: str = "") -> str:
    """A scalar parameter; an array sent where a scalar is expected reads as its first value."""
    value = params.get(name, default)
    if isinstance(value, dict):
        return next(iter(value.values()), default)
    return value


def array(params: Params, name: str) -> dict[str, str]:
    """An array parameter; a scalar sent instead (WHMCS's legacy ``pid=1``) is index ``0``."""
    value = params.get(name)
    if value is None:
        return {}
    if isinstance(value, dict):
        return value
    return {"0": value}


def truthy(params: Params, name: str) -> bool:
    """PHP-ish truthiness of a flag: ``1``/``true``/``on``/``yes`` are true."""
    return scalar(params, name).strip().lower() in ("1", "true", "on", "yes")
