"""A duplicate of an IdemKey arriving days after its first event is remembered for the TTL
from its own decision: the entry counted from the first event's, and a replay of the
duplicate's record (still in the requests topic) after the first event's TTL was decided
afresh — a second outcome record, different from its ``Duplicate``. No broker."""

from __future__ import annotations

from streams.recovery import DAY_MS, Sweeper
from streams.state import (
    MAX_IDEM_KEYS_REMEMBERED,
    DedupeEntry,
    OrderState,
    bounded,
    memory_to_json,
)

OID = "801000000000001AAA"


def _state_with_a_late_duplicate() -> OrderState:
    state = OrderState({}, {})
    state.record(OID, "K", "u1", {"status": "Failed", "error_code": "MISSING_PRODUCT_MAPPING"},
                 at=0)
    state.mark_emitted(OID, "K", "u1")
    state.record(OID, "K", "u2", {"status": "Duplicate", "error_code": "DUPLICATE_IDEM_KEY"},
                 at=20 * DAY_MS)
    state.mark_emitted(OID, "K", "u2")
    return state


def test_a_late_duplicate_keeps_its_entry_for_the_ttl_from_its_own_decision():
    state = _state_with_a_late_duplicate()
    sweeper = Sweeper(state, None, None, recovery_after_s=600, dedupe_ttl_days=35,
                      owns=lambda _oid: True)
    entry = state.memory(OID)["K"]
    assert (entry.at, entry.newest) == (0, 20 * DAY_MS)
    assert not sweeper._expirable(OID, entry, 36 * DAY_MS)  # u2's record: 16 days old
    assert not sweeper._idem_work(state.memory(OID), 36 * DAY_MS)
    assert sweeper._expirable(OID, entry, 56 * DAY_MS)
    assert sweeper._idem_work(state.memory(OID), 56 * DAY_MS)


def test_the_newest_decision_survives_the_tables_json_and_an_entry_without_it_reads_as_before():
    entry = _state_with_a_late_duplicate().memory(OID)["K"]
    assert DedupeEntry.from_json(entry.to_json()) == entry
    older = {k: v for k, v in entry.to_json().items() if k != "last_at"}  # an older release's
    assert DedupeEntry.from_json(older).newest == 0
    first = DedupeEntry.first("u", {"status": "Provisioned"}, 5)
    assert "last_at" not in first.to_json()  # no duplicate: the value as before


def test_the_memory_bound_drops_the_entry_least_recently_decided_first():
    """The first event's time alone made an IdemKey whose duplicate was just decided the
    first to go."""
    memory = {f"K{i}": DedupeEntry("u", "Skipped", {"status": "Skipped"}, True, 10 + i)
              for i in range(MAX_IDEM_KEYS_REMEMBERED)}
    memory["K0"] = memory["K0"].with_duplicate("u2", {"status": "Duplicate"}, 10_000)
    memory["K0"] = memory["K0"].marked_emitted("u2")
    memory["new"] = DedupeEntry("u", "Skipped", {"status": "Skipped"}, True, 500)
    kept, _raw = bounded(memory, memory_to_json(memory))
    assert "K0" in kept and "K1" not in kept and len(kept) == MAX_IDEM_KEYS_REMEMBERED
