"""Per-Order lanes (streams.lanes) with the real handler, fake Salesforce and WHMCS: a hung
call holds only its own Order and its partition's commit point; one Order's events run in
order; the window pushes back; guard reads and durability flushes are shared."""

from __future__ import annotations

import asyncio

from common.whmcs import AddOrderResult
from streams.checkpoint import Checkpoint
from streams.lanes import Admitted, Lanes
from tests.streams.factories import order, request_value
from tests.streams.flowkit import Kit, records


def oid(n: int) -> str:
    return f"801L{n:011d}AAA"


class Orders:
    """Every Order asked for exists and is Activating; counts the guard queries."""

    def __init__(self) -> None:
        self.queries: list[int] = []

    def query(self, soql: str) -> list[dict]:
        ids = [part.strip(" '") for part in soql.split("IN (")[1].rstrip(")").split(",")]
        self.queries.append(len(ids))
        return [order(order_id=i, client="1010") for i in ids]


class SlowWhmcs:
    """AddOrder takes ``delay_s``; the Orders in ``hang`` wait until ``release`` is set."""

    def __init__(self, delay_s: float = 0.0, hang: frozenset[str] = frozenset()) -> None:
        self.delay_s, self.hang = delay_s, hang
        self.release = asyncio.Event()
        self.created: list[str] = []
        self.in_flight = 0
        self.most_in_flight = 0
        self.next_id = 0

    async def add_order(self, params, *, send_deadline=None):
        order_id = params["notes"].split()[0].split("=")[1]
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if order_id in self.hang:
                await self.release.wait()
            await asyncio.sleep(self.delay_s)
        finally:
            self.in_flight -= 1
        self.created.append(order_id)
        self.next_id += 1
        return AddOrderResult(order_id=self.next_id)

    async def accept_order(self, order_id, *, autosetup=True, send_deadline=None):
        return None

    async def find_orders_by_marker(self, client_id, sf_order_id):
        return []


def test_a_hung_call_holds_its_order_and_its_partitions_commit_point_only():
    async def go():
        whmcs = SlowWhmcs(hang=frozenset({oid(0)}))
        kit = Kit(salesforce=Orders(), whmcs_client=whmcs, parallelism=8)
        values = [request_value(oid(i), event_uuid=f"h{i}") for i in range(101)]
        task = asyncio.ensure_future(kit.process(records(values, partition=2)))
        while len(kit.emitter.sent) < 100:
            await asyncio.sleep(0.01)
        await kit.checkpoint.commit()
        held = dict(kit.commits[-1]) if kit.commits else {}
        assert {o["order_id"] for o in kit.emitter.sent} == {oid(i) for i in range(1, 101)}
        whmcs.release.set()
        await task
        await kit.checkpoint.commit()
        return held, kit.commits[-1], kit
    held, after, kit = asyncio.run(go())
    assert held == {}  # offset 0 (the hung Order) is the first: nothing may be committed
    assert after == {2: 101}  # once it finished: past all 101
    assert [o["status"] for o in kit.emitter.sent].count("Provisioned") == 101


def test_one_orders_events_run_in_order_different_orders_overlap():
    async def go():
        whmcs = SlowWhmcs(delay_s=0.05)
        kit = Kit(salesforce=Orders(), whmcs_client=whmcs, parallelism=8)
        values = [request_value(oid(1), event_uuid="a1", idem_key="k1"),
                  request_value(oid(1), event_uuid="a2", idem_key="k2"),
                  request_value(oid(2), event_uuid="b1", idem_key="k3"),
                  request_value(oid(3), event_uuid="c1", idem_key="k4")]
        await kit.process(records(values))
        return whmcs, kit
    whmcs, kit = asyncio.run(go())
    sent = [o["event_uuid"] for o in kit.emitter.sent]
    assert sent.index("a1") < sent.index("a2")
    # the second event of Order 1 finds it provisioned: one WHMCS order per Order
    statuses = {o["event_uuid"]: (o["status"], o["error_code"]) for o in kit.emitter.sent}
    assert statuses["a2"] == ("Skipped", "ALREADY_PROVISIONED")
    assert sorted(whmcs.created) == [oid(1), oid(2), oid(3)]
    assert whmcs.most_in_flight >= 2  # Orders 1, 2 and 3 overlapped


