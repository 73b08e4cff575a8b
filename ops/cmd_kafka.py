"""Kafka-side operator commands: topics, tail, lag, replay, dlq."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import sys
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException, Producer, TopicPartition
from confluent_kafka import KafkaError as CKafkaError
from confluent_kafka.admin import AdminClient, ConfigResource

from common.errors import KafkaError
from common.kafka import declared_topics, describe_drift
from common.lag import EXACT_LAG_LIMIT, group_lag, group_reader, records_between
from common.settings import SinkSettings, WorkerSettings
from ops.cli import add, kafka_settings
from ops.kafkaview import (
    QUIET,
    Deliveries,
    client_config,
    consumer,
    end_offsets,
    last_value,
    resolve_topic,
    rewind_consumer_positions,
    scan,
)


def worker_group(args: argparse.Namespace) -> str:
    return kafka_settings(args).topic(WorkerSettings.load().app_id)


def sink_group(args: argparse.Namespace) -> str:
    return kafka_settings(args).topic(SinkSettings.load().group_id)


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
    if args.json:
        print(json.dumps({"topics": rows, "drift": drift}, indent=2))
        return 2 if drift else 0
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
    return 2 if drift else 0


def _human_ms(ms: int) -> str:
    if ms < 0:
        return "forever"
    days = ms / 86_400_000
    return f"{days:g}d" if days >= 1 else f"{ms / 3_600_000:g}h"


# -- tail ---------------------------------------------------------------------------------

def tail(args: argparse.Namespace) -> int:
    settings = kafka_settings(args)
    topic, schema = resolve_topic(settings, args.topic)

    def match(record: Any) -> bool:
        if not args.order_id:
            return True
        value = record.value if isinstance(record.value, dict) else {}
        return args.order_id in (record.key, value.get("order_id"), value.get("OrderId__c"),
                                 record.headers.get("order_id"))

    for record in scan(settings, topic, schema, from_beginning=args.from_beginning,
                       last=args.last, follow=args.follow, match=match):
        print(json.dumps(record.as_json(), ensure_ascii=False, default=str), flush=True)
    return 0


# -- lag ----------------------------------------------------------------------------------

def _group_lag(settings: Any, c: Any, group: str, topic: str) -> list[tuple[int, int, int]]:
    reader = group_reader(settings, group, **QUIET)
    try:
        return group_lag(reader, c, topic)
    finally:
        reader.close()


def lag(args: argparse.Namespace) -> int:
    settings = kafka_settings(args)
    c = consumer(settings)
    groups: list[dict[str, Any]] = []
    try:
        for label, group, topic in (("worker", worker_group(args), settings.requests),
                                    ("sink", sink_group(args), settings.outcomes)):
            rows = _group_lag(settings, c, group, topic)
            groups.append({"process": label, "group": group, "topic": topic,
                           "lag": sum(max(0, end - committed) for _, committed, end in rows),
                           "partitions": [{"partition": p, "committed": committed, "end": end,
                                           "lag": max(0, end - committed)}
                                          for p, committed, end in rows]})
    finally:
        c.close()
    if args.json:
        print(json.dumps({"groups": groups, "connector": _connector_position(args)},
                         indent=2, default=str))
        return 0
    for g in groups:
        print(f"{g['process']} (group {g['group']}) on {g['topic']}: lag {g['lag']}")
        for row in g["partitions"]:
            print(f"  partition {row['partition']:>2}  committed {row['committed']:>9}  "
                  f"end {row['end']:>9}  lag {row['lag']:>7}")
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
    committed = value["committed_at"]
    return {"name": conn.name, "replay_id": value["replay_id"].hex(), "source": value["source"],
            "committed_at": committed.isoformat(timespec="seconds"),
            "age_s": round((dt.datetime.now(dt.UTC) - committed).total_seconds())}


def _print_connector_position(args: argparse.Namespace) -> None:
    pos = _connector_position(args)
    if pos["replay_id"] is None:
        print(f"connector {pos['name']}: no replay position committed yet")
        return
    print(f"connector {pos['name']}: replay id {pos['replay_id']} ({pos['source']}) "
          f"committed {pos['committed_at']} ({pos['age_s']}s ago)")


# -- replay -------------------------------------------------------------------------------

def _parse_time(text: str) -> int:
    """ISO-8601 time (UTC if no zone) or a relative '-2h' / '-3d' → epoch ms; ValueError
    when it is neither."""
    text = text.strip()
    if text.startswith("-") and text[-1:] in ("s", "m", "h", "d"):
        unit = {"s": 1, "m": 60, "h": 3600, "d": 86400}[text[-1]]
        amount = float(text[1:-1])
        if not math.isfinite(amount) or amount < 0:
            raise ValueError(f"not a duration: {text[1:]!r}")
        return int((time.time() - amount * unit) * 1000)
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
        before = {p: committed
                  for p, committed, _ in _group_lag(settings, c, group, settings.requests)}
        if args.from_offset is not None:
            partition, offset = args.from_offset
            targets = rewind_consumer_positions(settings, settings.requests,
                                                offsets={partition: offset})
            targets = {p: (o if p == partition else before[p]) for p, o in targets.items()}
        else:
            targets = rewind_consumer_positions(settings, settings.requests,
                                                from_time_ms=args.from_time)
        tps = [TopicPartition(settings.requests, p, o) for p, o in sorted(targets.items())]
        rows: list[dict[str, Any]] = []
        for tp in tps:
            current = before.get(tp.partition, tp.offset)
            rows.append({"partition": tp.partition, "current": current, "target": tp.offset,
                         "rewind": current - tp.offset,
                         "skip": _skipped(c, settings.requests, tp.partition, current,
                                          tp.offset)})
    finally:
        c.close()
    rewound = sum(max(0, r["rewind"]) for r in rows)
    skipped = sum(r["skip"] for r in rows)
    refused = skipped > 0 and not args.allow_skip
    if args.execute and not refused:
        group_call(lambda: admin.alter_consumer_group_offsets(
            [ConsumerGroupTopicPartitions(group, tps)])[group].result(),
            f"rewinding the worker group {group}")
    executed = args.execute and not refused
    if args.json:
        print(json.dumps({"group": group, "topic": settings.requests, "executed": executed,
                          "active_members": members, "rewind": rewound, "skip": skipped,
                          "partitions": rows}, indent=2))
    else:
        for r in rows:
            delta = r["rewind"]
            skips = f": skips {r['skip']} unprocessed" if r["skip"] else ""
            print(f"  partition {r['partition']:>2}: {r['current']} → {r['target']} "
                  f"({'+' if delta < 0 else '-'}{abs(delta)} records{skips})")
    if refused:
        where = ", ".join(f"partition {r['partition']}: {r['skip']}" for r in rows if r["skip"])
        print(f"refusing: this plan moves the worker group {group} forward past {skipped} "
              f"record(s) it has not processed ({where}); the worker would never provision "
              "them. Choose an earlier --from-time or --from-offset, or pass --allow-skip to "
              "skip them on purpose.", file=sys.stderr)
        return 3
    if args.json:
        return 0
    skip_note = (f" and skip {skipped} record(s) it has not processed (--allow-skip)"
                 if skipped else "")
    if not executed:
        note = (f"; the group has {members} active member(s): stop the worker before "
                "--execute") if members else ""
        print(f"would rewind group {group} on {settings.requests} by {rewound} records"
              f"{skip_note} (a plan: nothing changed; add --execute to apply it{note})")
        return 0
    skip_done = (f"; skipped {skipped} record(s) it had not processed (--allow-skip)"
                 if skipped else "")
    print(f"rewound group {group} on {settings.requests} by {rewound} records{skip_done}; "
          "the worker re-decides them when it starts (dedupe, the Salesforce guard and the "
          "WHMCS lookup prevent a second WHMCS order)")
    return 0


def _skipped(c: Any, topic: str, partition: int, current: int, target: int) -> int:
    """Records a move of the group from ``current`` forward to ``target`` skips: committed
    records, the transaction markers between them not counted (as ``lag`` counts; offsets
    beyond :data:`~common.lag.EXACT_LAG_LIMIT`). 0 for a rewind."""
    if target <= current:
        return 0
    if target - current > EXACT_LAG_LIMIT:
        return target - current
    return records_between(c, topic, partition, current, target)


# -- dlq ----------------------------------------------------------------------------------

def dlq(args: argparse.Namespace) -> int:
    settings = kafka_settings(args)
    topic = settings.dead_letters
    selected = set(args.offsets or [])

    def match(record: Any) -> bool:
        if args.stage and record.headers.get("stage") != args.stage:
            return False
        if args.order_id and args.order_id not in (record.key, record.headers.get("order_id")):
            return False
        return not selected or f"{record.partition}:{record.offset}" in selected

    records = list(scan(settings, topic, None, match=match))
    if args.action == "list" and args.json:
        print(json.dumps([r.as_json() for r in records], indent=2, default=str))
        return 0
    if args.action == "list":
        for r in records:
            h = r.headers
            print(f"{r.partition}:{r.offset:<8} {h.get('stage', '?'):<9} "
                  f"{h.get('error_code') or h.get('error_class', ''):<28} key={r.key} "
                  f"{h.get('reason', '')[:120]}")
        print(f"{len(records)} dead letter(s)")
        return 0
    if not selected and not args.all:
        print("name the records to requeue with --offset P:O (repeatable), or pass --all: "
              "every dead letter --stage/--order-id select (every one without them)")
        return 3
    producer = Producer(client_config(settings, **{
        "acks": "all", "enable.idempotence": True, "partitioner": "murmur2_random"}))
    sent = Deliveries()
    for r in records:
        source = r.headers.get("source_topic")
        if not source:
            print(f"{r.partition}:{r.offset}: no source topic (stage {r.headers.get('stage')}); "
                  "not requeueable — fix it at the source")
            continue
        sent.produce(producer, source, key=r.key.encode() if r.key else None,
                     value=r.raw_value,
                     headers=[("sfprov.requeued_from", f"{topic}:{r.partition}:{r.offset}"
                               .encode())])
    sent.wait(producer, 30)
    # what the broker took, not what was handed to the producer
    print(f"requeued {sent.delivered} record(s)")
    if sent.not_delivered:
        print(f"error: {sent.not_delivered} record(s) not requeued ({sent.problems()}); "
              f"they stay in {topic}", file=sys.stderr)
        return 1
    return 0


def _json_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _configure_topics(p: argparse.ArgumentParser) -> None:
    _json_flag(p)
    p.set_defaults(func=topics)


def _configure_tail(p: argparse.ArgumentParser) -> None:
    p.add_argument("topic", help="requests | outcomes | dead-letters | offsets | gaps | a topic name")
    p.add_argument("--from-beginning", action="store_true", help="start at the first record")
    add(p, "--last", env="SFPROV_TAIL_LAST", default=10, type=int,
        help="records per partition to show from the end (without --from-beginning)")
    p.add_argument("-f", "--follow", action="store_true", help="keep waiting for new records")
    add(p, "--order-id", env="SFPROV_ORDER_ID", help="only records of this Salesforce Order")
    p.add_argument("--json", action="store_true",
                   help="JSON lines (what tail always prints; accepted for symmetry)")
    p.set_defaults(func=tail)


def _configure_lag(p: argparse.ArgumentParser) -> None:
    _json_flag(p)
    p.set_defaults(func=lag)


def _configure_replay(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--from-time", type=time_arg,
                   help="ISO-8601 time (UTC) or relative like -6h, -3d")
    g.add_argument("--from-offset", type=partition_offset_arg, metavar="PARTITION:OFFSET",
                   help="PARTITION:OFFSET of the requests topic")
    add(p, "--wait", env="SFPROV_REPLAY_WAIT_S", default=0.0, type=float,
        help="with --execute: seconds to wait for the worker group to become empty before "
             "refusing")
    p.add_argument("--execute", action="store_true",
                   help="rewind the group (without it, replay only shows the plan, as "
                        "kafka-consumer-groups --reset-offsets does)")
    p.add_argument("--dry-run", action="store_true", help="show the plan (the default)")
    p.add_argument("--allow-skip", action="store_true",
                   help="let the plan move a partition forward past records the worker has "
                        "not processed (refused without it: they would never be provisioned)")
    _json_flag(p)
    p.set_defaults(func=replay)


def _configure_dlq(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["list", "requeue"], nargs="?", default="list")
    p.add_argument("--offset", dest="offsets", action="append",
                   help="PARTITION:OFFSET of a dead letter (repeatable)")
    add(p, "--stage", env="SFPROV_DLQ_STAGE", help="connector | worker | sink")
    add(p, "--order-id", env="SFPROV_ORDER_ID", help="only dead letters of this Order")
    p.add_argument("--all", action="store_true", help="requeue every matching record")
    _json_flag(p)
    p.set_defaults(func=dlq)


COMMANDS = [
    ("topics", "The project's topics: partitions, records, retention, config drift.",
     _configure_topics),
    ("tail", "Records of a topic decoded from Avro to JSON lines.", _configure_tail),
    ("lag", "Consumer lag of the worker and the sink; the connector's replay position.",
     _configure_lag),
    ("replay", "Re-drive the worker from the requests topic (rewinds its consumer group).",
     _configure_replay),
    ("dlq", "List dead letters with their reasons; requeue selected ones after a fix.",
     _configure_dlq),
]
