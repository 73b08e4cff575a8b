"""The changelog repair's jobs: tried again, then given up with a line naming each (no broker:
the read and the table are stand-ins; the broker tests are in
:mod:`tests.streams.test_changelog_repair`)."""

from __future__ import annotations

import asyncio
from collections import Counter
from types import SimpleNamespace
from typing import Any

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


class _OwnersTable:
    """A table whose store holds the owner's value of every key; what is sent again."""

    name = "idem"
    changelog_topic = type("T", (), {"get_topic_name": staticmethod(lambda: "x")})()

    def __init__(self) -> None:
        self.sent: list[str] = []

    def stored(self, key: str) -> bytes:
        return b"owner"

    def rewrite(self, key: str) -> None:
        self.sent.append(key)


def _held_in_5() -> tuple[Any, list[float]]:
    """A lease holding partition 0 since generation 5, on a clock of its own."""
    from streams.lease import OwnershipLease

    clock = [1000.0]
    lease = OwnershipLease(session_timeout_s=10, margin_s=2, clock=lambda: clock[0])
    lease.synced(5, clock[0])
    lease.assigned([0], 5)
    return lease, clock


async def _no_commit() -> None:
    pass


def test_a_range_whose_lease_wait_times_out_is_tried_again_and_repaired():
    """The late writer's rejoin made a rebalance and restores outlast the repair's wait
    while this worker kept the partition: the range was dropped as `not_owner`, though the
    flush had moved the persisted offset past it — nothing ever looked at it again, and the
    changelog kept ending with the late values."""
    import asyncio

    from streams.repair import ChangelogRepair

    lease, clock = _held_in_5()
    table = _OwnersTable()

    async def go() -> int:
        repair = ChangelogRepair(lease, lambda *_: {b"K": b"late"}, _no_commit, wait_s=0.2,
                                 retry_s=0.05, attempts=3)
        assert repair.foreign(table, 0, 10, 12, 5)  # type: ignore[arg-type]  # the lease answered
        lease.rebalancing()  # the late writer's rejoin: a rebalance
        await asyncio.sleep(0.3)  # longer than the repair's wait
        lease.synced(6, clock[0])
        lease.assigned([0], 6)  # kept
        await asyncio.wait_for(repair.idle(), 5)
        return repair.given_up
    assert asyncio.run(go()) == 0 and table.sent == ["K"]


def test_a_restore_longer_than_every_attempt_is_waited_out():
    """A rebuild from the changelog's start outlasting three waits of the lease gave the
    range up while the worker kept the partition: it was never looked at again."""
    import asyncio

    from streams.repair import ChangelogRepair

    lease, clock = _held_in_5()
    table = _OwnersTable()
    busy = [False]

    async def go() -> int:
        repair = ChangelogRepair(lease, lambda *_: {b"K": b"late"}, _no_commit, wait_s=0.1,
                                 retry_s=0.01, attempts=3, busy=lambda: busy[0])
        assert repair.foreign(table, 0, 10, 12, 5)  # type: ignore[arg-type]
        lease.rebalancing()
        busy[0] = True  # a rebalance, then a long restore
        lease.synced(6, clock[0])
        lease.assigned([0], 6)  # kept
        await asyncio.sleep(0.8)  # the restore: longer than 3 × (0.1 + 0.01)
        busy[0] = False
        await asyncio.wait_for(repair.idle(), 5)
        return repair.given_up
    assert asyncio.run(go()) == 0 and table.sent == ["K"]


def test_skipped_keys_survive_a_rebalance_at_their_deadline():
    """The keys a restore left late records out for were dropped as not_owner when a
    rebalance was under way 30 s after the restore (no generation then), though the worker
    kept the partition: the changelog kept ending with the late records."""
    import asyncio

    from streams.repair import ChangelogRepair

    lease, clock = _held_in_5()
    table = _OwnersTable()
    busy = [True]  # the restore that left the keys out is under way

    async def go() -> int:
        repair = ChangelogRepair(lease, lambda *_: {}, _no_commit, wait_s=0.2, retry_s=0.01,
                                 busy=lambda: busy[0])
        repair.skipped(table, 0, ["K"])  # type: ignore[arg-type]
        await asyncio.sleep(0.1)
        lease.rebalancing()  # another member joins during the long restore
        await asyncio.sleep(0.3)  # the join and sync straddle the old deadline
        lease.synced(6, clock[0])
        lease.assigned([0], 6)  # kept, without a break
        await asyncio.sleep(0.3)
        busy[0] = False  # the restore ends
        await asyncio.wait_for(repair.idle(), 5)
        return repair.given_up
    assert asyncio.run(go()) == 0 and table.sent == ["K"]
