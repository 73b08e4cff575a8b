"""A table value that does not decode (a changelog record written by hand or by a bug,
restored into the store): its Order's events are dead-lettered at once with
``STATE_UNREADABLE`` naming the table, nothing is sent to WHMCS for it, and the sweep passes
over it — one bad value once stopped every sweep of the worker (nothing recovered, resent or
expired for any Order) and kept ``SfprovIntentPendingTooLong`` at 0. No broker: the tables
are dicts (Kit) or real RocksDB stores."""

from __future__ import annotations

import asyncio
import logging
import time
from types import SimpleNamespace

import pytest
from faust.types import TP

from streams import metrics
from streams.recovery import Sweeper
from streams.state import Intent, OrderState, UnreadableState
from tests.streams.factories import order, request_value
from tests.streams.flowkit import Kit, records
from tests.streams.test_resumed_guard import Salesforce, Whmcs
from tests.streams.test_tables import _durable_table

OID, OTHER = "801000000000001AAA", "801000000000002AAA"


@pytest.mark.parametrize("table, value", [
    ("intents", "not an intent"),
    ("idem", {"k0": {"event_uuid": "u0", "dups": ["not", "a", "dict"]}}),
    ("idem", ["a", "list"]),
    # read as nothing remembered, the event was decided afresh: AddOrder and AcceptOrder
    # (state review)
    ("idem", {"k1": [1, 2]}),
    # an outcome that is no object: retried three times, then WORKER_ERROR
    ("idem", {"k1": {"event_uuid": "u1", "outcome": "garbage", "at": 1}}),
    ("intents", []),
])
def test_an_event_of_an_order_whose_state_cannot_be_read_is_dead_lettered_once(table, value):
    sf, wh = Salesforce(order(order_id=OID)), Whmcs()

    async def go():
        kit = Kit(salesforce=sf, whmcs_client=wh)
        getattr(kit.tables, table)[OID] = value
        began = time.monotonic()
        await kit.process(records([request_value(OID, event_uuid="u1", idem_key="k1")]))
        return kit, time.monotonic() - began
    kit, took = asyncio.run(go())
    [letter] = kit.emitter.letters
    assert letter.error_code == "STATE_UNREADABLE"
    assert f"{table} table holds a value for Order {OID}" in letter.reason
    assert (letter.order_id, letter.event_uuid, letter.idem_key) == (OID, "u1", "k1")
    assert kit.emitter.sent == [] and wh.calls == [] and sf.queries == 0
    assert took < 1.0  # not retried: the handler's retries back off 1 s, then 2 s


def test_order_state_names_the_table_and_order_it_could_not_read():
    state = OrderState({OID: {"k": {"dups": 5}}}, {OTHER: 17})
    with pytest.raises(UnreadableState) as idem:
        state.memory(OID)
    with pytest.raises(UnreadableState) as intents:
        state.intent(OTHER)
    assert (idem.value.table, idem.value.order_id) == ("idem", OID)
    assert (intents.value.table, intents.value.order_id) == ("intents", OTHER)


def _rocks_tables(tmp_path, tag):
    idem = _durable_table(f"unreadable-a-{tag}", tmp_path / "a", name="idem", partitions=1)
    intents = _durable_table(f"unreadable-b-{tag}", tmp_path / "b", name="intents",
                             partitions=1)
    for table in (idem, intents):
        actives = {TP(table.changelog_topic_name, 0)}
        table.app.assignor.assigned_actives = lambda actives=actives: actives
    return idem, intents


