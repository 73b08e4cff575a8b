"""streams.state: one Order's dedupe memory stays bounded in count and encoded size.

The memory of an Order is one table value (one changelog record): unbounded, an Order
re-requested often enough (~1,300 Skipped decisions, ~630 Failed ones with long messages)
outgrew the broker's 1 MiB record limit, the changelog write failed (DurabilityError) and
every restart re-sent the same oversized value — a crash loop for the partition's owner.
"""

from __future__ import annotations

import orjson

from streams.decide import Event, outcome_record
from streams.state import OrderState

OID = "801S00000000001AAA"
LIMIT = 512 * 1024  # well under the broker's 1 MiB record limit


def _outcome(i: int, status: str = "Skipped", message_len: int = 0) -> dict:
    event = Event(order_id=OID, idem_key=f"key-{i:05d}", event_uuid=f"uuid-{i:05d}",
                  correlation_id=f"corr-{i:05d}", requested_at=1_700_000_000_000 + i)
    return outcome_record(
        event, status, opportunity_id="006S0000000001AAA", error_code="ALREADY_PROVISIONED",
        error_message=("x" * message_len) or f"WHMCS order 123456 was already created ({i})",
        whmcs_order_id=123456, completed_at=1_700_000_000_000 + i)


def _decide_many(state: OrderState, n: int, *, status: str = "Skipped", message_len: int = 0,
                 unsent: frozenset[int] = frozenset()) -> None:
    """``n`` distinct IdemKeys decided for one Order as the handler does (record, send,
    mark emitted), except the ones in ``unsent`` whose send was never acknowledged."""
    for i in range(n):
        memory = state.record(OID, f"key-{i:05d}", f"uuid-{i:05d}",
                              _outcome(i, status, message_len), 1_700_000_000_000 + i)
        if i not in unsent:
            state.mark_emitted(OID, f"key-{i:05d}", f"uuid-{i:05d}", memory=memory)


def test_two_thousand_idem_keys_stay_under_the_record_limit_and_the_newest_are_kept():
    state = OrderState({}, {})
    _decide_many(state, 2_000)
    size = len(orjson.dumps(state.idem[OID]))
    assert size < LIMIT
    memory = state.memory(OID)
    assert 100 <= len(memory) <= 200
    newest = [f"key-{i:05d}" for i in range(2_000 - len(memory), 2_000)]
    assert sorted(memory) == newest  # the oldest were dropped, the newest all kept
    assert "key-01999" in memory and "key-00000" not in memory


def test_long_failure_messages_are_bounded_by_size_not_only_by_count():
    from streams.state import MAX_MEMORY_BYTES

    state = OrderState({}, {})
    _decide_many(state, 1_000, status="Failed", message_len=1_000)
    size = len(orjson.dumps(state.idem[OID]))
    assert size <= MAX_MEMORY_BYTES < LIMIT
    assert "key-00999" in state.memory(OID)


def test_an_outcome_not_yet_sent_is_never_dropped():
    """The sweep resends an unacknowledged outcome from its entry: dropping it would lose
    the outcome (nothing else holds it)."""
    from streams.state import MAX_IDEM_KEYS_REMEMBERED

    state = OrderState({}, {})
    _decide_many(state, 2_000, unsent=frozenset({0, 1, 2}))
    memory = state.memory(OID)
    for i in (0, 1, 2):
        entry = memory[f"key-{i:05d}"]
        assert not entry.emitted and entry.outcome is not None
    assert "key-01999" in memory
    assert len(memory) <= MAX_IDEM_KEYS_REMEMBERED
    assert len(orjson.dumps(state.idem[OID])) < LIMIT


def test_record_returns_the_memory_as_written():
    """The handler marks the outcome emitted on the memory ``record`` returned: it must be
    the bounded one, or the mark would write the dropped entries back."""
    from streams.state import MAX_IDEM_KEYS_REMEMBERED

    state = OrderState({}, {})
    _decide_many(state, MAX_IDEM_KEYS_REMEMBERED + 50)
    memory = state.record(OID, "new", "uuid-new", _outcome(9_999), 1_800_000_000_000)
    assert memory == state.memory(OID)
    state.mark_emitted(OID, "new", "uuid-new", memory=memory)
    assert len(state.memory(OID)) <= MAX_IDEM_KEYS_REMEMBERED
