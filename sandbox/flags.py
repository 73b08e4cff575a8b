"""One reading of a fault's on/off value for both emulators' fault controls."""

from __future__ import annotations

from typing import Any

_WORDS = {"true": True, "1": True, "false": False, "0": False}


def parse_flag(name: str, value: Any) -> bool:
    """``value`` as a boolean: true/false, 0/1 or their text; anything else is refused
    (``ValueError`` naming ``name``) — ``bool("false")`` turned a fault on when asked off."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _WORDS:
        return _WORDS[value.strip().lower()]
    raise ValueError(f"{name}: true or false is expected, not {value!r}")
