"""The seam's fetch wrapper (streams.faust_seam.ConsumerSeam): records faust fetched and did
not yield are fetched again — on every topic, and never by moving a position forward — and
the checkpoint's seeks are applied between fetches, before the rewinds."""

from __future__ import annotations

import asyncio
from collections import namedtuple
from types import SimpleNamespace
from typing import Any

from faust.types import TP

from streams.faust_seam import ConsumerSeam

Record = namedtuple("Record", "offset")
Message = namedtuple("Message", "offset")
CL, REQ = TP("idem-changelog", 2), TP("requests", 0)


class FakeConsumer:
    """faust's consumer as the rewinder sees it: ``getmany`` yields what ``_getmany``
    returned, minus what it decides to drop."""

    def __init__(self, fetches: list[dict[TP, list[int]]], drop: set[tuple[TP, int]]):
        self.fetches, self.drop = fetches, drop
        self.positions: dict[TP, int] = {}
        self.seeks: list[tuple[TP, int]] = []

    async def _getmany(self, active_partitions: Any = None, timeout: float = 1.0) -> Any:
        batch = self.fetches.pop(0)
        for tp, offsets in batch.items():
            self.positions[tp] = offsets[-1] + 1
        return {tp: [Record(o) for o in offsets] for tp, offsets in batch.items()}

    async def getmany(self, timeout: float) -> Any:
        records = await self._getmany(timeout=timeout)  # via the instance: the wrapper
        for tp, recs in records.items():
            for r in recs:
                if (tp, r.offset) not in self.drop:
                    yield tp, Message(r.offset)

    def assignment(self) -> set[TP]:
        return {CL, REQ}

    def on_buffer_drop(self, tp: TP) -> None:  # wrapped by the seam (paused kept out)
        pass

    def _filter_committable_offsets(self, tps: Any) -> dict[TP, int]:
        return {}  # faust's own commits (the seam leaves the requests topic out of them)

    async def wait_first(self, *coros: Any, timeout: float | None = None) -> Any:
        raise AssertionError("the rewinder never delivers")  # wrapped by the seam, not called

    async def seek_to_committed(self) -> dict[TP, int]:
        return {}

    async def position(self, tp: TP) -> int | None:
        return self.positions.get(tp)

    async def seek(self, tp: TP, offset: int) -> None:
        self.seeks.append((tp, offset))
        self.positions[tp] = offset


def rewind_dropped_records(consumer: FakeConsumer) -> ConsumerSeam:
    return ConsumerSeam(SimpleNamespace(consumer=consumer), REQ.topic)  # type: ignore[arg-type]


def _drain(consumer: FakeConsumer, rounds: int) -> list[tuple[TP, int]]:
    async def go() -> list[tuple[TP, int]]:
        got = []
        for _ in range(rounds):
            got += [(tp, m.offset) async for tp, m in consumer.getmany(timeout=1.0)]
        return got
    return asyncio.run(go())


def test_a_whole_dropped_fetch_of_a_changelog_partition_is_fetched_again():
    consumer = FakeConsumer([{CL: list(range(20))}, {CL: list(range(20))}],
                            drop={(CL, o) for o in range(20)})
    rewinder = rewind_dropped_records(consumer)
    assert _drain(consumer, 1) == []  # the whole fetch dropped; the position is at 20
    assert rewinder._rewind == {CL: 0}
    consumer.drop = set()
    got = _drain(consumer, 1)  # the seek comes before the next fetch
    assert consumer.seeks == [(CL, 0)] and rewinder.rewinds == 1
    assert got == [(CL, o) for o in range(20)]


def test_a_record_dropped_mid_fetch_is_the_seek_target():
    consumer = FakeConsumer([{REQ: [5, 6, 7, 8]}, {REQ: [6, 7, 8]}], drop={(REQ, 6)})
    rewind_dropped_records(consumer)
    assert _drain(consumer, 1) == [(REQ, 5), (REQ, 7), (REQ, 8)]
    consumer.drop = set()
    assert _drain(consumer, 1) == [(REQ, 6), (REQ, 7), (REQ, 8)]
    assert consumer.seeks == [(REQ, 6)]


def test_no_seek_when_the_position_was_already_moved_back():
    """faust's own perform_seek (or the recovery) already put the partition before the
    dropped records: the rewinder must not move it forward."""
    consumer = FakeConsumer([{REQ: [10, 11]}, {REQ: [3]}], drop={(REQ, 10), (REQ, 11)})
    rewinder = rewind_dropped_records(consumer)
    _drain(consumer, 1)
    consumer.positions[REQ] = 3  # a seek to the committed offset happened meanwhile
    _drain(consumer, 1)
    assert consumer.seeks == [] and rewinder.rewinds == 0


def test_nothing_dropped_nothing_sought():
    consumer = FakeConsumer([{REQ: [1, 2]}, {CL: [4]}], drop=set())
    rewinder = rewind_dropped_records(consumer)
    _drain(consumer, 2)
    assert consumer.seeks == [] and rewinder._rewind == {}


def test_checkpoint_seeks_come_first_and_a_rewind_never_moves_past_them():
    """The checkpoint asks for partition 0 of the requests topic at 4 (a record it found
    unfinished) while the previous fetch dropped 7: the seek to 4 is applied, and the
    rewind to 7 is not (the position is already before it)."""
    consumer = FakeConsumer([{REQ: [5, 6, 7, 8]}, {REQ: [4, 5, 6, 7, 8]}], drop={(REQ, 7)})
    seam = rewind_dropped_records(consumer)
    _drain(consumer, 1)
    seam.seek_before_next_fetch(0, 4)
    consumer.drop = set()
    got = _drain(consumer, 1)
    assert consumer.seeks == [(REQ, 4)] and seam.rewinds == 0
    assert got == [(REQ, o) for o in range(4, 9)]