def test_the_sweep_passes_over_an_unreadable_value_and_still_sees_the_pending_intent(
        tmp_path, caplog):
    """Real RocksDB stores: a truncated intent under one Order, a truncated dedupe memory
    under another, beside an hour-old pending intent of a third. Two sweeps: each finishes,
    exports the pending intent's age and the count of unreadable values, and the ERROR naming
    each bad value is logged once."""
    idem, intents = _rocks_tables(tmp_path, "sweep")
    hour_ago = int(time.time() * 1000) - 3_600_000
    pending = Intent.pending(order_id="801000000000003AAA", idem_key="k", event_uuid="u",
                             attempt=1, client_id=1, at=hour_ago, writer="w",
                             lease_until=hour_ago)
    db = intents.data._db_for_partition(0)
    db.put(pending.order_id.encode(), __import__("orjson").dumps(pending.to_json()))
    db.put(OID.encode(), b'{"order_id":"801K0000')
    idem.data._db_for_partition(0).put(OTHER.encode(), b'{"k1": {"event_uu')
    sweeper = Sweeper(OrderState(idem, intents), provisioner=None, emitter=None,
                      recovery_after_s=10**9, dedupe_ttl_days=35, owns=lambda _oid: True)
    metrics.OLDEST_PENDING_INTENT.set(0)
    caplog.set_level(logging.ERROR, logger="streams.recovery")

    async def sweeps():
        return [await sweeper.run_once() for _ in range(2)]
    reports = asyncio.run(sweeps())
    assert [r.pending for r in reports] == [1, 1]
    assert 3590 <= metrics.OLDEST_PENDING_INTENT._value.get() <= 3700
    assert metrics.UNREADABLE_ENTRIES._value.get() == 2
    assert sweeper.last_full_scan_ms is not None  # the scan completed
    said = [r.getMessage() for r in caplog.records if "cannot be read" in r.getMessage()]
    assert len(said) == 2
    assert any(f"intents table holds a value for Order {OID}" in m for m in said)
    assert any(f"idem table holds a value for Order {OTHER}" in m for m in said)


def _event(tp, offset, key, value):
    return SimpleNamespace(message=SimpleNamespace(
        tp=tp, partition=tp.partition, offset=offset, key=key.encode(), value=value,
        headers=None))


def test_a_restore_batch_with_an_unreadable_record_still_reports_the_rest(tmp_path, caplog):
    """The restore's report of each restored entry to the sweep's index (``watch``) met a
    record that is not JSON: it raised, faust logged "Error in recovery" without a table or
    offset, and the rest of the batch — a pending intent here — never reached the index."""
    table = _durable_table("unreadable-restore", tmp_path, name="intents", partitions=1)
    table._changelog_name = "unreadable-restore-intents-changelog"
    tp = TP(table._changelog_name, 0)
    seen: list[tuple[str, object]] = []
    table.watch = lambda oid, value: seen.append((oid, value))
    pending = b'{"order_id":"%s","state":"pending","at":0}' % OTHER.encode()
    caplog.set_level(logging.ERROR)
    table.apply_changelog_batch([_event(tp, 5, OID, b'{"order_id":"801K'),
                                 _event(tp, 6, OTHER, pending)])
    assert seen == [(OID, None), (OTHER, {"order_id": OTHER, "state": "pending", "at": 0})]
    assert table.stored(OTHER) == pending
    [error] = [r.getMessage() for r in caplog.records if "is not a JSON value" in r.getMessage()]
    assert "partition 0 offset 5" in error and OID in error


