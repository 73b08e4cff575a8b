"""Kafka-side operator commands: topics, tail, lag, dlq (replay: :mod:`ops.cmd_replay`)."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from typing import Any

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, ConfigResource

from common.deadletter import REQUEUE_OF, REQUEUED_TO, requeue_marker_headers
from common.errors import KafkaError as PipelineKafkaError
from common.kafka import declared_topics, describe_drift
from ops import cmd_replay
from ops.cli import add, kafka_settings, sink_group, worker_group
from ops.kafkaview import (
    Deliveries,
    client_config,
    consumer,
    end_offsets,
    group_positions,
    last_value,
    order_id_arg,
    order_id_forms,
    resolve_topic,
    scan,
)

# -- topics -------------------------------------------------------------------------------

def topics(args: argparse.Namespace) -> int:
    settings = kafka_settings(args)
    admin = AdminClient(client_config(settings))
    md = admin.list_topics(timeout=10)
    specs = declared_topics(settings)
    present = [s for s in specs if s.name in md.topics]
    c = consumer(settings)
    rows: list[dict[str, Any]] = []
    configs = {}
    if present:
        res = {s.name: ConfigResource(ConfigResource.Type.TOPIC, s.name) for s in present}
        fut = admin.describe_configs(list(res.values()))
        configs = {name: fut[r].result() for name, r in res.items()}
    for spec in specs:
        if spec.name not in md.topics:
            rows.append({"topic": spec.name, "missing": True})
            continue
        bounds = end_offsets(c, spec.name)
        cfg = configs[spec.name]
        rows.append({"topic": spec.name, "partitions": len(bounds),
                     "records": sum(high - low for low, high in bounds.values()),
                     "retention_ms": int(cfg["retention.ms"].value),
                     "cleanup_policy": cfg["cleanup.policy"].value})
    c.close()
    drift = describe_drift(admin, present, md)
    # a missing topic fails the check as drift does (the processes cannot run without it)
    code = 2 if drift or len(present) < len(specs) else 0
    if args.json:
        print(json.dumps({"topics": rows, "drift": drift}, indent=2))
        return code
    print(f"{'topic':<45} {'parts':>5} {'records*':>10} {'retention':>12} {'cleanup':>8}")
    for row in rows:
        if row.get("missing"):
            print(f"{row['topic']:<45} {'MISSING':>5}   (run: make topics)")
            continue
        print(f"{row['topic']:<45} {row['partitions']:>5} {row['records']:>10} "
              f"{_human_ms(row['retention_ms']):>12} {row['cleanup_policy']:>8}")
    for line in drift:
        print(f"drift: {line}")
    print("* records = end offset − start offset (includes transaction markers)")
    return code


def _human_ms(ms: int) -> str:
    if ms < 0:
        return "forever"
    days = ms / 86_400_000
    return f"{days:g}d" if days >= 1 else f"{ms / 3_600_000:g}h"


# -- tail ---------------------------------------------------------------------------------

def tail(args: argparse.Namespace) -> int:
    settings = kafka_settings(args)
    topic, schema = resolve_topic(settings, args.topic)
    wanted = order_id_forms(args.order_id) if args.order_id else set()

    def match(record: Any) -> bool:
        if not wanted:
            return True
        value = record.value if isinstance(record.value, dict) else {}
        return not wanted.isdisjoint((record.key, value.get("order_id"),
                                      value.get("OrderId__c"), record.headers.get("order_id")))

    for record in scan(settings, topic, schema, from_beginning=args.from_beginning,
                       last=args.last, follow=args.follow, match=match):
        print(json.dumps(record.as_json(), ensure_ascii=False, default=str), flush=True)
    return 0


# -- lag ----------------------------------------------------------------------------------

def lag(args: argparse.Namespace) -> int:
    settings = kafka_settings(args)
    c = consumer(settings)
    groups: list[dict[str, Any]] = []
    try:
        for label, group, topic in (("worker", worker_group(args), settings.requests),
                                    ("sink", sink_group(args), settings.outcomes)):
            rows = group_positions(settings, c, group, topic)
            # end: the log end offset, as kafka-consumer-groups shows it; lag: the records
            # left (a transactional topic's end counts commit markers too), offsets when the
            # partition is more than EXACT_LAG_LIMIT behind (lag_exact false)
            groups.append({"process": label, "group": group, "topic": topic,
                           "lag": sum(row.lag for row in rows),
                           "partitions": [{"partition": row.partition,
                                           "committed": row.committed if row.has_committed
                                           else None, "end": row.end,
                                           "lag": row.lag, "lag_exact": row.exact}
                                          for row in rows]})
    finally:
        c.close()
    if args.json:
        print(json.dumps({"groups": groups, "connector": _connector_position(args)},
                         indent=2, default=str))
        return 0
    for g in groups:
        print(f"{g['process']} (group {g['group']}) on {g['topic']}: lag {g['lag']}")
        for row in g["partitions"]:
            note = "" if row["lag_exact"] else "  (offsets: markers included)"
            if row["committed"] is None:  # kafka-consumer-groups shows "-"
                note += ("  (no committed offset: lag from the log start; " + (
                    "the worker starts there)" if g["process"] == "worker" else
                    "where the sink starts: SINK_START_POSITION)"))
            committed = "-" if row["committed"] is None else row["committed"]
            print(f"  partition {row['partition']:>2}  committed {committed:>9}  "
                  f"end {row['end']:>9}  lag {row['lag']:>7}{note}")
    _print_connector_position(args)
    return 0


def _connector_position(args: argparse.Namespace) -> dict[str, Any]:
    from common.settings import ConnectorSettings

    settings = kafka_settings(args)
    conn = ConnectorSettings.load()
    key = f"{conn.name}|{conn.channel}"
    record = last_value(settings, settings.connector_offsets, "connector_offset", key)
    if record is None:
        return {"name": conn.name, "replay_id": None}
    value = record.value
    if "committed_at" not in value:  # the key's tombstone (no position), or undecodable
        return {"name": conn.name, "replay_id": None,
                **({} if value.get("tombstone") else {"unreadable": value.get("undecodable")})}
    committed = value["committed_at"]
    return {"name": conn.name, "replay_id": value["replay_id"].hex(), "source": value["source"],
            "committed_at": committed.isoformat(timespec="seconds"),
            "age_s": round((dt.datetime.now(dt.UTC) - committed).total_seconds())}


def _print_connector_position(args: argparse.Namespace) -> None:
    pos = _connector_position(args)
    if pos.get("unreadable"):
        print(f"connector {pos['name']}: its last position record cannot be read: "
              f"{pos['unreadable']}")
        return
    if pos["replay_id"] is None:
        print(f"connector {pos['name']}: no replay position committed yet")
        return
    print(f"connector {pos['name']}: replay id {pos['replay_id']} ({pos['source']}) "
          f"committed {pos['committed_at']} ({pos['age_s']}s ago)")


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

    def match(record: Any) -> bool:
        if record.headers.get(REQUEUE_OF):  # a marker: no dead letter itself
            requeued[record.headers[REQUEUE_OF]] = record.headers.get(REQUEUED_TO, "")
            return False
        if record.headers.get("requeued_from"):
            named.add(record.headers["requeued_from"])
        if args.stage and record.headers.get("stage") != args.stage:
            return False
        if wanted and wanted.isdisjoint((record.key, record.headers.get("order_id"))):
            return False
        return not selected or (record.partition, record.offset) in selected

    try:
        # a requeue judges what it read: a partition that stops before its end is an error,
        # not a quiet "requeued N" without its dead letters
        records = list(scan(settings, topic, None, match=match, complete=requeue))
    except PipelineKafkaError as exc:
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
        records, superseded = newest_generation(topic, records, named)
        if superseded:
            print(f"passed over {len(superseded)} dead letter(s) a later one supersedes (its "
                  f"requeued copy failed again, or the same record dead-lettered twice): "
                  f"{shown_list(superseded)}; --offset P:O requeues one anyway")
        already = [f"{r.partition}:{r.offset}" for r in records if copy_of(r) is not None]
        records = [r for r in records if copy_of(r) is None]
        if already:
            print(f"passed over {len(already)} dead letter(s) requeued before (a copy reached "
                  f"its topic; `dlq list` names it): {shown_list(already)}; --offset P:O "
                  "requeues one again")
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
    sent.wait(producer, 30)
    # what the broker took, not what was handed to the producer
    print(f"requeued {sent.delivered} record(s)")
    # then, for each copy that landed, its marker: a later --all passes over the dead letter
    marked = Deliveries()
    for r, copy in sent.landed:
        marked.produce(producer, topic, key=r.key_bytes(), value=b"",
                       headers=requeue_marker_headers(r.partition, r.offset, copy))
    marked.wait(producer, 30)
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


def newest_generation(topic: str, records: list[Any], named: set[str]
                      ) -> tuple[list[Any], list[str]]:
    """The newest generation of each record among ``records`` (dead letters of ``topic``):
    what ``requeue --all`` considers before it passes over dead letters that already have a
    requeue marker; and the ``P:O`` of those it passes over here: a dead letter that a later one names in
    ``dlq.requeued_from`` (its requeued copy was dead-lettered again: the later one stands
    for it), and one whose record — source topic, key and bytes — a later dead letter holds
    too (a requeued copy dead-lettered by a stage that does not carry the header, or a
    record dead-lettered twice on a redelivery). Without this each ``--all`` sent every
    generation again: while the cause stayed, the dead letters doubled on every run."""
    newest: dict[tuple[Any, ...], Any] = {}
    for r in sorted(records, key=lambda r: (r.timestamp_ms, r.partition, r.offset)):
        if f"{topic}:{r.partition}:{r.offset}" in named:
            continue
        source = r.headers.get("source_topic")
        # not requeueable ones are each kept (each is named as passed over)
        what = ((source, r.key_bytes(), r.raw_value) if source
                else ("", r.partition, r.offset))
        newest[what] = r  # a later one of the same record replaces it
    kept = {id(r) for r in newest.values()}
    return ([r for r in records if id(r) in kept],
            [f"{r.partition}:{r.offset}" for r in records if id(r) not in kept])


#: the ``dlq.stage`` header's values: who wrote the dead letter
DLQ_STAGES = ("connector", "worker", "sink")


def stage_arg(text: str) -> str:
    """``--stage``'s parser: one of :data:`DLQ_STAGES`, else argparse's one-line usage error
    (``--stage Worker`` once matched no dead letter: ``requeued 0 record(s)``, exit 0)."""
    if text not in DLQ_STAGES:
        raise argparse.ArgumentTypeError(
            f"expected {', '.join(DLQ_STAGES[:-1])} or {DLQ_STAGES[-1]}, got {text!r}")
    return text


def whole_number(text: str) -> int:
    """``text`` as an int, else argparse's one-line usage error (for the type functions of
    options that take a count: :func:`last_arg`, ``demo --count``)."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def last_arg(text: str) -> int:
    """``--last``'s parser: a whole number of records, not negative (0: none of those
    already there; with ``-f``, only new ones), else argparse's one-line usage error
    (``--last -3`` once showed nothing, exit 0)."""
    value = whole_number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"cannot be negative: {text!r}")
    return value


