"""The log waits of ``tests.streams.support``: an empty assignment is not an assignment."""

from __future__ import annotations

from pathlib import Path

from tests.streams.support import ASSIGNED_SOME, wait_for_log_match


def test_an_empty_assignment_is_not_waited_for(tmp_path: Path) -> None:
    log = tmp_path / "worker.log"
    log.write_text("INFO streams.app requests partitions assigned: []\n")
    assert not wait_for_log_match(log, ASSIGNED_SOME, timeout=0.5)


def test_a_non_empty_assignment_is(tmp_path: Path) -> None:
    log = tmp_path / "worker.log"
    log.write_text("INFO streams.app requests partitions assigned: []\n"
                   "INFO streams.app requests partitions assigned: [1, 2]\n")
    assert wait_for_log_match(log, ASSIGNED_SOME, timeout=0.5)


def test_a_missing_log_is_not_a_match(tmp_path: Path) -> None:
    assert not wait_for_log_match(tmp_path / "absent.log", ASSIGNED_SOME, timeout=0.3)
