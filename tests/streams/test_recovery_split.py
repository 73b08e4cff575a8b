"""streams.recovery: the sweep's recovered outcome survives a crash between its two table
writes, and an unsent outcome outlives the dedupe TTL until it is sent.

The intents and idem changelogs are two topics, acknowledged separately: a flush can land
one and not the other (a SIGKILL, a broker cut of one write). The sweep settles an intent
whose event will never come back (committed past: dead-lettered, replayed on), so no
redelivery repairs what the crash left: the dedupe entry must be durable before the intent
is settled, so that a crash leaves at worst "an entry without a settled intent", which the
sweep repairs itself (``settle_from_entry`` and the resend of the entry's outcome) — never a
settled intent whose outcome nothing sends. Real Kit, handler and provisioner; fake
Salesforce and WHMCS (no broker)."""

from __future__ import annotations

import asyncio
import copy
import time
from typing import Any

import pytest

from streams.recovery import DAY_MS, Sweeper
from streams.state import DedupeEntry, DurabilityError, Intent, OrderState, memory_to_json
from tests.streams.factories import order
from tests.streams.flowkit import Kit
from tests.streams.test_resumed_guard import OID, Salesforce, Whmcs
from tests.streams.test_sweep_fenced_writes import OID as FENCED_OID
from tests.streams.test_sweep_fenced_writes import RECENT, SESSION_S, Emitter, Mono, _Absent, _lease
from tests.streams.test_sweep_fenced_writes import _sweeper as _fenced_sweeper

RECOVERY_S, TTL_DAYS = 600, 35


def _kit(found: list[tuple[int, str]]) -> Kit:
    kit = Kit(salesforce=Salesforce(order(order_id=OID)), whmcs_client=Whmcs(found=found))
    kit.commits.append({0: 5})  # the event (offset 3) is committed past: dead-lettered
    return kit


def _pending(at: int) -> dict[str, Any]:
    intent = Intent.pending(order_id=OID, idem_key="k1", event_uuid="u1", attempt=1,
                            client_id=1001, at=at, writer="old", lease_until=at)
    return {**intent.to_json(), "partition": 0, "offset": 3}


def _sweeper(kit: Kit, durable: Any, clock_ms: Any = None) -> Sweeper:
    kw = {"clock_ms": clock_ms} if clock_ms is not None else {}
    return Sweeper(kit.state, kit.provisioner, kit.emitter, lanes=kit.lanes,
                   recovery_after_s=RECOVERY_S, dedupe_ttl_days=TTL_DAYS,
                   owns=lambda _o: True, durable=durable, **kw)


@pytest.mark.parametrize("found, status", [([], "Failed"), ([(88, "Active")], "Provisioned")])
@pytest.mark.parametrize("lands", ["intents", "idem"])
def test_a_recovered_outcome_cut_between_its_two_changelogs_is_sent_exactly_once(
        found, status, lands):
    """The first flush carrying the sweep's decision lands one changelog only, and the
    worker stops (DurabilityError). Restarted from the changelogs, the sweeps that follow
    send the Order's outcome exactly once, and leave the intent settled, the entry sent."""
    t0 = int(time.time() * 1000)
    raw = _pending(t0 - 700_000)

    async def go() -> tuple[list[dict[str, Any]], Kit]:
        kit = _kit(found)
        kit.tables.intents[OID] = dict(raw)
        kit.tables.durable_intents[OID] = dict(raw)

        async def partial_flush() -> None:
            tables = kit.tables
            if lands == "intents":
                tables.durable_intents = copy.deepcopy(tables.intents)
            else:
                tables.durable_idem = copy.deepcopy(tables.idem)
            other = "idem" if lands == "intents" else "intents"
            raise DurabilityError(f"table {other}: changelog write not acknowledged")
        with pytest.raises(DurabilityError):
            await _sweeper(kit, partial_flush).run_once()
        sent = list(kit.emitter.sent)
        # restart: the tables restored from their changelogs
        kit2 = _kit(found)
        for name in ("idem", "intents"):
            durable = copy.deepcopy(getattr(kit.tables, f"durable_{name}"))
            getattr(kit2.tables, name).update(durable)
            getattr(kit2.tables, f"durable_{name}").update(copy.deepcopy(durable))
        after_a_day: dict[str, Any] = {}
        for later_ms in (0, (RECOVERY_S + 1) * 1000, DAY_MS, (TTL_DAYS + 1) * DAY_MS):
            await _sweeper(kit2, kit2.tables.flush,
                           lambda later_ms=later_ms: int(time.time() * 1000) + later_ms
                           ).run_once()
            if later_ms == DAY_MS:
                after_a_day = copy.deepcopy({"idem": kit2.tables.durable_idem,
                                             "intents": kit2.tables.durable_intents})
        return sent + kit2.emitter.sent, after_a_day
    sent, after_a_day = asyncio.run(go())
    assert len(sent) == 1, f"outcomes sent: {sent}"
    assert sent[0]["status"] == status and sent[0]["event_uuid"] == "u1"
    intent = Intent.from_json(after_a_day["intents"][OID])
    assert intent is not None and not intent.is_pending
    assert after_a_day["idem"][OID]["k1"]["emitted"] is True
    # the sweep's lookup found no order: the intent expires with the TTL, however settled
    assert intent.forgettable is (status == "Failed")


