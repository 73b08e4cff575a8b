"""The stamp each changelog record carries (writer, generation) and the restore's judgement
of it (streams.faust_seam.restore, decision 0016): a record is left out when the latest claim
read before it is another writer's, of a later generation."""

from __future__ import annotations

import time
from collections import Counter
from types import SimpleNamespace

import orjson
import pytest
from faust.types import TP

from streams.faust_seam.restore import CLAIM_KEY, STAMP_HEADER, RestoreGuards, read_stamp
from tests.streams.test_tables import _durable_table


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


# -- a restore in place over a store that took the late values (RocksDB, no broker) ----------

K = "801K00000000001AAA"
CHANGELOG = "stamp-test-idem-changelog"
TP0 = TP(CHANGELOG, 0)


def _event(offset: int, key: str, value: bytes, stamp: bytes) -> SimpleNamespace:
    return SimpleNamespace(message=SimpleNamespace(
        tp=TP0, partition=0, offset=offset, key=key.encode(), value=value,
        headers=[(STAMP_HEADER, stamp)]))


def _claim(offset: int, generation: int, writer: str) -> SimpleNamespace:
    value = orjson.dumps({"generation": generation, "writer": writer})
    return _event(offset, CLAIM_KEY, value, f"{generation} {writer}".encode())


def _table(path, writer: str, *, holds: bytes | None = None, persisted: int | None = None):
    table = _durable_table("stamp-test", path, partitions=1)
    table._changelog_name = CHANGELOG
    table.writer = writer
    skipped: list[list[str]] = []
    table.on_skipped = lambda _table, _partition, keys: skipped.append(keys)
    if holds is not None:  # its disk took the value when it was written
        table.data._db_for_partition(0).put(K.encode(), holds)
    if persisted is not None:
        table.data.set_persisted_offset(TP0, persisted)
    return table, skipped


def _assigned(table) -> int | None:
    """Where faust's recovery starts the partition at an assignment (Recovery._add)."""
    offsets: Counter = Counter({TP0: 0})
    table.app.tables.recovery._add(table, TP0, offsets)
    return offsets[TP0]


LATE = b'{"state":"pending","by":"late"}'
OWNERS = b'{"state":"accepted","by":"owner"}'


@pytest.mark.parametrize("batches", [[[0, 1, 2]], [[0, 1], [2]]])
def test_an_owners_record_kept_before_the_late_one_is_what_the_restore_leaves(tmp_path,
                                                                              batches):
    """The late writer restarted; its store holds its late value, but the owner's record of
    the key comes first in the restore: that is what the store ends with, so nothing is
    marked and the key is sent again — in one batch as in two (the check compared the
    store as it was before the batch: one batch marked it and sent nothing)."""
    log = [_claim(1, 6, "owner"), _event(2, K, OWNERS, b"6 owner"), _event(3, K, LATE, b"5 late")]
    table, skipped = _table(tmp_path, "late, restarted", holds=LATE, persisted=0)
    for batch in batches:
        table.apply_changelog_batch([log[i] for i in batch])
    assert table.stored(K) == OWNERS
    assert 0 not in table._rebuild and skipped == [[K]]


def test_a_store_holding_a_late_value_is_marked_and_read_again_after_a_restart(tmp_path):
    """The late value stays in the store restored in place: the partition is marked for a
    rebuild, and its persisted offset held below the late record, so a process restarted
    before the next assignment reads it again (and marks it again) rather than resuming
    past it with the late value for good."""
    log = [_claim(1, 6, "owner"), _event(2, K, LATE, b"5 late")]
    table, skipped = _table(tmp_path, "late, restarted", holds=LATE, persisted=0)
    table.apply_changelog_batch(log)
    assert 0 in table._rebuild and skipped == []
    assert table.data.persisted_offset(TP0) == 1  # below the late record
    # and it stays there: the restore's next batch, a flush (each set it past the record)
    table.apply_changelog_batch([_event(3, "801K00000000002AAA", OWNERS, b"6 owner")])
    table.data.set_persisted_offset(TP0, 9)
    assert table.data.persisted_offset(TP0) == 1
    assert _assigned(table) == -1  # the next assignment: rebuilt from the start
    table.apply_changelog_batch([_event(0, K, b'{"by":"before"}', b"5 late"), *log])
    assert table.stored(K) == b'{"by":"before"}' and skipped == [[K]]
    assert 0 not in table._rebuild
    assert table.data.persisted_offset(TP0) == 2  # the hold ended with the rebuild


def test_a_rebuild_never_marks_its_partition_again(tmp_path):
    """A late record with the very bytes of an earlier value of its key (a rewrite resends a
    stored value byte for byte): the rebuild applied the earlier one in a previous batch, and
    its store is the rebuild's, not a local write — not marked again (it was: every later
    assignment dropped the store and read the partition from offset 0)."""
    value = b'{"state":"accepted","by":"L"}'
    log = [_claim(0, 5, "L"), _event(1, K, value, b"5 L"), _claim(2, 6, "W"),
           _event(3, K, value, b"5 L")]
    table, skipped = _table(tmp_path, "W")
    table._suspect(0, [2], 6)  # marked for a rebuild, for any reason
    assert _assigned(table) == -1
    table.apply_changelog_batch(log[:2])
    table.apply_changelog_batch(log[2:])
    assert 0 not in table._rebuild and skipped == [[K]]
    table._send = lambda *args: None  # type: ignore[method-assign]
    table.claim([0], 6)  # the restore complete: its claim, and the store current
    assert _assigned(table) != -1


