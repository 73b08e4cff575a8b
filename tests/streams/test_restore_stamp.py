"""The stamp each changelog record carries (writer, generation) and the restore's judgement
of it (streams.faust_seam.restore, decision 0016): a record is left out when the latest claim
read before it is another writer's, of a later generation."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from streams.faust_seam.restore import STAMP_HEADER, RestoreGuards, read_stamp


def _guards(claims: list[tuple[int, int, str]], writer: str = "me") -> SimpleNamespace:
    return SimpleNamespace(_claims={0: claims}, writer=writer, _stamps=("", None, None))


def _late(guards: SimpleNamespace, offset: int, stamp: bytes | None):
    headers = None if stamp is None else [("other", b"x"), (STAMP_HEADER, stamp)]
    msg = SimpleNamespace(partition=0, offset=offset, headers=headers)
    return RestoreGuards._stamped_late(guards, msg)  # type: ignore[arg-type]


def test_a_record_written_before_another_writers_later_claim_is_late():
    guards = _guards([(10, 8, "owner")])
    assert _late(guards, 11, b"7 host:1:ab") == (7, "host:1:ab", 8, "owner")


@pytest.mark.parametrize(("claims", "offset", "stamp"), [
    ([(10, 8, "owner")], 9, b"7 late"),  # before the claim: the claimant's restore read it
    ([(10, 8, "owner")], 11, b"8 late"),  # the same generation: not written before it
    ([(10, 8, "owner")], 11, b"9 late"),  # a later one
    ([(10, 8, "late")], 11, b"7 late"),  # the claimant's own (one producer keeps its order)
    ([], 11, b"7 late"),  # no claim read
    ([(10, 8, "owner")], 11, None),  # not stamped (written during a rebalance, or before)
    ([(10, 8, "owner")], 11, b"seven late"),  # unreadable: applied, as before the stamp
    # the group's generations started again: the latest claim decides, not an older one
    ([(10, 50, "old"), (20, 1, "new")], 21, b"1 new"),
    ([(20, 1, "new"), (10, 50, "old")], 21, b"2 other"),
])
def test_records_that_are_not_late_are_applied(claims, offset, stamp):
    assert _late(_guards(claims), offset, stamp) is None


def test_the_latest_claim_before_the_record_decides():
    guards = _guards([(10, 8, "late"), (20, 9, "owner"), (40, 10, "late")])
    assert _late(guards, 30, b"8 late") == (8, "late", 9, "owner")
    assert _late(guards, 41, b"10 late") is None


def test_a_tables_records_are_stamped_with_its_writer_and_the_generation_now():
    table = _guards([], writer="host:7:cd")
    first = RestoreGuards._stamp(table, 4)  # type: ignore[arg-type]
    assert first == [(STAMP_HEADER, b"4 host:7:cd")]
    assert read_stamp(first) == (4, "host:7:cd")
    assert RestoreGuards._stamp(table, 4) is first  # one list per generation, shared
    assert RestoreGuards._stamp(table, 5) == [(STAMP_HEADER, b"5 host:7:cd")]
    assert RestoreGuards._stamp(table, None) is None
