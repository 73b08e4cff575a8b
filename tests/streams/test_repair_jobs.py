"""The changelog repair's jobs: tried again, then given up with a line naming each (no broker:
the read and the table are stand-ins; the broker tests are in
:mod:`tests.streams.test_changelog_repair`)."""

from __future__ import annotations

import asyncio
from collections import Counter
from types import SimpleNamespace

from streams.repair import ChangelogRepair
from tests.streams.test_changelog_repair import NOW, _lease


def test_a_failing_job_is_tried_again_then_given_up_with_a_line_naming_it(caplog):
    """A range whose read fails once (a broker failing over) is repaired at its second
    attempt; one whose read always fails, and keys whose rewrite always fails, are given up
    after the last attempt, each with a line naming what it was; the jobs behind them still
    run (no broker: the read and the table are stand-ins, the lease is the real one)."""
    lease = _lease()
    lease.synced(7, NOW)
    lease.assigned([0], 7)
    sent: list[str] = []
    reads: Counter[int] = Counter()

    def read(topic, partition, start, end):
        reads[start] += 1
        if start == 3 or (start == 9 and reads[start] == 1):
            raise OSError("broker gone")
        return {f"K{start}".encode(): b"theirs"}

    def rewrite(key: str) -> None:
        if key == "bad":
            raise ValueError("no such key")
        sent.append(key)

    table = SimpleNamespace(name="idem", stored=lambda key: b"ours", rewrite=rewrite,
                            changelog_topic=SimpleNamespace(get_topic_name=lambda: "t"))

    async def commit() -> None:
        return None

    repair = ChangelogRepair(lease, read, commit, wait_s=1, attempts=3, retry_s=0)

    async def go():
        repair.foreign(table, 0, 3, 5, 7)  # type: ignore[arg-type]
        repair.skipped(table, 0, ["bad"])  # type: ignore[arg-type]
        repair.foreign(table, 0, 9, 9, 7)  # type: ignore[arg-type]
        repair.foreign(table, 0, 6, 6, 7)  # type: ignore[arg-type]
        await repair.idle()

    with caplog.at_level("WARNING", logger="streams.repair"):
        asyncio.run(go())
    assert reads == {3: 3, 9: 2, 6: 1}
    assert sorted(sent) == ["K6", "K9"] and repair.rewritten == 2
    assert repair.given_up == 2
    lines = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert [m for level, m in lines if level == "ERROR"] == [
        "table idem: repairing changelog partition 0 (offsets 3-5) failed, attempt 3/3; "
        "given up",
        "table idem: repairing changelog partition 0 (1 key(s) a restore left records out "
        "for) failed, attempt 3/3; given up"]
    assert sum("tried again in 0 s" in m for level, m in lines if level == "WARNING") == 5