def test_one_orders_failed_sweep_job_neither_stops_the_others_nor_skips_the_flush(caplog):
    """Before, the first job's exception left the sweep's ``gather``: the sweep's flush, its
    gauges and its report were skipped."""
    flushes: list[int] = []

    async def durable():
        flushes.append(1)
    hour_ago = int(time.time() * 1000) - 3_600_000
    intents = {oid: Intent.pending(order_id=oid, idem_key="k", event_uuid="u", attempt=1,
                                   client_id=1, at=hour_ago, writer="w",
                                   lease_until=hour_ago).to_json() for oid in (OID, OTHER)}
    sweeper = Sweeper(OrderState({}, intents), provisioner=None, emitter=None,
                      recovery_after_s=1, dedupe_ttl_days=35, owns=lambda _oid: True,
                      durable=durable)
    worked: list[str] = []

    async def work(oid, *_args):
        if oid == OID:
            raise RuntimeError("WHMCS answered nonsense")
        worked.append(oid)
    sweeper._work = work
    metrics.OLDEST_PENDING_INTENT.set(0)
    caplog.set_level(logging.ERROR, logger="streams.recovery")
    report = asyncio.run(sweeper.run_once())
    assert worked == [OTHER] and flushes == [1] and report.pending == 2
    assert metrics.OLDEST_PENDING_INTENT._value.get() >= 3590
    assert any(f"the job of Order {OID} failed" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("bad", [
    {"order_id": OID, "state": "pending", "at": None},
    {"order_id": OID, "state": "pending", "at": "2024-01-01"},
    {"order_id": OID, "state": "accepted", "at": 5, "lease_until": "soon"},
    {"order_id": OID, "state": ["pending"], "at": 5},
    {"order_id": OID, "state": "failed", "at": 5, "outcome": "Failed"},
])
def test_an_intent_of_the_right_shape_with_a_field_of_another_type_is_unreadable(bad):
    """Valid JSON, but ``at`` null or text: it passed the decode and stopped every sweep
    later, in its arithmetic (regression review)."""
    hour_ago = int(time.time() * 1000) - 3_600_000
    pending = Intent.pending(order_id=OTHER, idem_key="k", event_uuid="u", attempt=1,
                             client_id=1, at=hour_ago, writer="w", lease_until=hour_ago)
    state = OrderState({}, {OID: bad, OTHER: pending.to_json()})
    with pytest.raises(UnreadableState):
        state.intent(OID)
    sweeper = Sweeper(state, provisioner=None, emitter=None, recovery_after_s=10**9,
                      dedupe_ttl_days=35, owns=lambda _oid: True)
    report = asyncio.run(sweeper.run_once())
    assert report.pending == 1 and metrics.UNREADABLE_ENTRIES._value.get() == 1


def test_a_due_intent_whose_dedupe_memory_cannot_be_read_is_said_once_not_at_every_sweep(
        caplog):
    """The intent reads, the Order's dedupe memory does not: the job fails at each sweep
    (the settling reads the memory), and said so with a traceback every time."""
    hour_ago = int(time.time() * 1000) - 3_600_000
    pending = Intent.pending(order_id=OID, idem_key="k", event_uuid="u", attempt=1,
                             client_id=1, at=hour_ago, writer="w", lease_until=hour_ago)
    state = OrderState({OID: ["not", "a", "memory"]}, {OID: pending.to_json()})
    sweeper = Sweeper(state, provisioner=None, emitter=None, recovery_after_s=1,
                      dedupe_ttl_days=35, owns=lambda _oid: True)

    async def work(oid, *_args):
        state.memory(oid)  # as settling the intent from its entry does
    sweeper._work = work
    caplog.set_level(logging.ERROR, logger="streams.recovery")

    async def sweeps():
        for _ in range(3):
            await sweeper.run_once()
    asyncio.run(sweeps())
    errors = [r for r in caplog.records if OID in r.getMessage()]
    assert len(errors) == 1 and "cannot be read" in errors[0].getMessage()


def test_the_tables_changelog_schema_reads_a_record_faust_cannot_decode():
    """faust decodes each changelog record its restore reads before the restore sees it: a
    value its JSON codec refused (or a key that is not UTF-8) was skipped, and the restore
    waited for that offset for ever — the worker never became ready (found by
    test_unreadable_state_e2e). The tables' schema reads it: the restore goes on."""
    import faust

    from streams.faust_seam import UNREADABLE_VALUE, ChangelogSchema

    app = faust.App("unreadable-schema", broker="kafka://localhost:1", web_enabled=False,
                    autodiscover=False)
    schema = ChangelogSchema(key_type=str, key_serializer="raw", value_serializer="json")
    good = SimpleNamespace(key=OID.encode(), value=b'{"state": "pending"}', headers=None)
    bad = SimpleNamespace(key=b"\xff\xfe" + OID.encode(), value=b'{"order_id": "801K',
                          headers=None)
    assert schema.loads_value(app, good) == {"state": "pending"}
    assert schema.loads_value(app, bad) == UNREADABLE_VALUE
    assert schema.loads_key(app, good) == OID
    assert schema.loads_key(app, bad).endswith(OID)  # kept, not refused
    with pytest.raises(Exception, match="decode|Expecting|unexpected"):
        faust.Schema(key_type=str, key_serializer="raw", value_serializer="json").loads_value(
            app, bad)  # faust's own: the refusal the restore skipped
    # what the memory store keeps for it is no table value: its Order's reads refuse it
    with pytest.raises(UnreadableState):
        OrderState({}, {OID: UNREADABLE_VALUE}).intent(OID)
    with pytest.raises(UnreadableState):
        OrderState({OID: UNREADABLE_VALUE}, {}).memory(OID)


def test_a_restored_record_whose_key_is_not_utf8_is_left_out_and_the_rest_reported(
        tmp_path, caplog):
    """Read leniently (ChangelogSchema), such a record reached RocksDB under its raw key:
    the restore's report raised UnicodeDecodeError (the rest of its batch never reached the
    sweep's index) and every full scan raised decoding the key (nothing swept, for good)."""
    from streams.recovery import _keys, _Slicer

    table = _durable_table("unreadable-key", tmp_path, name="intents", partitions=1)
    table._changelog_name = "unreadable-key-intents-changelog"
    tp = TP(table._changelog_name, 0)
    table.app.assignor.assigned_actives = lambda: {TP(table.changelog_topic_name, 0)}
    seen: list[str] = []
    table.watch = lambda oid, _value: seen.append(oid)
    pending = b'{"order_id":"%s","state":"pending","at":0}' % OTHER.encode()
    bad = SimpleNamespace(message=SimpleNamespace(
        tp=tp, partition=0, offset=5, key=b"\xff\xfe801", value=pending, headers=None))
    caplog.set_level(logging.ERROR)
    table.apply_changelog_batch([bad, _event(tp, 6, OTHER, pending)])
    assert seen == [OTHER] and table.stored(OTHER) == pending
    assert any("not UTF-8" in r.getMessage() and "offset 5" in r.getMessage()
               for r in caplog.records)
    assert asyncio.run(_keys(table, _Slicer())) == [OTHER]  # the scan reads every key


def test_a_key_that_is_not_utf8_in_a_repaired_range_is_passed_over_not_a_failed_repair():
    """A record no Order's (written by hand) among another writer's late records: decoding
    its key failed the repair three times, and the Orders' late records beside it were
    never rewritten."""
    import asyncio
    from types import SimpleNamespace

    from streams.lease import LeaseCheck
    from streams.repair import ChangelogRepair

    oid = "801000000000001AAA"
    lease = SimpleNamespace(check=lambda _p, _g: LeaseCheck(ok=True), generation=3,
                            last_generation=3)
    rewritten: list[str] = []
    table = SimpleNamespace(
        name="intents", changelog_topic=SimpleNamespace(get_topic_name=lambda: "t"),
        stored=lambda _k: b'{"state":"accepted"}', rewrite=rewritten.append)

    def range_read(_topic, _partition, _start, _end):
        return {b"\xff\xfe801": b'{"x":1}', oid.encode(): b'{"state":"pending"}'}

    async def commit() -> None:
        pass

    async def run() -> ChangelogRepair:
        repair = ChangelogRepair(lease, range_read, commit, attempts=3, retry_s=0.01)
        repair.foreign(table, 0, 10, 12, 3)
        await repair.idle()
        return repair
    repair = asyncio.run(run())
    assert rewritten == [oid] and repair.given_up == 0
