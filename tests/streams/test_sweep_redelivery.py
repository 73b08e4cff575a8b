"""The sweep and a pending intent whose event is still to be delivered again.

The worker died after the intent was durable and before its ``AddOrder`` left, and stayed
down (or paused) past ``WORKER_RECOVERY_AFTER_S``; after the restore a sweep runs before the
event is back in its lane (uncommitted, or held in the agent's chunk while the window is
full). The sweep must leave the intent to the redelivery — whose resume looks WHMCS up
before any ``AddOrder`` — rather than fail the Order ``PROVISIONING_INTERRUPTED`` and let
the redelivery end silently on the entry it wrote. An intent whose event the group's commit
has passed (dead-lettered, or ``sfprov replay`` moved the offsets on) is still settled.
Real Kit (lanes, checkpoint, handler, provisioner); fake Salesforce and WHMCS, no broker."""

from __future__ import annotations

import asyncio
import time

import pytest

from streams.checkpoint import Checkpoint
from streams.recovery import Sweeper
from streams.state import Intent
from tests.streams.factories import order, request_value
from tests.streams.flowkit import Kit, records
from tests.streams.test_resumed_guard import OID, Salesforce, Whmcs


def stale_intent(**where):
    """The pending intent of event u1 (IdemKey k1), written 700 s ago by a worker that died
    before its AddOrder left; ``where``: the event's partition and offset, as the handler
    writes them (none: an intent of the release before)."""
    past = int(time.time() * 1000) - 700_000
    intent = Intent.pending(order_id=OID, idem_key="k1", event_uuid="u1", attempt=1,
                            client_id=1001, at=past, writer="old", lease_until=past)
    return {**intent.to_json(), **where}


def sweeper(kit, committed=None):
    """The worker's sweep over ``kit``: the group's committed offsets from its lanes (the
    checkpoint's reader), unless ``committed``."""
    more = {} if committed is None else {"committed_offsets": committed}
    return Sweeper(kit.state, kit.provisioner, kit.emitter, lanes=kit.lanes,
                   recovery_after_s=600, dedupe_ttl_days=35, owns=lambda _o: True,
                   durable=kit.handler.durable, **more)


def put(kit, intent):
    kit.tables.intents[OID] = dict(intent)
    kit.tables.durable_intents[OID] = dict(intent)


def scenario(intent, *, commits=(), committed=None, redeliver=True):
    """``intent`` stored, the sweep run once (the group's commits so far: ``commits``), then
    (``redeliver``) the event u1 at partition 0, offset 3, handled."""
    sf, wh = Salesforce(order(order_id=OID)), Whmcs()

    async def go():
        kit = Kit(salesforce=sf, whmcs_client=wh)
        kit.commits.extend(commits)
        put(kit, intent)
        report = await sweeper(kit, committed).run_once()
        swept = list(wh.calls)
        if redeliver:
            await kit.process(records([request_value(OID, event_uuid="u1", idem_key="k1")],
                                      start=3))
        return kit, report, swept
    kit, report, swept = asyncio.run(go())
    return kit, report, swept, wh.calls


def outcomes(kit):
    return [(o["status"], o["error_code"]) for o in kit.emitter.sent]


def test_a_sweep_before_the_redelivery_leaves_the_intent_to_it():
    """The reviewer's scenario: the event (offset 3) is not committed past (the group's
    commit is at 0). The sweep makes no WHMCS call and sends nothing; the redelivery resumes
    the intent, looks up, and provisions with one AddOrder — before, Failed
    PROVISIONING_INTERRUPTED and a silent redelivery."""
    kit, report, swept, calls = scenario(stale_intent(partition=0, offset=3))
    assert outcomes(kit) == [("Provisioned", None)]
    assert swept == []
    assert (report.interrupted, report.recovered, report.awaiting) == (0, 0, 1)
    assert calls == ["GetOrders(marker)", "AddOrder", "AcceptOrder 77"]
    assert kit.tables.intents[OID]["state"] == "accepted"


