"""streams.recovery: the sweep's expiry writes only what is still its own.

A full scan yields for seconds; a rebalance during it can move an Order's partition to
another worker. The deletes of expired intents and the trims of expired dedupe entries the
scan decided on must then not be written: they would reopen the revoked partition's store
(stale data) and land in the new owner's changelog after its claim."""

from __future__ import annotations

import asyncio

from streams.recovery import DAY_MS, Sweeper
from streams.state import Intent, OrderState

NOW = 100 * DAY_MS
OLD = NOW - 40 * DAY_MS  # past the 35-day TTL
STALE, DIRTY = "801O00000000001AAA", "801O00000000002AAA"


def _state() -> OrderState:
    """An expired, forgettable intent (STALE) and an expired dedupe entry (DIRTY), read first
    by the scan; then a few fresh dedupe entries of other Orders."""
    old = Intent.pending(order_id=STALE, idem_key="k", event_uuid="e", attempt=1, client_id=1,
                         at=OLD, writer="w", lease_until=0).settled(
        {"status": "Failed", "error_code": "MISSING_WHMCS_CLIENT"}, OLD)
    assert old.forgettable
    idem = {DIRTY: {"old": {"event_uuid": "x", "at": OLD, "emitted": True, "outcome": {}},
                    "new": {"event_uuid": "y", "at": NOW, "emitted": True, "outcome": {}}}}
    idem.update({f"801O{i:011d}BBB": {"k": {"event_uuid": "z", "at": NOW, "emitted": True,
                                            "outcome": {}}} for i in range(3)})
    return OrderState(idem, {STALE: old.to_json()})


class Spy(dict):
    """A table that records the sweep's writes, and whether the Order was owned then."""

    def __init__(self, data, writes, owned):
        super().__init__(data)
        self.writes, self.owned = writes, owned

    def __setitem__(self, key, value):
        self.writes.append(("set", key, self.owned["yes"]))
        super().__setitem__(key, value)

    def __delitem__(self, key):
        self.writes.append(("del", key, self.owned["yes"]))
        super().__delitem__(key)


def _sweeper(state, owned, writes, *, on_idem=None):
    state.intents = Spy(state.intents, writes, owned)
    state.idem = Spy(state.idem, writes, owned)
    sweeper = Sweeper(state, None, None, recovery_after_s=600,  # type: ignore[arg-type]
                      dedupe_ttl_days=35, owns=lambda _oid: owned["yes"],
                      clock_ms=lambda: NOW)
    if on_idem is not None:
        real_watch = sweeper.watch_idem

        def watch_idem(oid, raw):  # the idem half of the scan reads this entry
            real_watch(oid, raw)
            on_idem(sweeper, oid)
        sweeper.watch_idem = watch_idem  # type: ignore[method-assign]
    return sweeper


def test_an_order_whose_partition_moves_during_the_full_scan_is_not_expired():
    """The review's scenario (/tmp/review-seam/sweep_owns.py): the intent and the dedupe
    entry were read while owned; the partition then went to another worker, mid-scan."""
    owned, writes = {"yes": True}, []
    state = _state()

    def rebalance(_sweeper, oid):
        if oid != DIRTY:  # after the scan has decided on both
            owned["yes"] = False
    report = asyncio.run(_sweeper(state, owned, writes, on_idem=rebalance).run_once())
    assert writes == []  # no tombstone, no trimmed entry, for an Order no longer its own
    assert STALE in state.intents and "old" in state.idem[DIRTY]
    assert (report.expired_intents, report.expired_idem) == (0, 0)


def test_a_partition_lost_and_regained_during_the_full_scan_is_expired_by_the_next_scan():
    """Lost and assigned back mid-scan: owns() is true again when the sweep acts, but what
    the scan read predates the restore of the partition's tables — nothing written; the
    rescan the assignment asked for expires the entries."""
    owned, writes = {"yes": True}, []
    state = _state()

    def rebalance(sweeper, oid):
        if oid != DIRTY:
            sweeper.rescan()  # the partition assigned back; owns() stays true
    sweeper = _sweeper(state, owned, writes, on_idem=rebalance)
    first = asyncio.run(sweeper.run_once())
    assert writes == [] and (first.expired_intents, first.expired_idem) == (0, 0)

    sweeper.watch_idem = Sweeper.watch_idem.__get__(sweeper)  # type: ignore[method-assign]
    second = asyncio.run(sweeper.run_once())
    assert sweeper.full_scans == 2
    assert (second.expired_intents, second.expired_idem) == (1, 1)
    assert STALE not in state.intents and set(state.idem[DIRTY]) == {"new"}
    assert all(still_owned for _op, _key, still_owned in writes)


def test_an_order_owned_throughout_the_scan_is_expired():
    owned, writes = {"yes": True}, []
    state = _state()
    report = asyncio.run(_sweeper(state, owned, writes).run_once())
    assert (report.expired_intents, report.expired_idem) == (1, 1)
    assert ("del", STALE, True) in writes and ("set", DIRTY, True) in writes
