"""The stall watchdog's decision (streams.watchdog), without a broker."""

from __future__ import annotations

import pytest
from confluent_kafka import ConsumerGroupState, Node, TopicPartition
from confluent_kafka.admin import ConsumerGroupDescription, MemberAssignment, MemberDescription

from common.lag import unowned_partitions
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


def _watchdog(clock, rows, owned, *, recovery=None, reseek=None, timeout_s=20, interval_s=2):
    stalls: list[str] = []
    progress = Progress(clock)
    lag_calls = []

    def lag():
        lag_calls.append(1)
        return rows
    dog = StallWatchdog(lag=lag, owned=lambda: owned, progress=progress, timeout_s=timeout_s,
                        on_stall=stalls.append, recovery_position=recovery, reseek=reseek,
                        interval_s=interval_s)
    return dog, progress, stalls, lag_calls


def _looks(dog, clock, seconds, every=2):
    """The watchdog's thread: one look every ``every`` s for ``seconds``; → {t: what it did}
    (t since the first look's start) for the looks that did something, up to an exit (the
    process is gone)."""
    done = {}
    for t in range(every, seconds + 1, every):
        clock.now += every
        what = dog.check_once()
        if what is not None:
            done[t] = what
        if what == "exit":
            break
    return done


def test_check_fires_once_idle_with_work_and_names_the_partitions():
    clock = Clock()
    dog, _, stalls, lag_calls = _watchdog(clock, [(0, 0, 7), (1, 3, 3)], {0, 1})
    assert dog.check_once() is None
    assert lag_calls == []  # not idle long enough: no broker round trip
    # first seen waiting at the look at 2 s: the whole timeout from there
    assert _looks(dog, clock, 30) == {22: "exit"}
    assert "7 records wait on owned partitions [0]" in stalls[0]


def test_reseek_first_then_exit_if_it_did_not_help():
    clock = Clock()
    reseeks = []
    dog, progress, stalls, _ = _watchdog(clock, [(0, 0, 7)], {0},
                                         reseek=lambda: reseeks.append(1))
    # a continuous stall: seen at 2 s, re-seek at half the timeout, exit at the whole
    assert _looks(dog, clock, 30) == {12: "reseek", 22: "exit"}  # one re-seek per stall
    assert len(reseeks) == 1 and len(stalls) == 1


def test_a_reseek_that_helps_ends_the_stall():
    clock = Clock()
    dog, progress, stalls, _ = _watchdog(clock, [(0, 0, 7)], {0}, reseek=lambda: None)
    assert _looks(dog, clock, 12) == {12: "reseek"}
    progress.started()
    progress.finished()  # batches run again
    assert _looks(dog, clock, 16) == {12: "reseek"}  # a new stall later gets its own re-seek
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
    # the restore stopped moving: the records have waited since the first look after it
    assert _looks(dog, clock, 24) == {22: "exit"}
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
                        orphans=orphans, interval_s=2)
    assert _looks(dog, clock, 20) == {} and asked == []  # first seen at 2 s: not yet
    # asked once they waited the whole timeout; the same answer twice in a row exits
    assert _looks(dog, clock, 4) == {4: "exit"}
    assert asked == [{0, 2}, {0, 2}]
    assert "5 records wait on partitions [0] that no member of the group owns" in stalls[0]


def test_an_idle_extra_worker_is_no_stall_when_others_own_every_partition():
    clock = Clock()
    stalls: list[str] = []
    dog = StallWatchdog(lag=lambda: [(0, 0, 5), (1, 0, 9)], owned=lambda: set(),
                        progress=Progress(clock), timeout_s=20, on_stall=stalls.append,
                        orphans=lambda partitions: set())
    clock.now += 100
    assert dog.check_once() is None and stalls == []


def test_records_that_arrive_after_a_quiet_spell_get_the_whole_timeout():
    """The stall is timed from when the records were first seen waiting, not from the
    worker's last event: a record landing after 10 quiet minutes exited the worker at the
    first look (no re-seek; and a record the agent had not admitted yet killed a healthy
    worker)."""
    clock = Clock()
    rows: list[tuple[int, int, int]] = []
    reseeks, stalls = [], []
    dog = StallWatchdog(lag=lambda: rows, owned=lambda: {0}, progress=Progress(clock),
                        timeout_s=120, on_stall=stalls.append, reseek=lambda: reseeks.append(1))
    clock.now += 600
    rows[:] = [(0, 41, 42)]  # pending {0: 1}
    assert dog.check_once() is None
    clock.now += 60
    assert dog.check_once() == "reseek"
    clock.now += 60  # no progress since
    assert dog.check_once() == "exit"
    assert len(reseeks) == 1 and "1 records wait on owned partitions [0]" in stalls[0]