def test_an_intent_whose_event_is_committed_past_is_still_interrupted():
    """The group's commit passed the event (offset 3, committed to 5: dead-lettered, or a
    replay moved the offsets on): it is never delivered again, and the sweep settles it."""
    kit, report, swept, calls = scenario(stale_intent(partition=0, offset=3),
                                         commits=[{0: 5}], redeliver=False)
    assert swept == ["GetOrders(marker)"]
    assert report.interrupted == 1
    assert outcomes(kit) == [("Failed", "PROVISIONING_INTERRUPTED")]
    assert kit.tables.intents[OID]["state"] == "failed"


def test_an_intent_committed_to_its_own_offset_waits():
    """Committed to exactly the event's offset: the event is the next one delivered."""
    kit, report, swept, _calls = scenario(stale_intent(partition=0, offset=3),
                                          commits=[{0: 3}], redeliver=False)
    assert (swept, outcomes(kit), report.awaiting) == ([], [], 1)
    assert kit.tables.intents[OID]["state"] == "pending"


def test_committed_offsets_that_cannot_be_read_leave_the_intent_for_a_later_sweep():
    async def unreadable(_partitions):
        raise TimeoutError("the brokers did not answer")
    kit, report, swept, _calls = scenario(stale_intent(partition=0, offset=3),
                                          committed=unreadable, redeliver=False)
    assert (swept, outcomes(kit), report.awaiting) == ([], [], 1)
    assert kit.tables.intents[OID]["state"] == "pending"


def test_an_intent_of_the_release_before_is_settled_as_before():
    """No offset in the intent (written before they were kept): nothing to tell by, the
    sweep settles it as it always did."""
    kit, report, swept, _calls = scenario(stale_intent(), redeliver=False)
    assert swept == ["GetOrders(marker)"]
    assert outcomes(kit) == [("Failed", "PROVISIONING_INTERRUPTED")]


def test_the_handler_writes_the_events_place_into_its_intent():
    """What the sweep compares the group's commit with: the pending intent (and the settled
    one after it) names the request event's partition and offset."""
    sf, wh = Salesforce(order(order_id=OID)), Whmcs()
    seen = []

    async def add_order(params, send_deadline=None, _add=wh.add_order):
        seen.append(dict(kit.tables.durable_intents[OID]))
        return await _add(params, send_deadline)
    wh.add_order = add_order

    async def go():
        nonlocal kit
        kit = Kit(salesforce=sf, whmcs_client=wh)
        await kit.process(records([request_value(OID, event_uuid="u1", idem_key="k1")],
                                  partition=2, start=41))
    kit = None
    asyncio.run(go())
    [pending] = seen
    assert (pending["state"], pending["partition"], pending["offset"]) == ("pending", 2, 41)
    settled = kit.tables.intents[OID]
    assert (settled["state"], settled["partition"], settled["offset"]) == ("accepted", 2, 41)


@pytest.mark.parametrize("where", [{}, {"partition": 4, "offset": 1_234_567}])
def test_intents_with_and_without_the_events_place_decode(where):
    """An intent as the release before wrote it (no partition, no offset) still decodes;
    one with them round-trips."""
    raw = {k: v for k, v in stale_intent(**where).items()
           if where or k not in ("partition", "offset")}
    back = Intent.from_json(raw)
    assert back is not None and back.to_json() == {"partition": None, "offset": None, **raw}
    assert (back.partition, back.offset) == (where.get("partition"), where.get("offset"))


