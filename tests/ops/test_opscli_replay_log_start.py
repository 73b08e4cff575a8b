"""`sfprov replay` when retention (or kafka-delete-records) removed the worker group's
committed offset: the worker goes on from the log start, so a move counts what it skips from
there, as `lag` does. Counted from the committed offset, `--from-offset 0:LOG_START` (which
skips nothing) was refused as skipping thousands of offsets, exit 3. No broker: fakes."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ops import cmd_replay
from tests.ops.test_cli_guards import fake_replay, replay_args

LOW = 5000  # the log start; the group committed 100


class _Consumer:
    def close(self) -> None: ...


@pytest.fixture()
def counted(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """The ranges whose records replay counts (each counted as its offset distance)."""
    ranges: list[tuple[int, int]] = []

    def records_between(c: Any, topic: str, partition: int, start: int, end: int) -> int:
        ranges.append((start, end))
        return end - start

    monkeypatch.setattr(cmd_replay, "consumer", lambda s: _Consumer())
    monkeypatch.setattr(cmd_replay, "records_between", records_between)
    return ranges


def test_a_move_to_the_log_start_skips_nothing(monkeypatch, counted, capsys):
    altered = fake_replay(monkeypatch, to=LOW, low=LOW)
    assert cmd_replay.replay(replay_args(LOW)) == 0
    assert altered == [[(0, LOW)]] and counted == []
    out, err = capsys.readouterr()
    assert "refusing" not in err and "skip" not in out, (out, err)


def test_a_move_past_the_log_start_counts_from_it(monkeypatch, counted, capsys):
    altered = fake_replay(monkeypatch, to=LOW + 200, low=LOW)
    assert cmd_replay.replay(replay_args(LOW + 200)) == 3
    assert altered == [] and counted == [(LOW, LOW + 200)]
    assert "past 200 record(s) it has not processed (partition 0: 200)" in \
        capsys.readouterr().err
    assert cmd_replay.replay(replay_args(LOW + 200, allow_skip=True, json=True)) == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["skip"], data["skip_exact"]) == (200, True)
    assert data["partitions"][0]["current"] == 100  # what the group committed, as before