def test_a_record_the_agent_takes_right_after_the_look_is_no_stall():
    clock = Clock()
    rows: list[tuple[int, int, int]] = [(0, 41, 41)]
    progress = Progress(clock)
    stalls: list[str] = []
    dog = StallWatchdog(lag=lambda: rows, owned=lambda: {0}, progress=progress, timeout_s=20,
                        on_stall=stalls.append, reseek=lambda: None, interval_s=2)
    assert _looks(dog, clock, 600) == {}
    rows[:] = [(0, 41, 42)]  # committed, not yet admitted by the agent
    assert dog.check_once() is None
    progress.started()
    progress.finished()
    rows[:] = [(0, 42, 42)]
    assert _looks(dog, clock, 600) == {} and stalls == []


def test_committed_offsets_that_move_restart_the_wait():
    clock = Clock()
    rows = [(0, 0, 50)]
    stalls: list[str] = []
    dog = StallWatchdog(lag=lambda: rows, owned=lambda: {0}, progress=Progress(clock),
                        timeout_s=20, on_stall=stalls.append, reseek=lambda: None, interval_s=2)
    clock.now += 600
    for _ in range(20):  # the group's offsets keep moving
        rows[:] = [(0, rows[0][1] + 1, 50)]
        clock.now += 2
        assert dog.check_once() is None
    assert _looks(dog, clock, 24) == {10: "reseek", 20: "exit"}  # until they stop


def test_records_of_an_owned_partition_first_seen_waiting_while_its_neighbour_moves():
    """Per partition: records of partition 1 seen waiting later than partition 0's get
    their own time."""
    clock = Clock()
    rows = [(0, 0, 5), (1, 0, 0)]
    stalls: list[str] = []
    dog = StallWatchdog(lag=lambda: rows, owned=lambda: {0, 1}, progress=Progress(clock),
                        timeout_s=20, on_stall=stalls.append, interval_s=2)
    assert _looks(dog, clock, 10) == {}
    rows[:] = [(0, 5, 5), (1, 0, 3)]  # 0 committed (progress not seen yet), 1 waits now
    assert _looks(dog, clock, 20) == {}  # not at 22 s, partition 0's time
    assert _looks(dog, clock, 2) == {2: "exit"} and "partitions [1]" in stalls[0]


def test_orphans_that_arrive_after_a_quiet_spell_wait_the_whole_timeout_too():
    clock = Clock()
    rows: list[tuple[int, int, int]] = [(3, 10, 10)]
    asked: list[set[int]] = []
    stalls: list[str] = []

    def orphans(partitions: set[int]) -> set[int]:
        asked.append(set(partitions))
        return set(partitions)
    dog = StallWatchdog(lag=lambda: rows, owned=lambda: set(), progress=Progress(clock),
                        timeout_s=20, on_stall=stalls.append, orphans=orphans, interval_s=2)
    assert _looks(dog, clock, 600) == {}
    rows[:] = [(3, 10, 14)]
    assert _looks(dog, clock, 20) == {} and asked == []  # first seen at 2 s
    assert _looks(dog, clock, 4) == {4: "exit"} and asked == [{3}, {3}]
    assert "4 records wait on partitions [3]" in stalls[0]


def test_an_orphan_verdict_must_hold_on_two_consecutive_looks():
    """One describe answered in a rebalance (members without assignments) is not enough:
    the next look must find the same partitions without an owner."""
    clock = Clock()
    answers = [{0, 1}, set(), {1}, {0}, {0}]
    stalls: list[str] = []
    dog = StallWatchdog(lag=lambda: [(0, 0, 5), (1, 0, 9)], owned=lambda: set(),
                        progress=Progress(clock), timeout_s=20, on_stall=stalls.append,
                        orphans=lambda partitions: answers.pop(0), interval_s=2)
    assert _looks(dog, clock, 20) == {}
    assert _looks(dog, clock, 8) == {}  # {0, 1} then none, then {1} then {0}: never twice
    assert _looks(dog, clock, 2) == {2: "exit"} and "5 records wait on partitions [0]" in stalls[0]


class _Future:
    def __init__(self, value):
        self.value = value

    def result(self, timeout=None):
        return self.value


class _Admin:
    def __init__(self, state, assignments):
        self.state, self.assignments = state, assignments

    def describe_consumer_groups(self, groups):
        members = [MemberDescription(f"m{i}", f"c{i}", "h",
                                     MemberAssignment([TopicPartition(t, p) for t, p in a]))
                   for i, a in enumerate(self.assignments)]
        return {groups[0]: _Future(ConsumerGroupDescription(
            groups[0], False, members, "range", self.state, Node(1, "h", 9092)))}


@pytest.mark.parametrize("state", [ConsumerGroupState.PREPARING_REBALANCING,
                                   ConsumerGroupState.COMPLETING_REBALANCING,
                                   ConsumerGroupState.UNKNOWN, ConsumerGroupState.DEAD])
def test_a_group_in_a_rebalance_cannot_tell_who_owns_what(state):
    """Outside Stable the broker's classic coordinator describes members without their
    assignments: every partition looked unowned and a healthy idle worker exited 75."""
    admin = _Admin(state, [[], []])
    assert unowned_partitions(admin, "g", "req", {0, 1, 2}) == set()