@pytest.mark.broker
def test_the_lanes_read_the_groups_committed_offsets_from_the_broker(kafka_bootstrap,
                                                                     unique_name):
    """What the worker's sweep compares with (:meth:`Lanes.committed_offsets`, through the
    checkpoint's reader): the group's committed offset, and a partition's first offset when
    the group never committed there."""
    from confluent_kafka import Consumer, TopicPartition

    from streams.checkpoint import Checkpoint, broker_reader
    from streams.lanes import Lanes
    from tests.conftest import create_topic
    from tests.streams.test_checkpoint import _transaction

    topic, group = unique_name("sweep-offsets"), unique_name("group")
    create_topic(kafka_bootstrap, topic, partitions=2)
    _transaction(kafka_bootstrap, topic, 5, commit=True)  # partition 0: 0-4, marker 5
    member = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": group,
                       "enable.auto.commit": False})
    member.commit(offsets=[TopicPartition(topic, 0, 2)], asynchronous=False)
    member.close()
    read = broker_reader(kafka_bootstrap, group, topic)

    async def commit(_offsets):
        return True
    lanes = Lanes(Checkpoint(read, commit=commit, seek=lambda p, o: None), lambda _m: None)
    try:
        assert asyncio.run(lanes.committed_offsets([0, 1])) == {0: 2, 1: 0}
        assert asyncio.run(lanes.committed_offsets([])) == {}
    finally:
        read.close()


@pytest.mark.broker
def test_an_event_below_the_log_start_is_not_awaited(kafka_bootstrap, unique_name):
    """The group committed 2, then retention (here ``delete_records``) removed the records
    below 4 while no worker ran: a consumer of the group is given 4 next, so an intent whose
    event is at 3 can never be resumed by its redelivery — the sweep must settle it, not
    wait for a commit a quiet partition may not make for days."""
    from streams.checkpoint import Checkpoint, broker_reader
    from tests.streams.test_checkpoint import log_start_past_commit

    topic, group = unique_name("sweep-log-start"), unique_name("group")
    log_start_past_commit(kafka_bootstrap, topic, group)
    read = broker_reader(kafka_bootstrap, group, topic)

    async def commit(_offsets):
        return True
    checkpoint = Checkpoint(read, commit=commit, seek=lambda p, o: None)
    try:
        assert asyncio.run(checkpoint.committed_offsets([0])) == {0: 4}
        kit, report, swept, _calls = scenario(stale_intent(partition=0, offset=3),
                                              committed=checkpoint.committed_offsets,
                                              redeliver=False)
    finally:
        read.close()
    assert (report.awaiting, report.interrupted) == (0, 1) and swept == ["GetOrders(marker)"]
    assert outcomes(kit) == [("Failed", "PROVISIONING_INTERRUPTED")]


def test_the_checkpoint_asks_the_reader_where_the_group_is_given_records_next():
    """The sweep's comparison point is the reader's ``redeliverable_from`` (the committed
    offset, or the log start when later), not the committed offset of a range read."""
    class Reader:
        def __call__(self, wanted):
            return {p: (2, []) for p in wanted}  # committed 2

        def redeliverable_from(self, partitions):
            return {p: 10 for p in partitions}  # the log start passed it

    async def commit(_offsets):
        return True
    checkpoint = Checkpoint(Reader(), commit=commit, seek=lambda p, o: None)
    assert asyncio.run(checkpoint.committed_offsets([1, 0, 1])) == {0: 10, 1: 10}
    assert asyncio.run(checkpoint.committed_offsets([])) == {}


def test_the_oldest_pending_intents_age_is_exported_and_falls_back_once_decided():
    """sfprov_worker_oldest_pending_intent_age_seconds (SfprovIntentPendingTooLong): an
    intent left to its redelivery is 700 s old as the sweep reads it; once the redelivery
    decided it, the next sweep exports 0."""
    from streams import metrics

    sf, wh = Salesforce(order(order_id=OID)), Whmcs()

    async def go() -> tuple[float, float]:
        kit = Kit(salesforce=sf, whmcs_client=wh)
        put(kit, stale_intent(partition=0, offset=3))
        await sweeper(kit).run_once()
        waiting = metrics.OLDEST_PENDING_INTENT._value.get()
        await kit.process(records([request_value(OID, event_uuid="u1", idem_key="k1")],
                                  start=3))
        await sweeper(kit).run_once()
        return waiting, metrics.OLDEST_PENDING_INTENT._value.get()
    waiting, decided = asyncio.run(go())
    assert 699 <= waiting <= 760
    assert decided == 0.0
