"""``sfprov replay``: rewind the worker's consumer group on the requests topic, so the
worker re-decides what it already read (dedupe, the Salesforce guard and the WHMCS lookup keep
it from creating a second WHMCS order). Plans by default; changes offsets only with
``--execute``, never while the group has members, never forward past unprocessed records
without ``--allow-skip``."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException, TopicPartition
from confluent_kafka import KafkaError as CKafkaError
from confluent_kafka.admin import AdminClient

from common.errors import KafkaError
from common.lag import EXACT_LAG_LIMIT, records_between
from ops.cli import add, duration_s, kafka_settings, worker_group
from ops.kafkaview import (
    client_config,
    consumer,
    end_offsets,
    group_positions,
    rewind_consumer_positions,
)


def _parse_time(text: str) -> int:
    """ISO-8601 time (UTC if no zone) or a relative '-2h' / '-3d' → epoch ms; ValueError
    when it is neither."""
    text = text.strip()
    if text.startswith("-") and text[-1:] in ("s", "m", "h", "d"):
        return int((time.time() - duration_s(text[1:])) * 1000)
    parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return int(parsed.timestamp() * 1000)


def time_arg(text: str) -> int:
    """``--from-time``'s parser: epoch ms, or argparse's one-line usage error naming the
    option (``yesterday`` once ended in a traceback from ``fromisoformat``)."""
    try:
        return _parse_time(text)
    except (ValueError, OverflowError) as exc:
        raise argparse.ArgumentTypeError(
            f"expected an ISO-8601 time (2026-11-20T08:00Z, UTC without a zone) or a "
            f"relative one (-6h, -3d), got {text!r}") from exc


def seconds_arg(text: str) -> float:
    """A wait's parser (``--wait``): seconds, or a duration like ``90s``, ``2m``, that
    ``duration_s`` reads — finite and not negative; else argparse's one-line usage error
    (``nan`` or ``inf`` once made replay wait for an empty group for ever)."""
    try:
        return duration_s(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected seconds (or a duration like 90s, 2m), finite and not negative, "
            f"got {text!r}") from None


def partition_offset_arg(text: str) -> tuple[int, int]:
    """``--from-offset``'s parser: ``P:O`` → (partition, offset), or argparse's one-line
    usage error (``3`` once ended in a traceback from ``int('')``)."""
    partition, sep, offset = text.strip().partition(":")
    try:
        if not sep:
            raise ValueError(text)
        parsed = int(partition), int(offset)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected PARTITION:OFFSET (e.g. 0:17), got {text!r}") from None
    if parsed[0] < 0 or parsed[1] < 0:
        raise argparse.ArgumentTypeError(f"partition and offset cannot be negative: {text!r}")
    return parsed


_COORDINATOR_MOVING = (CKafkaError.NOT_COORDINATOR, CKafkaError.COORDINATOR_LOAD_IN_PROGRESS,
                      CKafkaError.COORDINATOR_NOT_AVAILABLE)


def group_call(call: Callable[[], Any], what: str, timeout_s: float = 30.0) -> Any:
    """``call()`` (a consumer group admin request's result), asked again while the group's
    coordinator is loading or moving — a fresh broker, a failover: ``Not coordinator``; any
    other error, or one lasting ``timeout_s``, as one line (:class:`common.errors.KafkaError`)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return call()
        except KafkaException as exc:
            err = exc.args[0] if exc.args and isinstance(exc.args[0], CKafkaError) else None
            if err is None or err.code() not in _COORDINATOR_MOVING \
                    or time.monotonic() >= deadline:
                raise KafkaError(f"{what}: {err.str() if err else exc}") from exc
            time.sleep(0.5)


# the broker's answers to a commit from outside the group when a member joined after the
# "no members" check: stopping the worker is the remedy
_GROUP_ACTIVE = (CKafkaError.UNKNOWN_MEMBER_ID, CKafkaError.ILLEGAL_GENERATION,
                 CKafkaError.REBALANCE_IN_PROGRESS)


def alter_group_offsets(admin: AdminClient, group: str, tps: list[TopicPartition], what: str,
                        timeout_s: float = 30.0) -> None:
    """Commit ``tps`` as ``group``'s offsets. The admin future does not raise when the broker
    refuses the commit partition by partition (a member joined: ``Unknown member``; no
    authorization): it returns the partitions with ``.error`` set, and replay once said
    "rewound" with nothing moved. A coordinator that moves is asked again
    (:func:`group_call`); any other refusal is one line naming the partitions
    (:class:`common.errors.KafkaError`)."""
    def call() -> Any:
        result = admin.alter_consumer_group_offsets(
            [ConsumerGroupTopicPartitions(group, tps)])[group].result()
        errors = [(tp.partition, tp.error) for tp in result.topic_partitions or []
                  if tp.error is not None]
        moving = [err for _, err in errors if err.code() in _COORDINATOR_MOVING]
        if moving:
            raise KafkaException(moving[0])  # group_call asks again
        if errors:
            by_reason: dict[str, list[int]] = {}
            for partition, err in sorted(errors, key=lambda e: e[0]):
                by_reason.setdefault(err.str(), []).append(partition)
            refused = "; ".join(
                f"partition{'s' if len(ps) > 1 else ''} {', '.join(map(str, ps))}: {reason}"
                for reason, ps in by_reason.items())
            hint = (" (a member joined the group: stop the worker and run replay again)"
                    if any(err.code() in _GROUP_ACTIVE for _, err in errors) else "")
            raise KafkaError(f"{what}: the broker refused the commit of {refused}{hint}")
        return result

    group_call(call, what, timeout_s)


def replay(args: argparse.Namespace) -> int:
    """Plans the rewind; changes the group's offsets only with ``--execute``."""
    args.execute = args.execute and not args.dry_run
    settings = kafka_settings(args)
    group = worker_group(args)
    admin = AdminClient(client_config(settings))
    # no broker: the one line of every command (ops.cli.main), not a minute's wait for a
    # group coordinator and then "Timed out"
    admin.list_topics(settings.requests, timeout=10)
    deadline = time.monotonic() + (args.wait if args.execute else 0.0)
    while True:
        desc = group_call(lambda: admin.describe_consumer_groups([group])[group].result(),
                          f"describing the worker group {group}")
        members = len(desc.members)
        if members == 0:
            break
        if not args.execute:
            break  # a plan is shown whatever the group does; --execute needs it empty
        if time.monotonic() >= deadline:
            print(f"refusing: the worker group {group} has {members} active member(s). Stop "
                  "the worker first (make-up stack: `python -m ops.stack pause worker`), or "
                  "pass --wait SECONDS to wait for it to stop.", file=sys.stderr)
            return 3
        time.sleep(1)
    c = consumer(settings)
    try:
        before = {p: committed for p, committed, *_ in
                  group_positions(settings, c, group, settings.requests)}
        if args.from_offset is not None:
            partition, offset = args.from_offset
            targets = rewind_consumer_positions(settings, settings.requests,
                                                offsets={partition: offset})
            targets = {p: (o if p == partition else before[p]) for p, o in targets.items()}
        else:
            targets = rewind_consumer_positions(settings, settings.requests,
                                                from_time_ms=args.from_time)
        tps = [TopicPartition(settings.requests, p, o) for p, o in sorted(targets.items())]
        bounds = end_offsets(c, settings.requests)
        rows: list[dict[str, Any]] = []
        for tp in tps:
            current = before.get(tp.partition, tp.offset)
            # offsets below the log start are gone (retention, kafka-delete-records): the
            # worker goes on from the log start, so they are not what a move skips (as lag
            # counts); counted from the committed offset, a safe plan was refused
            low = bounds.get(tp.partition, (0, 0))[0]
            skip, exact = _skipped(c, settings.requests, tp.partition, max(current, low),
                                   tp.offset)
            rows.append({"partition": tp.partition, "current": current, "target": tp.offset,
                         "rewind": current - tp.offset, "skip": skip, "skip_exact": exact})
    finally:
        c.close()
    rewound = sum(max(0, r["rewind"]) for r in rows)
    skipped = sum(r["skip"] for r in rows)
    # false: a partition's skip is beyond EXACT_LAG_LIMIT, counted in offsets (markers too)
    skip_exact = all(r["skip_exact"] for r in rows)
    refused = skipped > 0 and not args.allow_skip
    if args.execute and not refused:
        alter_group_offsets(admin, group, tps, f"rewinding the worker group {group}")
    executed = args.execute and not refused
    if args.json:
        print(json.dumps({"group": group, "topic": settings.requests, "executed": executed,
                          "active_members": members, "rewind": rewound, "skip": skipped,
                          "skip_exact": skip_exact, "partitions": rows}, indent=2))
    else:
        for r in rows:
            delta = r["rewind"]
            skips = ("" if not r["skip"] else f": skips {r['skip']} unprocessed"
                     if r["skip_exact"] else
                     f": skips about {r['skip']} unprocessed offsets (commit markers included)")
            print(f"  partition {r['partition']:>2}: {r['current']} → {r['target']} "
                  f"({'+' if delta < 0 else '-'}{abs(delta)} offsets{skips})")
    if refused:
        where = ", ".join(f"partition {r['partition']}: "
                          + (str(r["skip"]) if r["skip_exact"] else f"about {r['skip']} offsets")
                          for r in rows if r["skip"])
        print(f"refusing: this plan moves the worker group {group} forward past "
              f"{_skip_text(skipped, skip_exact)} it has not processed ({where}); the worker "
              "would never provision them. Choose an earlier --from-time or --from-offset, or "
              "pass --allow-skip to skip them on purpose.", file=sys.stderr)
        return 3
    if args.json:
        return 0
    skip_note = (f" and skip {_skip_text(skipped, skip_exact)} it has not processed "
                 "(--allow-skip)" if skipped else "")
    if not executed:
        note = (f"; the group has {members} active member(s): stop the worker before "
                "--execute") if members else ""
        print(f"would rewind group {group} on {settings.requests} by {rewound} offsets"
              f"{skip_note} (a plan: nothing changed; add --execute to apply it{note})")
        return 0
    skip_done = (f"; skipped {_skip_text(skipped, skip_exact)} it had not processed "
                 "(--allow-skip)" if skipped else "")
    print(f"rewound group {group} on {settings.requests} by {rewound} offsets{skip_done}; "
          "the worker re-decides them when it starts (dedupe, the Salesforce guard and the "
          "WHMCS lookup prevent a second WHMCS order)")
    return 0


def _skip_text(skipped: int, exact: bool) -> str:
    """How the plan and its result name a skip: records when every partition's was counted,
    else offsets (beyond :data:`~common.lag.EXACT_LAG_LIMIT` the commit markers are in it)."""
    return (f"{skipped} record(s)" if exact
            else f"about {skipped} offsets (commit markers included) of records")


def _skipped(c: Any, topic: str, partition: int, current: int, target: int
             ) -> tuple[int, bool]:
    """(what a move of the group from ``current`` (the log start when retention removed its
    committed offset) forward to ``target`` skips, exact): the committed records, the
    transaction markers between them not counted (as ``lag`` counts), exact; beyond
    :data:`~common.lag.EXACT_LAG_LIMIT` offsets, the offset distance, markers included, not
    exact. (0, True) for a rewind. The count is the guard against skipping, so a read that
    fails or stops short is an error, not a smaller count (a lenient one once read 0 after a
    broker error, and replay moved the group past 500 unprocessed records)."""
    if target <= current:
        return 0, True
    if target - current > EXACT_LAG_LIMIT:
        return target - current, False
    try:
        return records_between(c, topic, partition, current, target), True
    except (TimeoutError, KafkaException) as exc:
        err = exc.args[0] if exc.args and isinstance(exc.args[0], CKafkaError) else None
        raise KafkaError(
            f"cannot count the records partition {partition} of {topic} would skip (offsets "
            f"{current} to {target}): {err.str() if err else exc}; nothing was changed, run "
            "replay again") from exc


def _configure_replay(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--from-time", type=time_arg,
                   help="ISO-8601 time (UTC) or relative like -6h, -3d")
    g.add_argument("--from-offset", type=partition_offset_arg, metavar="PARTITION:OFFSET",
                   help="PARTITION:OFFSET of the requests topic")
    add(p, "--wait", env="SFPROV_REPLAY_WAIT_S", default=0.0, type=seconds_arg,
        help="with --execute: seconds to wait for the worker group to become empty before "
             "refusing")
    p.add_argument("--execute", action="store_true",
                   help="rewind the group (without it, replay only shows the plan, as "
                        "kafka-consumer-groups --reset-offsets does)")
    p.add_argument("--dry-run", action="store_true", help="show the plan (the default)")
    p.add_argument("--allow-skip", action="store_true",
                   help="let the plan move a partition forward past records the worker has "
                        "not processed (refused without it: they would never be provisioned)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=replay)


COMMAND = ("replay", "Re-drive the worker from the requests topic (rewinds its consumer group).",
           _configure_replay)
