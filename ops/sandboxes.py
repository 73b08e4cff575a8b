"""The sandbox part of ``make up``'s plan: keys, TLS, the two emulators, the pipeline's env.

Filled in as the sandboxes land; returns (processes, env for the pipeline processes).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plan(state: Path, logs: Path) -> tuple[list[dict[str, Any]], dict[str, str]]:
    return [], {}
