"""``sfprov dlq``: list dead letters with their reasons; requeue selected ones after a fix
(each copy that lands gets a requeue marker in the dead-letter topic)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from confluent_kafka import Producer

from common.deadletter import REQUEUE_COVERS, REQUEUE_OF, REQUEUED_TO, requeue_marker_headers
from common.errors import KafkaError as PipelineKafkaError
from ops import cmd_replay
from ops.cli import add, kafka_settings
from ops.kafkaview import Deliveries, client_config, order_id_arg, order_id_forms, scan

# -- dlq ----------------------------------------------------------------------------------

def dlq(args: argparse.Namespace) -> int:
    if args.action == "requeue" and not args.offsets and not args.all:
        # a usage error (exit 2), before the dead-letter topic is read
        args.usage_error("requeue needs --offset PARTITION:OFFSET (repeatable) or --all "
                         "(every dead letter --stage/--order-id select; every one without "
                         "them)")
    settings = kafka_settings(args)
    topic = settings.dead_letters
    selected: set[tuple[int, int]] = set(args.offsets or [])  # (partition, offset)
    wanted = order_id_forms(args.order_id) if args.order_id else set()
    requeue = args.action == "requeue"
    named: set[str] = set()  # the dead letters a later one names in dlq.requeued_from
    requeued: dict[str, str] = {}  # P:O of a dead letter requeued → where its copy went
    covered: set[str] = set()  # P:O of twins a requeued copy covers (its marker says)
    # a record → the P:O of its dead letters, whatever the selection (a marker lists them)
    twins: dict[tuple[Any, ...], list[str]] = {}

    def match(record: Any) -> bool:
        if record.headers.get(REQUEUE_OF):  # a marker: no dead letter itself
            requeued[record.headers[REQUEUE_OF]] = record.headers.get(REQUEUED_TO, "")
            covered.update(filter(None, record.headers.get(REQUEUE_COVERS, "").split(",")))
            return False
        if record.headers.get("requeued_from"):
            named.add(record.headers["requeued_from"])
        if requeue:
            twins.setdefault(record_of(record), []).append(f"{record.partition}:{record.offset}")
        if args.stage and record.headers.get("stage") != args.stage:
            return False
        if wanted and wanted.isdisjoint((record.key, record.headers.get("order_id"))):
            return False
        return not selected or (record.partition, record.offset) in selected

    try:
        # what was read is judged (a requeue) or counted (a list): a partition that stops
        # before its end is an error, not a quiet "requeued N" or "0 dead letter(s)"
        records = list(scan(settings, topic, None, match=match, complete=True))
    except PipelineKafkaError as exc:
        if not requeue:
            raise
        raise PipelineKafkaError(f"{exc}; nothing was requeued, run it again") from exc

    def copy_of(r: Any) -> str | None:
        return requeued.get(f"{r.partition}:{r.offset}")

    if args.action == "list" and args.json:
        print(json.dumps([{**r.as_json(), "requeued_to": copy_of(r)} for r in records],
                         indent=2, default=str))
        return 0
    if args.action == "list":
        for r in records:
            h = r.headers
            done = f" (requeued to {copy_of(r)})" if copy_of(r) is not None else ""
            print(f"{r.partition}:{r.offset:<8} {h.get('stage', '?'):<9} "
                  f"{h.get('error_code') or h.get('error_class', ''):<28} key={r.key} "
                  f"{h.get('reason', '')[:120]}{done}")
        print(f"{len(records)} dead letter(s)"
              + (f", {sum(copy_of(r) is not None for r in records)} of them requeued"
                 if requeued else ""))
        return 0
    producer = Producer(client_config(settings, **{
        "acks": "all", "enable.idempotence": True, "partitioner": "murmur2_random"}))
    sent = Deliveries()
    # the records named with --offset that are not requeued: each an error line, exit 1
    problems = [f"{p}:{o}: no dead letter there in {topic}"
                + (" that --stage/--order-id select" if args.stage or wanted else "")
                for p, o in sorted(selected - {(r.partition, r.offset) for r in records})]
    if not selected:  # --all: each failing record once, not once per dead letter of it
        # generations first: a dead letter requeued before still stands for its older twins
        # (the same record dead-lettered twice), which would otherwise be sent in its place
        records, superseded, copied = newest_generation(topic, records, named, covered)
        if superseded:
            print(f"passed over {len(superseded)} dead letter(s) a later one supersedes (its "
                  f"requeued copy failed again, or the same record dead-lettered twice): "
                  f"{shown_list(superseded)}; --offset P:O requeues one anyway")
        already = [f"{r.partition}:{r.offset}" for r in records
                   if copy_of(r) is not None or id(r) in copied]
        records = [r for r in records if copy_of(r) is None and id(r) not in copied]
        if already:
            print(f"passed over {len(already)} dead letter(s) requeued before, or whose twin "
                  f"was (a copy reached its topic after it was written; `dlq list` names "
                  f"it): {shown_list(already)}; --offset P:O requeues one again")
    for r in records:
        source = r.headers.get("source_topic")
        if not source:
            line = (f"{r.partition}:{r.offset}: no source topic (stage "
                    f"{r.headers.get('stage')}); not requeueable — fix it at the source")
            if selected:
                problems.append(line)
            else:  # --all passes over them
                print(line)
            continue
        sent.produce(producer, source, tag=r, key=r.key_bytes(), value=r.raw_value,
                     headers=[(REQUEUED_FROM, f"{topic}:{r.partition}:{r.offset}".encode())])
    # every copy's fate known before any marker (Deliveries.wait): one still unsent after
    # the wait, counted "not requeued", once landed while the markers were flushed
    sent.wait(producer)
    # what the broker took, not what was handed to the producer
    print(f"requeued {sent.delivered} record(s)")
    # then, for each copy that landed, its marker: a later --all passes over the dead letter
    marked = Deliveries()
    for r, copy in sent.landed:
        this = f"{r.partition}:{r.offset}"
        marked.produce(producer, topic, key=r.key_bytes(), value=b"",
                       headers=requeue_marker_headers(r.partition, r.offset, copy, covers=[
                           po for po in twins.get(record_of(r), []) if po != this]))
    marked.wait(producer)
    if marked.not_delivered:
        problems.append(f"{marked.not_delivered} requeue marker(s) not written to {topic} "
                        f"({marked.problems()}): a later --all sends those dead letters again")
    for line in problems:
        print(f"error: {line}", file=sys.stderr)
    if sent.not_delivered:
        print(f"error: {sent.not_delivered} record(s) not requeued ({sent.problems()}); "
              f"they stay in {topic}", file=sys.stderr)
    return 1 if problems or sent.not_delivered else 0


def shown_list(positions: list[str]) -> str:
    """The first ten ``P:O`` of ``positions``, then an ellipsis."""
    return ", ".join(positions[:10]) + (", …" if len(positions) > 10 else "")


#: the header of each copy requeue sends (``TOPIC:PARTITION:OFFSET`` of its dead letter); the
#: worker and the sink carry it into a dead letter of that copy as ``dlq.requeued_from``
#: (dead letters written before they did are told apart by the same-bytes rule of
#: :func:`newest_generation`)
REQUEUED_FROM = "sfprov.requeued_from"


def record_of(r: Any) -> tuple[Any, ...]:
    """The record a dead letter holds: its source topic, key and bytes (the same for each
    of its twins); one without a source topic (not requeueable) is its own."""
    source = r.headers.get("source_topic")
    return (source, r.key_bytes(), r.raw_value) if source else ("", r.partition, r.offset)


def newest_generation(topic: str, records: list[Any], named: set[str],
                      covered: set[str] | None = None
                      ) -> tuple[list[Any], list[str], set[int]]:
    """The newest generation of each record among ``records`` (dead letters of ``topic``):
    what ``requeue --all`` considers before it passes over dead letters that already have a
    requeue marker; and the ``P:O`` of those it passes over here: a dead letter that a later one names in
    ``dlq.requeued_from`` (its requeued copy was dead-lettered again: the later one stands
    for it), and one whose record — source topic, key and bytes — a later dead letter holds
    too (a requeued copy dead-lettered by a stage that does not carry the header, or a
    record dead-lettered twice on a redelivery). Without this each ``--all`` sent every
    generation again: while the cause stayed, the dead letters doubled on every run.

    Third, the ids of the newest dead letters whose record was requeued already: a requeue
    marker of a twin names them (``covered``: the ``P:O`` its ``requeue_covers`` lists —
    the twins the requeue read, so written before the copy landed; a failure of that copy is
    a later dead letter, named by none). (The same record dead-lettered twice, A then B, A
    requeued with ``--offset``: a later ``--all`` sent B, the record a second time.) Told by
    what the marker lists, not by timestamps: the CLI's clock and the worker's or sink's
    are not one."""
    covered = covered or set()
    newest: dict[tuple[Any, ...], Any] = {}
    for r in sorted(records, key=lambda r: (r.timestamp_ms, r.partition, r.offset)):
        if f"{topic}:{r.partition}:{r.offset}" in named:
            continue
        newest[record_of(r)] = r  # a later one of the same record replaces it
    kept = {id(r) for r in newest.values()}
    copied = {id(r) for r in newest.values() if f"{r.partition}:{r.offset}" in covered}
    return ([r for r in records if id(r) in kept],
            [f"{r.partition}:{r.offset}" for r in records if id(r) not in kept], copied)


#: the ``dlq.stage`` header's values: who wrote the dead letter
DLQ_STAGES = ("connector", "worker", "sink")


def stage_arg(text: str) -> str:
    """``--stage``'s parser: one of :data:`DLQ_STAGES`, else argparse's one-line usage error
    (``--stage Worker`` once matched no dead letter: ``requeued 0 record(s)``, exit 0)."""
    if text not in DLQ_STAGES:
        raise argparse.ArgumentTypeError(
            f"expected {', '.join(DLQ_STAGES[:-1])} or {DLQ_STAGES[-1]}, got {text!r}")
    return text


def _configure_dlq(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["list", "requeue"], nargs="?", default="list")
    p.add_argument("--offset", dest="offsets", action="append",
                   type=cmd_replay.partition_offset_arg, metavar="PARTITION:OFFSET",
                   help="PARTITION:OFFSET of a dead letter (repeatable)")
    add(p, "--stage", env="SFPROV_DLQ_STAGE", type=stage_arg, metavar="STAGE",
        help="only dead letters of this stage: connector | worker | sink")
    add(p, "--order-id", env="SFPROV_ORDER_ID", type=order_id_arg,
        help="only dead letters of this Order (15 or 18 characters)")
    p.add_argument("--all", action="store_true",
                   help="requeue every matching dead letter, each failing record once: one "
                        "that a later dead letter supersedes (its requeued copy failed again, "
                        "or the same record dead-lettered twice) is passed over, so repeated "
                        "runs send each still-failing record once, not once per dead letter")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=dlq, usage_error=p.error)


COMMAND = ("dlq", "List dead letters with their reasons; requeue selected ones after a fix.",
           _configure_dlq)