def test_orders_arriving_together_share_guard_reads_and_flushes():
    async def go():
        sf = Orders()
        kit = Kit(salesforce=sf, whmcs_client=SlowWhmcs(), parallelism=16, linger_s=0.05)
        values = [request_value(oid(i), event_uuid=f"g{i}") for i in range(250)]
        await kit.process(records(values))
        return sf, kit
    sf, kit = asyncio.run(go())
    assert len(kit.emitter.sent) == 250
    assert sorted(sf.queries) == [50, 200]  # 200 ids per SOQL query at most
    # each Order needs two durable moments (intent, outcome); shared, far fewer flushes
    assert kit.tables.flushes < 250


def test_the_window_pushes_back_and_revoke_releases_everything():
    async def go():
        released: list[object] = []
        checkpoint = Checkpoint(lambda w: {}, commit=lambda o: asyncio.sleep(0, True),
                                seek=lambda p, o: None)
        lanes = Lanes(checkpoint, released.append, max_in_flight=2)
        gate = asyncio.Event()

        async def work() -> bool:
            await gate.wait()
            return True
        await lanes.admit("A", Admitted(0, 0, "m0", work))
        await lanes.admit("B", Admitted(0, 1, "m1", work))
        third = asyncio.ensure_future(lanes.admit("C", Admitted(0, 2, "m2", work)))
        await asyncio.sleep(0.05)
        blocked = not third.done()
        count = lanes.revoke()  # a rebalance: everything in flight leaves the worker
        await asyncio.sleep(0.01)
        gate.set()
        await third
        await asyncio.sleep(0.05)
        return blocked, count, released, checkpoint
    blocked, count, released, checkpoint = asyncio.run(go())
    assert blocked  # the third waited for room
    assert count == 2 and released[:2] == ["m0", "m1"]
    assert "m2" in released  # admitted after the rebalance, finished normally
    assert checkpoint.unfinished() == 0


def test_an_event_of_a_revoked_generation_admitted_after_the_revoke_is_released_not_run():
    """The agent waits for room with the rest of its chunk when a rebalance revokes the
    partitions; those events must leave at once — faust's rebalance waits for them, and
    run they would only wait for a lease the rebalance cannot give back. An event fetched in
    the next generation runs."""
    async def go():
        released: list[object] = []
        ran: list[str] = []
        checkpoint = Checkpoint(lambda w: {}, commit=lambda o: asyncio.sleep(0, True),
                                seek=lambda p, o: None)
        lanes = Lanes(checkpoint, released.append, max_in_flight=1)
        gate = asyncio.Event()

        def work(name: str):
            async def run() -> bool:
                ran.append(name)
                await gate.wait()
                return True
            return run
        await lanes.admit("A", Admitted(0, 0, "m0", work("m0"), generation=3))
        waiting = asyncio.ensure_future(
            lanes.admit("B", Admitted(0, 1, "m1", work("m1"), generation=3)))
        await asyncio.sleep(0.05)
        blocked = not waiting.done()
        lanes.revoke()
        await asyncio.wait_for(waiting, 1)  # returns at once: no lease to wait for
        await lanes.run_alone(Admitted(0, 2, "m2", work("m2"), generation=3))
        in_flight_after_revoke = lanes.in_flight
        gate.set()
        await lanes.admit("C", Admitted(0, 5, "m5", work("m5"), generation=4))
        await asyncio.sleep(0.05)
        return blocked, released, ran, in_flight_after_revoke, checkpoint
    blocked, released, ran, in_flight, checkpoint = asyncio.run(go())
    assert blocked
    assert released[:3] == ["m0", "m1", "m2"] and in_flight == 0
    assert ran == ["m0", "m5"]  # m0 was running at the revoke; m1 and m2 never ran
    assert "m5" in released and checkpoint.unfinished() == 0


def committing():
    """``(commits, read, commit)`` for a Checkpoint: every offset a record, read from the
    last commit; the commits made, in order."""
    commits: list[dict[int, int]] = []

    def read(wanted):
        base = {p: commits[-1].get(p, 0) if commits else 0 for p in wanted}
        return {p: (base[p], list(range(base[p], end))) for p, end in wanted.items()}

    async def commit(offsets):
        commits.append(dict(offsets))
        return True
    return commits, read, commit