def test_a_stable_group_names_the_partitions_no_member_owns():
    admin = _Admin(ConsumerGroupState.STABLE, [[("req", 0), ("other", 1)], [("req", 2)], []])
    assert unowned_partitions(admin, "g", "req", {0, 1, 2}) == {1}
    assert unowned_partitions(admin, "g", "req", {0, 2}) == set()


def test_an_empty_group_owns_nothing():
    admin = _Admin(ConsumerGroupState.EMPTY, [])
    assert unowned_partitions(admin, "g", "req", {0, 1}) == {0, 1}


def test_a_stable_group_that_leaves_a_partition_out_still_exits_the_worker():
    clock = Clock()
    stalls: list[str] = []
    admin = _Admin(ConsumerGroupState.STABLE, [[("req", 0)], []])
    dog = StallWatchdog(lag=lambda: [(0, 0, 0), (1, 0, 6)], owned=lambda: set(),
                        progress=Progress(clock), timeout_s=20, on_stall=stalls.append,
                        orphans=lambda ps: unowned_partitions(admin, "g", "req", ps),
                        interval_s=2)
    assert _looks(dog, clock, 24) == {24: "exit"}
    assert "6 records wait on partitions [1] that no member of the group owns" in stalls[0]


def test_a_rebalancing_group_never_exits_an_idle_worker():
    clock = Clock()
    stalls: list[str] = []
    admin = _Admin(ConsumerGroupState.PREPARING_REBALANCING, [[], []])
    dog = StallWatchdog(lag=lambda: [(0, 5, 5), (3, 10, 14)], owned=lambda: {0},
                        progress=Progress(clock), timeout_s=20, on_stall=stalls.append,
                        reseek=lambda: None,
                        orphans=lambda ps: unowned_partitions(admin, "g", "req", ps),
                        interval_s=2)
    assert _looks(dog, clock, 600) == {} and stalls == []


def test_the_workers_orphan_check_describes_the_group_in_a_child_process(monkeypatch):
    """librdkafka#4605: a coordinator request of the admin API that fails aborts the whole
    process (decision 0008; in-process describe_consumer_groups died -6 in the first round
    of a coordinator failover). The worker's orphan check asks through a child process."""
    from confluent_kafka.admin import AdminClient

    from common import group_describe
    from common.group_describe import GroupAssignment, GroupDescription, GroupMember
    from streams import watchdog

    def in_process(*_a, **_kw):
        raise AssertionError("describe_consumer_groups in the worker process")
    monkeypatch.setattr(AdminClient, "describe_consumer_groups", in_process)
    asked: list[tuple[str, float]] = []

    def isolated(_conn, group, timeout_s=30.0, **_kw):
        asked.append((group, timeout_s))
        return GroupDescription(group, ConsumerGroupState.STABLE, [GroupMember(
            "m", "c", "h", GroupAssignment([TopicPartition("req", 0)]))], None)
    monkeypatch.setattr(group_describe, "describe_group_isolated", isolated)
    assert watchdog.unowned("127.0.0.1:1", "g", "req", {0, 1}) == {1}
    assert asked == [("g", 10.0)]


def test_a_worker_waiting_in_a_rebalance_is_no_stall_up_to_its_limit():
    """WORKER_SESSION_TIMEOUT_S=180: the coordinator holds every healthy member in JoinGroup
    until a dead member's session runs out. Their events released at the revoke, records
    waiting on the partitions they still listed: each re-seeked at 70 s and exited 75 at
    130 s, without leaving the group — whose restarts started the same wait again."""
    clock = Clock()
    rebalancing = [True]
    reseeks: list[int] = []
    stalls: list[str] = []
    dog = StallWatchdog(lag=lambda: [(0, 0, 9)], owned=lambda: {0}, progress=Progress(clock),
                        timeout_s=120, interval_s=10, on_stall=stalls.append,
                        reseek=lambda: reseeks.append(1), rebalancing=lambda: rebalancing[0],
                        rebalance_limit_s=210)
    assert _looks(dog, clock, 200, every=10) == {}
    assert reseeks == [] and stalls == []
    # the rebalance ends; the records still wait: the whole timeout from the first look after
    rebalancing[0] = False
    assert _looks(dog, clock, 140, every=10) == {70: "reseek", 130: "exit"}


def test_a_rebalance_that_never_ends_is_a_stall_after_its_limit():
    """faust wedged in its rebalance (app.rebalancing never cleared): the waits count again
    once the rebalance has outlasted the coordinator's timeout and its margin."""
    clock = Clock()
    stalls: list[str] = []
    dog = StallWatchdog(lag=lambda: [(0, 0, 9)], owned=lambda: {0}, progress=Progress(clock),
                        timeout_s=120, interval_s=10, on_stall=stalls.append,
                        reseek=lambda: None, rebalancing=lambda: True, rebalance_limit_s=90)
    # seen rebalancing at 10 s; from 100 s the records wait: half the timeout, then all
    assert _looks(dog, clock, 400, every=10) == {160: "reseek", 220: "exit"}
    assert "9 records wait on owned partitions [0]" in stalls[0]
