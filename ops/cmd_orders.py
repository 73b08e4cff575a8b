"""Order-level operator commands: trace, reconcile, demo (filled in as the parts land)."""

from __future__ import annotations

COMMANDS: list = []
