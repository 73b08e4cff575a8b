"""The stall watchdog's decision (streams.watchdog), without a broker."""

from __future__ import annotations

from streams.watchdog import Progress, StallWatchdog, is_stalled, pending_records


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_pending_counts_only_owned_partitions_with_records_left():
    rows = [(0, 10, 10), (1, 5, 9), (2, 0, 3)]
    assert pending_records(rows, {0, 1}) == {1: 4}
    assert pending_records(rows, set()) == {}


def test_stalled_needs_both_pending_records_and_idle_time():
    assert is_stalled({1: 4}, idle_s=30, timeout_s=20)
    assert not is_stalled({}, idle_s=3000, timeout_s=20)  # an idle pipeline is no stall
    assert not is_stalled({1: 4}, idle_s=19, timeout_s=20)


def test_a_running_batch_is_never_idle():
    clock = Clock()
    p = Progress(clock)
    p.started()
    clock.now += 10_000  # e.g. waiting for Salesforce to come back
    assert p.idle_for() == 0.0
    p.finished()
    clock.now += 5
    assert p.idle_for() == 5


def _watchdog(clock, rows, owned, *, recovery=None, reseek=None):
    stalls: list[str] = []
    progress = Progress(clock)
    lag_calls = []

    def lag():
        lag_calls.append(1)
        return rows
    dog = StallWatchdog(lag=lag, owned=lambda: owned, progress=progress, timeout_s=20,
                        on_stall=stalls.append, recovery_position=recovery, reseek=reseek)
    return dog, progress, stalls, lag_calls


def test_check_fires_once_idle_with_work_and_names_the_partitions():
    clock = Clock()
    dog, _, stalls, lag_calls = _watchdog(clock, [(0, 0, 7), (1, 3, 3)], {0, 1})
    assert dog.check_once() is None
    assert lag_calls == []  # not idle long enough: no broker round trip
    clock.now += 21
    assert dog.check_once() == "exit"
    assert "7 records wait on owned partitions [0]" in stalls[0]


def test_reseek_first_then_exit_if_it_did_not_help():
    clock = Clock()
    reseeks = []
    dog, progress, stalls, _ = _watchdog(clock, [(0, 0, 7)], {0},
                                         reseek=lambda: reseeks.append(1))
    clock.now += 11
    assert dog.check_once() == "reseek"
    clock.now += 5
    assert dog.check_once() is None  # one re-seek per stall
    clock.now += 5
    assert dog.check_once() == "exit"
    assert len(reseeks) == 1 and len(stalls) == 1


def test_a_reseek_that_helps_ends_the_stall():
    clock = Clock()
    dog, progress, stalls, _ = _watchdog(clock, [(0, 0, 7)], {0}, reseek=lambda: None)
    clock.now += 11
    assert dog.check_once() == "reseek"
    progress.started()
    progress.finished()  # batches run again
    clock.now += 15
    assert dog.check_once() == "reseek"  # a new stall later gets its own re-seek
    assert stalls == []


def test_no_stall_without_work_or_on_partitions_of_another_worker():
    clock = Clock()
    dog, _, stalls, _ = _watchdog(clock, [(0, 0, 7)], {1})
    clock.now += 100
    assert dog.check_once() is None
    assert stalls == []


def test_a_table_restore_that_advances_counts_as_progress():
    clock = Clock()
    position = [0]
    dog, _, stalls, _ = _watchdog(clock, [(0, 0, 7)], {0}, recovery=lambda: position[0])
    for _ in range(5):
        clock.now += 15
        position[0] += 100  # the changelog is being read
        assert dog.check_once() is None
    clock.now += 21  # the restore stopped moving
    assert dog.check_once() == "exit"
    assert stalls


def test_records_no_member_owns_make_a_worker_without_partitions_exit():
    """A group whose assignment left the requests partitions out (seen when the broker was
    frozen while the worker started: faust's assignor found no topic and assigned nothing):
    nobody reads them, so the worker exits to be restarted — whatever it owns itself."""
    clock = Clock()
    stalls: list[str] = []
    asked: list[set[int]] = []

    def orphans(partitions: set[int]) -> set[int]:
        asked.append(set(partitions))
        return partitions - {2}  # another member owns partition 2
    dog = StallWatchdog(lag=lambda: [(0, 0, 5), (1, 3, 3), (2, 0, 9)], owned=lambda: set(),
                        progress=Progress(clock), timeout_s=20, on_stall=stalls.append,
                        orphans=orphans)
    clock.now += 15
    assert dog.check_once() is None and asked == []  # not yet the whole timeout
    clock.now += 6
    assert dog.check_once() == "exit"
    assert asked == [{0, 2}]
    assert "5 records wait on partitions [0] that no member of the group owns" in stalls[0]


def test_an_idle_extra_worker_is_no_stall_when_others_own_every_partition():
    clock = Clock()
    stalls: list[str] = []
    dog = StallWatchdog(lag=lambda: [(0, 0, 5), (1, 0, 9)], owned=lambda: set(),
                        progress=Progress(clock), timeout_s=20, on_stall=stalls.append,
                        orphans=lambda partitions: set())
    clock.now += 100
    assert dog.check_once() is None and stalls == []
