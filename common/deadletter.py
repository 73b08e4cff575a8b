"""Dead letters: the original key and bytes, with the reason in headers.

Every stage writes dead letters with the same header names, so ``sfprov dlq`` can list and
requeue them whatever their origin::

    dlq.stage            connector | worker | sink
    dlq.reason           human-readable reason
    dlq.error_class      exception class or error kind (e.g. SerdeError, INVALID_FIELD)
    dlq.error_code       machine-readable code when one exists
    dlq.source_topic     topic the record came from ('' for the connector: Salesforce)
    dlq.source_partition / dlq.source_offset
    dlq.at               epoch milliseconds
    plus stage-specific context: dlq.order_id, dlq.event_uuid, dlq.replay_id (hex),
    dlq.schema_id, dlq.idem_key

``sfprov dlq requeue`` adds one more kind of record to the topic, after a dead letter's copy
reached its source topic: a *requeue marker* (empty value, the dead letter's key), so a
later ``requeue --all`` does not send it again (a sink outcome sent twice is written twice,
the second time over whatever Salesforce holds by then)::

    dlq.requeue_of       PARTITION:OFFSET of the dead letter requeued
    dlq.requeued_to      TOPIC:PARTITION:OFFSET of its copy
    dlq.at               epoch milliseconds
"""

from __future__ import annotations

import time
from typing import Any

from common.log import redact

PREFIX = "dlq."


def dead_letter_headers(*, stage: str, reason: str, error_class: str, error_code: str = "",
                        source_topic: str = "", source_partition: int | None = None,
                        source_offset: int | None = None,
                        **context: Any) -> list[tuple[str, bytes]]:
    # the reason is outside text (a WHMCS module's error, an exception's words): masked as
    # a log line is, since the topic is kept for a year
    headers = {
        "stage": stage, "reason": redact(reason)[:2000], "error_class": error_class,
        "error_code": error_code, "source_topic": source_topic,
        "source_partition": "" if source_partition is None else str(source_partition),
        "source_offset": "" if source_offset is None else str(source_offset),
        "at": str(int(time.time() * 1000)),
    }
    for key, value in context.items():
        if value is None:
            continue
        # ids, names, sizes; outside text a caller masks in its structure (sinks.deadletters:
        # a JSON list masked here as text lost its escapes and no longer parsed)
        headers[key] = value.hex() if isinstance(value, bytes) else str(value)
    return [(PREFIX + k, v.encode()) for k, v in headers.items()]


def parse_headers(headers: list[tuple[str, bytes]] | None) -> dict[str, str]:
    """The ``dlq.*`` headers of a record as a plain dict (prefix stripped)."""
    out: dict[str, str] = {}
    for key, value in headers or []:
        if key.startswith(PREFIX):
            out[key[len(PREFIX):]] = value.decode(errors="replace") if value else ""
    return out


#: the marker headers (prefix stripped, as :func:`parse_headers` gives them)
REQUEUE_OF, REQUEUED_TO = "requeue_of", "requeued_to"
#: the marker's list of the dead letter's twins (``P:O,P:O``): the same record dead-lettered
#: again before the copy landed, which the copy covers (``dlq requeue --all`` passes over them)
REQUEUE_COVERS = "requeue_covers"


def requeue_marker_headers(partition: int, offset: int, copy: str,
                           covers: list[str] | None = None) -> list[tuple[str, bytes]]:
    """The headers of the marker that dead letter ``partition:offset`` was requeued, its
    copy at ``copy`` (``TOPIC:PARTITION:OFFSET``); ``covers``: the ``P:O`` of its twins
    written before the copy (the same record's other dead letters)."""
    return [(PREFIX + REQUEUE_OF, f"{partition}:{offset}".encode()),
            (PREFIX + REQUEUED_TO, copy.encode()),
            (PREFIX + "at", str(int(time.time() * 1000)).encode()),
            *([(PREFIX + REQUEUE_COVERS, ",".join(covers).encode())] if covers else [])]
