"""Fixtures shared by the ``ops`` tests."""
from __future__ import annotations

import contextlib
import os
import signal
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

from ops import stack


def _running(pid: int) -> bool:
    """``pid`` runs (a zombie does not)."""
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    return False


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """``ops.stack`` on a scratch state directory, with no broker; yields a list where a test
    puts the pids it starts (each killed at the end if it still runs)."""
    for name in ("STATE", "LOGS", "STATUS", "PLAN", "SUPERVISOR_PID", "CONTROL",
                 "PIPELINE_ENV"):
        monkeypatch.setattr(stack, name, tmp_path / getattr(stack, name).name)
    monkeypatch.setattr(stack, "broker", lambda: types.SimpleNamespace(stop=lambda: False))
    monkeypatch.setenv("SFPROV_ENV_FILE", os.devnull)
    started: list[int] = []
    yield started
    for pid in started:
        if _running(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
