"""A table write the local RocksDB store refuses (read-only after a failed background flush,
a full disk) stops the worker: :class:`DurabilityError`, and no changelog record of it.

Queued before the store's put, the record of a write that then failed went out all the same:
the event was retried, dead-lettered (WORKER_ERROR) and committed, while the record restored
the pending intent it carried at the next restore — and the sweep then sent a contradicting
PROVISIONING_INTERRUPTED Failed for it.
"""

from __future__ import annotations

import asyncio
import copy

import pytest

from streams.state import DurabilityError, Intent, OrderState

OID = "801E00000000001AAA"


def _tables(datadir):
    """The worker's two tables (its RocksDB options) on a faust app of its own, whose
    changelog records stay queued (no broker)."""
    import faust

    from streams.app import ROCKSDB_OPTIONS
    from streams.faust_seam import DurableTable

    app = faust.App("seam-store-errors", broker="kafka://localhost:1", store="rocksdb://",
                    web_enabled=False, autodiscover=False, datadir=str(datadir),
                    topic_partitions=2)
    tables = [app.tables.add(DurableTable(
        app, name=name, default=None, partitions=2, beacon=app.tables.beacon,
        options=dict(ROCKSDB_OPTIONS),
        schema=faust.Schema(key_type=str, key_serializer="raw", value_serializer="json")))
        for name in ("idem", "intents")]

    async def no_broker() -> None:
        await asyncio.sleep(0)
    tables[0]._writer._drain = no_broker  # one writer per app: the records stay queued
    return tables


def _refused(*_args):
    raise Exception("IO error: No space left on device")  # what rocksdict raises


def _queued(table) -> list[bytes]:
    return [entry[2] for entry in table._writer._queue]


def _pending(table) -> int:
    return 0 if table._unflushed is None else table._unflushed.pending


def _intent(**kw) -> Intent:
    return Intent.pending(order_id=OID, idem_key="k", event_uuid="e", attempt=1,
                          client_id=1, at=1, writer="w", lease_until=2, **kw)


def test_a_write_the_store_refuses_raises_durability_error_and_sends_no_record(
        tmp_path, monkeypatch):
    _idem, intents = _tables(tmp_path)
    watched: list[str] = []
    intents.watch = lambda key, _value: watched.append(key)
    monkeypatch.setattr(intents.data, "_set", _refused)

    async def go():
        state = OrderState({}, intents)
        with pytest.raises(DurabilityError, match="No space left on device"):
            state.set_intent(_intent())
    asyncio.run(go())
    assert _queued(intents) == [] and _pending(intents) == 0
    assert intents.read(OID) is None and watched == []


def test_a_delete_the_store_refuses_raises_durability_error_and_sends_no_tombstone(
        tmp_path, monkeypatch):
    _idem, intents = _tables(tmp_path)

    async def go():
        state = OrderState({}, intents)
        state.set_intent(_intent())
        assert _queued(intents) == [OID.encode()]
        monkeypatch.setattr(intents.data, "_del", _refused)
        with pytest.raises(DurabilityError, match="No space left on device"):
            state.delete_intent(OID)
    asyncio.run(go())
    assert _queued(intents) == [OID.encode()] and _pending(intents) == 1  # no tombstone
    assert intents.read(OID) is not None


class _Salesforce:
    def __init__(self, orders):
        self.orders = {o["Id"]: o for o in orders}

    def query(self, soql):
        return [copy.deepcopy(o) for oid, o in self.orders.items() if f"'{oid}'" in soql]


class _Whmcs:
    reports_writes = False  # read by the Provisioner as it is made, not a call

    def __getattr__(self, name):
        raise AssertionError(f"WHMCS called ({name}) without a durable pending intent")


class _Emitter:
    def __init__(self) -> None:
        self.sent: list = []
        self.letters: list = []

    async def send_outcome(self, outcome) -> None:
        self.sent.append(outcome)

    async def send_dead_letter(self, letter) -> None:
        self.letters.append(letter)


def test_the_handler_stops_on_a_refused_store_write_without_a_dead_letter(
        tmp_path, monkeypatch):
    """streams.handler: a DurabilityError is not retried nor dead-lettered (whose commit
    would skip the event) — it stops the worker, and the event is redelivered."""
    from streams.decide import Context
    from streams.guard import Guard, GuardReads
    from streams.handler import EventHandler, decode
    from streams.provision import Provisioner
    from streams.state import GroupCommit
    from tests.streams.factories import order, policy, request_value
    from tests.streams.flowkit import SERDE, records

    idem, intents = _tables(tmp_path)
    monkeypatch.setattr(intents.data, "_set", _refused)
    [rec] = records([request_value(OID, event_uuid="u1", idem_key="k1")])
    event = decode(SERDE, rec)

    async def go():
        state = OrderState(idem, intents)
        emitter = _Emitter()
        handler = EventHandler(
            state=state, reads=GuardReads(Guard(_Salesforce([order(order_id=OID)])),
                                          linger_s=0.01),
            provisioner=Provisioner(_Whmcs(), policy()), emitter=emitter,
            context=Context(), durable=GroupCommit(state.flush), writer_id="t")
        with pytest.raises(DurabilityError):
            await handler.handle(event, rec)
        return emitter, handler
    emitter, handler = asyncio.run(go())
    assert emitter.letters == [] and emitter.sent == [] and handler.errors == 0
    assert _queued(intents) == [] and intents.read(OID) is None


def test_a_flush_failing_with_any_error_stops_the_worker_without_dead_letters():
    """streams.state.GroupCommit: a flush that failed with an error other than
    DurabilityError (the local store refusing its restore point after the changelog's
    acknowledgement) failed every later barrier with that error, which the handler took for
    each event's own fault: every later event retried, dead-lettered (WORKER_ERROR) and
    committed past, the worker running on. It is a DurabilityError: the lanes stop."""
    from streams.state import GroupCommit
    from tests.streams.factories import order, request_value
    from tests.streams.flowkit import Kit, records

    ids = [f"801B{n:011d}AAA" for n in range(3)]

    async def go():
        kit = Kit(salesforce=_Salesforce([order(order_id=i, status="Pending Review")
                                          for i in ids]), whmcs_client=None)
        real, calls = kit.tables.flush, [0]

        async def flush() -> None:
            calls[0] += 1
            await real()
            if calls[0] == 1:
                raise RuntimeError("IO error: No space left on device")
        kit.handler.durable = GroupCommit(flush)
        with pytest.raises(DurabilityError, match="table flush failed"):
            await kit.process(records([request_value(i, event_uuid=f"u{n}", idem_key=f"k{n}")
                                       for n, i in enumerate(ids)]))
        return kit
    kit = asyncio.run(go())
    assert kit.emitter.letters == [] and kit.emitter.sent == []
    assert kit.finished == []
    assert isinstance(kit.lanes.crashed, DurabilityError)
    assert "table flush failed: RuntimeError('IO error" in str(kit.lanes.crashed)
    assert isinstance(kit.lanes.crashed.__cause__, RuntimeError)