# -- a local store left behind longer than the changelog keeps its tombstones ----------------

def _stale_setup(tmp_path, *, age_s: float | None, held_before: bool = False):
    """W's store holds K pending, persisted at offset 10; its "current" stamp is ``age_s``
    old (None: none); the worker is in generation 9 and held the partition in 8 or not."""
    import os
    import time

    table, _ = _table(tmp_path, "W", holds=LATE, persisted=10)
    table.generation = lambda: 9
    table.held = lambda partition, generation: held_before and generation >= 8
    current = table._current_file(0)
    if age_s is not None:
        current.parent.mkdir(parents=True, exist_ok=True)
        current.touch()
        then = time.time() - age_s
        os.utime(current, (then, then))
    return table


def test_a_store_left_behind_past_the_tombstones_retention_is_read_from_the_start(tmp_path):
    """The partition went to another owner, which settled K and, weeks later, forgot it
    (a tombstone); compaction then dropped K's records and the tombstone. Back to W, its
    store resumed from its persisted offset kept K pending for ever: the sweep recovered it
    and sent a second, different outcome for an event decided weeks before."""
    table = _stale_setup(tmp_path, age_s=2 * 24 * 3600)
    assert _assigned(table) == -1  # read again from the changelog's start
    assert table.stored(K) is None  # the stale store was dropped
    assert 0 in table._rebuilding


@pytest.mark.parametrize("age_s, held_before", [(600, False), (2 * 24 * 3600, True)])
def test_a_recent_store_or_a_kept_partition_is_restored_in_place(tmp_path, age_s,
                                                                 held_before):
    table = _stale_setup(tmp_path, age_s=age_s, held_before=held_before)
    assert _assigned(table) == 10  # resumes at its persisted offset
    assert table.stored(K) == LATE


def test_a_store_not_known_current_is_read_from_the_start(tmp_path):
    """A store from before the stamp (or whose stamp is gone): its age is not known."""
    table = _stale_setup(tmp_path, age_s=None)
    assert _assigned(table) == -1 and table.stored(K) is None


def test_an_assignment_or_a_restore_does_not_stamp_the_store_current(tmp_path):
    """Only a store caught up is current: one stamped at its assignment, or by a restore's
    batches, then cut short and restarted quickly, would resume from its offset for ever."""
    table = _stale_setup(tmp_path, age_s=13 * 3600, held_before=True)
    assert _assigned(table) == 10  # kept: restored in place
    table.apply_changelog_batch([_event(11, "801K00000000003AAA", OWNERS, b"9 other")])
    assert table._current_file(0).stat().st_mtime < time.time() - 12 * 3600


def test_a_held_partition_not_written_for_hours_stays_current(tmp_path):
    """The stamp was renewed only by writes and assignments: after a quiet night, a quick
    restart rebuilt every quiet partition from the changelog's start, saying its store was
    last current 13 h ago when it was current until the restart."""
    import time

    table = _stale_setup(tmp_path, age_s=13 * 3600)
    table.touch_held(lambda: {0}, lambda partition: True)  # the sweep, the lease holding
    assert time.time() - table._current_file(0).stat().st_mtime < 60
    table.held = lambda partition, generation: False  # then a quick restart
    assert _assigned(table) == 10 and table.stored(K) == LATE


def test_a_partition_whose_lease_does_not_hold_is_not_stamped(tmp_path):
    table = _stale_setup(tmp_path, age_s=13 * 3600)
    table.touch_held(lambda: {0}, lambda partition: False)  # resumed from a pause: lost
    assert _assigned(table) == -1


def test_a_sweep_straddling_a_rebalance_stamps_no_partition_just_assigned(tmp_path):
    """The sweep checked for a rebalance before its scan only: one begun meanwhile had
    assigned a partition whose store was left behind days ago, the sweep stamped it current,
    and its restore then resumed the stale store instead of rebuilding it."""
    import asyncio
    from types import SimpleNamespace

    from common.clock import lease_clock
    from streams.app import Worker
    from streams.lease import OwnershipLease

    table = _stale_setup(tmp_path, age_s=2 * 24 * 3600)
    lease = OwnershipLease(session_timeout_s=10, margin_s=2)
    rebalancing = [False]

    async def run_once() -> None:
        rebalancing[0] = True  # faust sets app.rebalancing in the revoke callback
        lease.rebalancing()
        lease.synced(9, lease_clock())
        lease.assigned([0], 9)
        await asyncio.sleep(0)

    async def nothing(*args: object, **kwargs: object) -> int:
        return 0

    worker = SimpleNamespace(
        _rebalancing=lambda: rebalancing[0], sweeper=SimpleNamespace(run_once=run_once),
        idem=table, intents=SimpleNamespace(touch_held=lambda *a: None), lease=lease,
        durable=nothing, repair=SimpleNamespace(check_idle=nothing),
        changelogs=SimpleNamespace(high=None), _crash=lambda exc: None)
    asyncio.run(Worker._sweep(worker))  # type: ignore[arg-type]
    assert _assigned(table) == -1  # rebuilt, as its age says


def test_a_changelog_keeping_tombstones_an_hour_makes_a_store_of_two_hours_stale(tmp_path):
    """The intents changelog's delete.retention.ms altered to 1 h (an unsafe drift the worker
    only logs): a store left behind 2 h was resumed from its offset — under half the
    declared day — though the tombstones of that time were gone."""
    table = _stale_setup(tmp_path, age_s=2 * 3600)
    table.stale_after_s = 3600 / 2  # what the worker sets from the topic's 1 h
    assert _assigned(table) == -1 and table.stored(K) is None
