"""An owner's flush meets a late writer's records while its lease does not answer (the late
writer's rejoin is a rebalance under way), and the owner keeps the partition (decision 0016).

The flush cannot tell then whose records are the late ones, and remembers its own as
suspects, the partition marked for a rebuild from the changelog's start. Once the rebalance
ended with the partition still held without a break since the suspects' generation, they
were not late: the rebuild would only take the late writer's values (applied in offset
order, after the owner's) — after which the repair finds the store equal to the changelog
and rewrites nothing, and the sweep acts on the late writer's pending intent or unsent
decision. The held rule applies instead: the store is kept, the restore in place leaves the
late records out, and the repair rewrites the changelog's end."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from faust.types import TP

from streams.faust_seam.writer import Tally
from streams.lease import OwnershipLease
from streams.repair import ChangelogRepair
from tests.streams.test_tables import _durable_table

Q, R = "801Q00000000001AAA", "801R00000000001AAA"
OWNER = b'{"state":"accepted","by":"owner"}'
LATE = b'{"state":"pending","by":"late-writer"}'
CHANGELOG = "rb-test-idem-changelog"


def _event(tp: TP, offset: int, key: str, value: bytes | None) -> SimpleNamespace:
    """A changelog event as faust's recovery hands it to ``apply_changelog_batch``."""
    return SimpleNamespace(message=SimpleNamespace(
        tp=tp, partition=tp.partition, offset=offset, key=key.encode(), value=value))


def _owner_meets_late_records(tmp_path, *, kept: bool, give_up: bool = False) -> dict:
    """The owner restored and claimed partition 0 in generation 7 and wrote Q (offset 0); a
    late writer's Q lands at 1; the owner's R at 2, acknowledged while a rebalance is under
    way. ``kept``: the rebalance gives the partition back in generation 8 (held throughout);
    else in 9 (the run of generations broken: held by someone else in between).
    ``give_up``: the rebalance outlasts the flush's repair job's wait, which gives up."""
    table = _durable_table("rb-test", tmp_path, partitions=1)
    store = table.data
    table._changelog_name = CHANGELOG
    tp = TP(CHANGELOG, 0)
    lease = OwnershipLease(session_timeout_s=30, margin_s=5, clock=lambda: 0.0)
    lease.synced(7, 0.0)
    lease.assigned([0], 7)
    table.generation = lambda: lease.generation
    table.held = lease.held_since
    table._claimed[0] = 7
    changelog = []
    store._db_for_partition(0).put(Q.encode(), OWNER)
    changelog.append(_event(tp, 0, Q, OWNER))
    store.set_persisted_offset(tp, 0)
    table._tail[0] = 0
    changelog.append(_event(tp, 1, Q, LATE))
    store._db_for_partition(0).put(R.encode(), b'{"n":1}')
    changelog.append(_event(tp, 2, R, b'{"n":1}'))
    result: dict = {}

    async def go() -> None:
        tally = Tally(asyncio.get_running_loop(), 7)
        tally.pending = 1
        tally.ack(0, 2)
        lease.rebalancing()  # the late writer's rejoin: the lease does not answer

        def read(_topic, _partition, start, end):
            return {e.message.key: e.message.value for e in changelog
                    if start <= e.message.offset <= end}

        async def commit() -> None:
            pass
        # the rebalance and the restore: the repair waits them out (a restore is waited
        # for whatever its length; to give up, the lease must not answer while none runs)
        busy = [not give_up]
        repair = ChangelogRepair(lease, read, commit, wait_s=0.2 if give_up else 5,
                                 busy=lambda: busy[0], retry_s=0.0)
        table.on_foreign = repair.foreign
        rewritten: list[str] = []
        table.rewrite = rewritten.append  # type: ignore[method-assign]
        table._persist_offsets(tally)
        result["marked"] = 0 in table._rebuild
        if give_up:
            await asyncio.wait_for(repair.idle(), 10)
            result["given_up"] = repair.given_up
        generation = 8 if kept else 9
        lease.synced(generation, 0.0)
        lease.assigned([0], generation)
        # faust's recovery asks where to read the kept partition from, and reads from there
        # (the record at that offset again: a restore seeks to it)
        start = table.persisted_offset(tp)
        result["start"] = start
        start = -1 if start is None else start
        table.apply_changelog_batch([e for e in changelog if e.message.offset >= max(start, 0)])
        busy[0] = False
        await asyncio.wait_for(repair.idle(), 10)
        result.update(rewritten=rewritten, Q=table.stored(Q), R=table.stored(R),
                      persisted=store.persisted_offset(tp), rebuild=0 in table._rebuild,
                      suspects=dict(table._suspects.get(0, {})),
                      claimed=table._claimed.get(0))
    asyncio.run(go())
    return result


def test_an_owner_that_kept_its_partition_keeps_its_store_and_repairs_the_late_records(
        tmp_path):
    result = _owner_meets_late_records(tmp_path, kept=True)
    assert result["marked"], "the flush could not tell: its own records remembered"
    assert result["start"] != -1, "held throughout since the suspects: no rebuild from 0"
    assert result["Q"] == OWNER and result["R"] == b'{"n":1}'
    assert set(result["rewritten"]) == {Q}  # the changelog made to end with the owner's Q
    assert result["persisted"] == 2 and not result["rebuild"]
    assert result["suspects"] == {} and result["claimed"] == 7


def test_a_kept_partition_whose_flush_repair_gave_up_is_repaired_by_the_restore(tmp_path):
    """The rebalance outlasted the flush's repair job (its wait gave up): the restore in
    place must hand the whole range past the store's offset to the repair again — else the
    store holds the owner's Q while the changelog ends with the late writer's, and the
    partition's next owner restores that."""
    result = _owner_meets_late_records(tmp_path, kept=True, give_up=True)
    assert result["given_up"] == 1 and result["start"] != -1
    assert result["Q"] == OWNER
    assert Q in result["rewritten"], "store kept but the changelog still ends with the late Q"


def test_an_owner_whose_hold_was_broken_since_its_suspect_records_rebuilds(tmp_path):
    """The partition was someone else's in between (generation 8): its records may be the
    late ones, and its store is read again from the changelog's start, as before."""
    result = _owner_meets_late_records(tmp_path, kept=False)
    assert result["marked"] and result["start"] == -1
    assert not result["rebuild"] and result["claimed"] is None
    assert result["suspects"] == {2: 7}