def test_a_partition_paused_behind_a_hung_event_resumes_after_the_next_commit():
    """Past the window behind one hung event, the partition pauses. The hung event finishes
    while later ones still run, and they finish after it: at every leave the span, counted
    from the commit point, is still wide. The next commit narrows it; the partition must
    resume then (it stayed paused until a rebalance, its Orders unread)."""
    commits, read, commit = committing()

    async def go():
        checkpoint = Checkpoint(read, commit=commit, seek=lambda _p, _o: None)
        paused, resumed = [], []
        lanes = Lanes(checkpoint, lambda _m: None, partition_window=20,
                      pause=paused.append, resume=resumed.append)
        first, later = asyncio.Event(), asyncio.Event()

        def waiting(gate: asyncio.Event):
            async def work() -> bool:
                await gate.wait()
                return True
            return work
        await lanes.admit(oid(0), Admitted(3, 0, None, waiting(first)))
        for offset in range(1, 26):
            await lanes.admit(oid(offset), Admitted(3, offset, None, waiting(later)))
        assert paused == [{3}]
        first.set()
        while lanes.in_flight > 25:
            await asyncio.sleep(0.01)
        later.set()
        while lanes.in_flight:
            await asyncio.sleep(0.01)
        assert resumed == []  # every leave saw the span from the last commit: still wide
        await checkpoint.commit()
        lanes.committed()
        return commits, resumed
    commits, resumed = asyncio.run(go())
    assert commits[-1] == {3: 26}
    assert resumed == [{3}]


def windowed(checkpoint: Checkpoint):
    """Lanes with a 20-offset window recording pauses and resumes, and two kinds of work:
    one that hangs until ``hung`` is set, one that finishes at once."""
    paused: list[set[int]] = []
    resumed: list[set[int]] = []
    lanes = Lanes(checkpoint, lambda _m: None, partition_window=20,
                  pause=paused.append, resume=resumed.append)
    hung = asyncio.Event()

    async def hangs() -> bool:
        await hung.wait()
        return True

    async def quick() -> bool:
        return True
    return lanes, paused, resumed, hung, hangs, quick


def test_a_partition_paused_behind_a_hung_event_stays_paused_while_the_rest_finish():
    """The window bounds what is held behind a hung event. The span was counted to the
    newest *unfinished* event: as the later events finished it fell to 1, and the first of
    them to leave resumed the partition — finished offsets piled up without bound."""
    async def go():
        checkpoint = Checkpoint(lambda w: {}, commit=lambda o: asyncio.sleep(0, True),
                                seek=lambda _p, _o: None)
        lanes, paused, resumed, hung, hangs, quick = windowed(checkpoint)
        await lanes.admit(oid(0), Admitted(3, 0, None, hangs))
        for offset in range(1, 26):
            await lanes.admit(oid(offset), Admitted(3, offset, None, quick))
        while lanes.in_flight > 1:
            await asyncio.sleep(0.01)
        span = checkpoint.span(3)
        hung.set()
        return paused, resumed, span
    paused, resumed, span = asyncio.run(go())
    assert paused == [{3}] and span == 26
    assert resumed == []  # the commit point has not moved: nothing may be admitted


def test_a_paused_partition_sought_back_to_an_unfinished_record_is_resumed():
    """The commit was held at a record the worker never finished (faust dropped it) and the
    consumer sought back to it; a paused partition is never fetched, so the record never
    came, the commit never moved and the partition stayed paused until a rebalance."""
    seeks: list[tuple[int, int]] = []

    def read(wanted):  # offset 5 is a record the worker never saw
        return {p: (0, list(range(0, end))) for p, end in wanted.items()}

    async def go():
        checkpoint = Checkpoint(read, commit=lambda o: asyncio.sleep(0, True),
                                seek=lambda p, o: seeks.append((p, o)))
        lanes, paused, resumed, hung, hangs, quick = windowed(checkpoint)
        for offset in [o for o in range(0, 30) if o != 5]:
            await lanes.admit(oid(offset), Admitted(3, offset, None,
                                                    hangs if offset == 29 else quick))
        while lanes.in_flight > 1:
            await asyncio.sleep(0.01)
        await checkpoint.commit()
        lanes.committed()
        hung.set()
        return paused, resumed
    paused, resumed = asyncio.run(go())
    assert seeks and seeks[0] == (3, 5)
    assert paused == [{3}] and resumed == [{3}]


