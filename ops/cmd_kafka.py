"""Kafka-side operator commands: topics, tail, lag (replay: :mod:`ops.cmd_replay`; dead
letters: :mod:`ops.cmd_dlq`)."""

from __future__ import annotations

import argparse
import datetime as dt
import json
from typing import Any

from confluent_kafka.admin import AdminClient, ConfigResource

from common.kafka import declared_topics, describe_drift
from ops import cmd_dlq, cmd_replay
from ops.cli import add, kafka_settings, sink_group, worker_group
from ops.kafkaview import (
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


COMMANDS = [
    ("topics", "The project's topics: partitions, records, retention, config drift.",
     _configure_topics),
    ("tail", "Records of a topic decoded from Avro to JSON lines.", _configure_tail),
    ("lag", "Consumer lag of the worker and the sink; the connector's replay position.",
     _configure_lag),
    cmd_replay.COMMAND,
    cmd_dlq.COMMAND,
]
