"""What a chaos run reads back once everything has settled: the whole outcomes topic (one
decision per event) and the processes' logs (every start of a process appends to its log)."""

from __future__ import annotations

import json
from typing import Any

from bench.harness import Pipeline


def outcome_records(p: Pipeline) -> dict[str, Any]:
    """The outcomes topic: one decision per event. A record sent again after a crash must be
    the identical record (counted as resent); two different records for one event
    (``order_id``, ``idem_key``, ``event_uuid``) are contradicting, a failure."""
    seen: dict[tuple[Any, ...], set[str]] = {}
    total = 0
    for outcome in p.outcomes():
        total += 1
        key = (outcome["order_id"], outcome["idem_key"], outcome["event_uuid"])
        seen.setdefault(key, set()).add(json.dumps(outcome, sort_keys=True, default=str))
    contradicting = [list(k) for k, records in seen.items() if len(records) > 1]
    return {"outcome_records": total, "outcomes_resent": total - len(seen),
            "outcomes_contradicting": len(contradicting),
            "contradicting_detail": contradicting[:10],
            "contradicting_fields": [_differences(seen[tuple(k)]) for k in contradicting[:10]]}


def _differences(records: set[str]) -> dict[str, list[Any]]:
    """The fields in which the records of one event differ, with each record's value."""
    decoded = [json.loads(r) for r in sorted(records)]
    keys = sorted({k for d in decoded for k in d})
    return {k: [d.get(k) for d in decoded] for k in keys
            if len({json.dumps(d.get(k), sort_keys=True) for d in decoded}) > 1}


def changelog_ends(p: Pipeline) -> dict[str, Any]:
    """The worker tables' changelogs as a restore would end them: the last record of each
    Order. Once every Order has settled, none may end with a pending intent or a decision
    never sent: such a last record is another writer's late one — a worker cut off or
    paused, whose writes landed after the owner's (streams.repair) — and a restore would act
    on it again (a lookup, an outcome sent a second time)."""
    from common.settings import WorkerSettings
    from streams.faust_seam import CLAIM_KEY
    from streams.state import Intent, memory_from_json

    app = p.kafka.topic(WorkerSettings.load({}).app_id)
    last: dict[str, dict[str, bytes | None]] = {"intents": {}, "idem": {}}
    for table, ends in last.items():
        for record in p.records(f"{app}-{table}-changelog"):
            if str(record.key) != CLAIM_KEY:  # a worker's claim of the partition, no Order
                ends[str(record.key)] = record.raw_value
    pending = sorted(k for k, v in last["intents"].items()
                     if v is not None and (i := Intent.from_json(json.loads(v))) is not None
                     and i.is_pending)
    unsent = sorted(k for k, v in last["idem"].items() if v is not None and any(
        next(e.unsent(), None) for e in memory_from_json(json.loads(v)).values()))
    return {"changelog_pending_intents": len(pending), "changelog_unsent_decisions": len(unsent),
            "changelog_stale_detail": (pending + unsent)[:10]}


def log_lines(p: Pipeline, name: str) -> list[str]:
    try:
        return p.log(name).read_text(errors="replace").splitlines()
    except OSError:
        return []


def count_lines(p: Pipeline, names: tuple[str, ...], needle: str,
                 but: str | None = None) -> int:
    """Lines containing ``needle`` (and not ``but``) in the logs of ``names`` — every run of
    each process: a restart appends to the same log."""
    return sum(needle in line and (but is None or but not in line)
               for name in names for line in log_lines(p, name))


def first_line(p: Pipeline, name: str, needle: str) -> str | None:
    return next((line for line in log_lines(p, name) if needle in line), None)