def test_an_event_of_the_generation_being_revoked_is_released_though_none_came_before():
    """The revoke names the generation it revokes: the agent may hold a chunk of it not yet
    handed in (decoding it: a schema registry lookup) when no event of it reached the lanes
    yet. Handed in after the revoke, such an event must leave at once — run, it would wait
    for a lease the rebalance cannot give back, and faust's rebalance waits for it."""
    async def go():
        released: list[object] = []
        ran: list[str] = []
        checkpoint = Checkpoint(lambda w: {}, commit=lambda o: asyncio.sleep(0, True),
                                seek=lambda p, o: None)
        lanes = Lanes(checkpoint, released.append)

        def work(name: str, gate: asyncio.Event):
            async def run() -> bool:
                ran.append(name)
                await gate.wait()
                return True
            return run
        done, never = asyncio.Event(), asyncio.Event()
        done.set()
        await lanes.admit("A", Admitted(0, 0, "m0", work("m0", done), generation=3))
        await asyncio.sleep(0.01)
        lanes.revoke(through=4)  # generation 4 current; none of its events seen yet
        await asyncio.wait_for(
            lanes.admit("B", Admitted(0, 1, "m1", work("m1", never), generation=4)), 1)
        await lanes.run_alone(Admitted(0, 2, "m2", work("m2", never), generation=4))
        await asyncio.sleep(0.05)
        in_flight = lanes.in_flight
        revoked = (lanes.revoked(3), lanes.revoked(4), lanes.revoked(5), lanes.revoked(None))
        await lanes.admit("C", Admitted(0, 3, "m3", work("m3", done), generation=5))
        await asyncio.sleep(0.05)
        return released, ran, in_flight, revoked
    released, ran, in_flight, revoked = asyncio.run(go())
    assert in_flight == 0  # nothing of generation 4 in the lanes: faust's wait_empty ends
    assert released[:3] == ["m0", "m1", "m2"]
    assert ran == ["m0", "m3"]  # m1 and m2 never ran; generation 5's event did
    assert revoked == (True, True, False, False)


def test_dead_letters_wait_for_room_and_count_in_the_partitions_span():
    """A run of undecodable records while the dead-letter topic refuses writes: each dead
    letter was taken in at once (the agent never waited), so in-flight events, held messages
    and uncommitted offsets grew without bound — ``max_in_flight`` and the partition window
    ignored. They wait for room as events do, count in the span, and hold the commit point
    until sent."""
    commits, read, commit = committing()

    async def go():
        checkpoint = Checkpoint(read, commit=commit, seek=lambda _p, _o: None)
        paused: list[set[int]] = []
        resumed: list[set[int]] = []
        lanes = Lanes(checkpoint, lambda _m: None, max_in_flight=2, partition_window=3,
                      pause=paused.append, resume=resumed.append)
        gate = asyncio.Event()  # the dead-letter topic takes writes again
        sent: list[int] = []

        def dead(offset: int):
            async def work() -> bool:
                await gate.wait()
                sent.append(offset)
                return True
            return work

        async def agent() -> None:
            for offset in range(10):
                await lanes.run_alone(Admitted(0, offset, f"m{offset}", dead(offset),
                                               generation=1))
        feeding = asyncio.ensure_future(agent())
        await asyncio.sleep(0.05)
        held = (lanes.in_flight, feeding.done(), checkpoint.unfinished())
        await checkpoint.commit()
        committed_while_held = list(commits)
        gate.set()
        await asyncio.wait_for(feeding, 10)
        while lanes.in_flight:
            await asyncio.sleep(0.01)
        paused_after = list(paused)
        await checkpoint.commit()
        lanes.committed()
        return held, committed_while_held, paused_after, sent, commits, resumed
    held, committed_while_held, paused, sent, commits, resumed = asyncio.run(go())
    assert held == (2, False, 2)  # two in flight; the agent waits for room
    assert committed_while_held == []  # nothing past a dead letter not yet sent
    assert paused == [{0}]  # the finished ones behind the commit point count in the span
    assert sorted(sent) == list(range(10))
    assert commits[-1] == {0: 10} and resumed == [{0}]


def test_a_stop_waits_for_a_dead_letter_being_sent():
    """On SIGTERM the drain waited only for the lanes: a dead letter being sent was left to
    the revoke (released, not committed) and redelivered — dead-lettered twice."""
    async def go():
        released: list[object] = []
        checkpoint = Checkpoint(lambda w: {}, commit=lambda o: asyncio.sleep(0, True),
                                seek=lambda _p, _o: None)
        lanes = Lanes(checkpoint, released.append)
        sent: list[str] = []

        async def dead() -> bool:
            await asyncio.sleep(0.2)
            sent.append("m0")
            return True
        await lanes.run_alone(Admitted(0, 0, "m0", dead, generation=1))
        left = await lanes.drain(10.0)
        return left, sent, released, checkpoint
    left, sent, released, checkpoint = asyncio.run(go())
    assert left == 0 and sent == ["m0"] and released == ["m0"]
    assert checkpoint.unfinished() == 0