def test_the_sweep_settles_an_intent_only_once_its_dedupe_entry_is_durable():
    """Whatever flush a crash cuts: no flush ever carries the sweep's settled intent while
    the changelogs do not hold its dedupe decision yet."""
    t0 = int(time.time() * 1000)
    raw = _pending(t0 - 700_000)
    early: list[str] = []

    async def go() -> Kit:
        kit = _kit([])
        kit.tables.intents[OID] = dict(raw)
        kit.tables.durable_intents[OID] = dict(raw)

        async def checked_flush() -> None:
            tables = kit.tables
            settled = tables.intents[OID]["state"] != "pending"
            if settled and "k1" not in tables.durable_idem.get(OID, {}):
                early.append("the intent settled before its dedupe entry was durable")
            await tables.flush()
        await _sweeper(kit, checked_flush).run_once()
        return kit
    kit = asyncio.run(go())
    assert early == []
    assert [o["error_code"] for o in kit.emitter.sent] == ["PROVISIONING_INTERRUPTED"]


class _Emitter:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def send_outcome(self, outcome: dict[str, Any]) -> None:
        self.sent.append(outcome)


def test_an_unsent_outcome_past_the_ttl_is_sent_once_not_expired():
    """An entry whose outcome was never acknowledged as sent is the only holder of that
    outcome (streams.state.bounded never drops one): the expiry keeps it until the sweep
    has sent it and marked it, and forgets it at a later sweep."""
    now = 100 * DAY_MS
    old = now - (TTL_DAYS + 1) * DAY_MS
    outcome = {"order_id": "801A", "idem_key": "k1", "event_uuid": "u1", "status": "Skipped"}
    idem = {"801A": memory_to_json({"k1": DedupeEntry.first("u1", outcome, old)})}
    state = OrderState(idem, {})
    emitter = _Emitter()
    sweeper = Sweeper(state, None, emitter, recovery_after_s=RECOVERY_S,  # type: ignore[arg-type]
                      dedupe_ttl_days=TTL_DAYS, owns=lambda _o: True, clock_ms=lambda: now)
    first = asyncio.run(sweeper.run_once())
    assert emitter.sent == [outcome] and first.resent == 1
    assert idem["801A"]["k1"]["emitted"] is True  # sent, marked, kept for now
    second = asyncio.run(sweeper.run_once())
    assert emitter.sent == [outcome]
    assert second.expired_idem == 1 and "801A" not in idem


def test_an_unsent_outcome_the_schema_refuses_still_expires():
    """An outcome that can never be sent (its schema refuses it: the sweep said so once)
    does not keep its entry past the TTL for good."""
    from common.avro import SerdeError

    class Refusing(_Emitter):
        async def send_outcome(self, outcome: dict[str, Any]) -> None:
            raise SerdeError("whmcs_client_id: 99999999999999999999 is not a long")
    now = 100 * DAY_MS
    old = now - (TTL_DAYS + 1) * DAY_MS
    outcome = {"order_id": "801B", "idem_key": "k1", "event_uuid": "u1", "status": "Failed"}
    idem = {"801B": memory_to_json({"k1": DedupeEntry.first("u1", outcome, old)})}
    sweeper = Sweeper(OrderState(idem, {}), None, Refusing(),  # type: ignore[arg-type]
                      recovery_after_s=RECOVERY_S, dedupe_ttl_days=TTL_DAYS,
                      owns=lambda _o: True, clock_ms=lambda: now)
    asyncio.run(sweeper.run_once())
    asyncio.run(sweeper.run_once())
    assert "801B" not in idem


def test_a_lease_lapsing_during_the_entrys_flush_leaves_the_intent_pending():
    """The entry's flush outlived the ownership lease: the sweep writes no settled intent
    and sends nothing — the partition's owner settles it from the entry."""
    writes: list = []
    mono = Mono()
    emitter = Emitter()
    intent = Intent.pending(order_id=FENCED_OID, idem_key="k", event_uuid="e", attempt=1,
                            client_id=1, at=RECENT, writer="w", lease_until=0)
    sweeper, state = _fenced_sweeper({}, {FENCED_OID: intent.to_json()},
                                     _lease(mono, expired=False), writes, emitter)
    sweeper.provisioner = _Absent()

    async def slow_flush():
        mono.s += SESSION_S + 1  # the flush outlived the lease
    sweeper.durable = slow_flush
    asyncio.run(sweeper.run_once())
    assert writes == [("set", FENCED_OID)]  # the entry only
    assert state.intent(FENCED_OID).is_pending and emitter.sent == []