def _json_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _configure_topics(p: argparse.ArgumentParser) -> None:
    _json_flag(p)
    p.set_defaults(func=topics)


def _configure_tail(p: argparse.ArgumentParser) -> None:
    p.add_argument("topic", help="requests | outcomes | dead-letters | offsets | gaps | a topic name")
    p.add_argument("--from-beginning", action="store_true", help="start at the first record")
    add(p, "--last", env="SFPROV_TAIL_LAST", default=10, type=last_arg, metavar="N",
        help="records per partition to show from the end (without --from-beginning); 0 "
             "shows none of them (with -f: only new records)")
    p.add_argument("-f", "--follow", action="store_true", help="keep waiting for new records")
    add(p, "--order-id", env="SFPROV_ORDER_ID", type=order_id_arg,
        help="only records of this Salesforce Order (15 or 18 characters)")
    p.add_argument("--json", action="store_true",
                   help="JSON lines (what tail always prints; accepted for symmetry)")
    p.set_defaults(func=tail)


def _configure_lag(p: argparse.ArgumentParser) -> None:
    _json_flag(p)
    p.set_defaults(func=lag)


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
    _json_flag(p)
    p.set_defaults(func=dlq, usage_error=p.error)


COMMANDS = [
    ("topics", "The project's topics: partitions, records, retention, config drift.",
     _configure_topics),
    ("tail", "Records of a topic decoded from Avro to JSON lines.", _configure_tail),
    ("lag", "Consumer lag of the worker and the sink; the connector's replay position.",
     _configure_lag),
    cmd_replay.COMMAND,
    ("dlq", "List dead letters with their reasons; requeue selected ones after a fix.",
     _configure_dlq),
]
