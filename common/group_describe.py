"""A consumer group's description, asked in a child process (decision 0008).

librdkafka 2.16 aborts the whole process when a coordinator admin request fails
(librdkafka#4605, ``rd_kafka_enq_once_del_source_return: Assertion eonce->refcnt > 0``;
docs/decisions/0008), and describe_consumer_groups is one: a worker starting while a broker
fails over could end with -6 and no line. A child process that aborts is an attempt that
failed, not the worker's end. The child (:func:`_describe_child`) gets the group and the
request timeout as arguments and the client config as JSON on stdin (never in its
arguments or environment: it holds the password), and ends with one of the ``CHILD_*``
codes, printing one JSON line: the description, or ``{"code", "reason"}`` of the error.

:func:`describe_group_isolated` asks for the description (retried within a running-time
deadline, :class:`~common.kafka.RunningDeadline`); :func:`check_group_access` is the
worker's start-up check that its principal may join its group.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from common.connection import KafkaConnection, is_refusal, refusal_message
from common.errors import KafkaAccessError
from common.kafka import PAUSE_SLACK_S, RunningDeadline, _Reports, retry_until
from common.settings import KafkaSettings

# The child's exit codes (it prints one JSON line: the description, or the error's
# ``{"code", "reason"}``), and the command that starts it.
CHILD_ANSWERED, CHILD_REFUSED, CHILD_FAILED = 0, 3, 4
DESCRIBE_CHILD: tuple[str, ...] = (
    sys.executable, "-c", "from common.group_describe import _describe_child; _describe_child()")
CHILD_START_S = 0.5  # a child's start (interpreter, confluent_kafka): taken off its timeout
# a child still running this long after its attempt's timeout is stuck: killed — within
# PAUSE_SLACK_S, or RunningDeadline would count the wait as this process stopped and move
# the deadline by it (a hung child stretched a 30 s check to 57 s)
CHILD_KILL_AFTER_S = 0.9 * PAUSE_SLACK_S


@dataclass(frozen=True)
class GroupAssignment:
    topic_partitions: list[Any]  # confluent_kafka.TopicPartition (topic, partition)


@dataclass(frozen=True)
class GroupMember:
    member_id: str
    client_id: str
    host: str
    assignment: GroupAssignment | None


@dataclass(frozen=True)
class GroupDescription:
    """What :func:`describe_group_isolated` returns: the fields of confluent-kafka's
    ``ConsumerGroupDescription`` this project reads, by the same names."""

    group_id: str
    state: Any  # confluent_kafka.ConsumerGroupState
    members: list[GroupMember]
    authorized_operations: list[Any] | None  # confluent_kafka.admin.AclOperation; None: not told


def _description_json(d: Any) -> dict[str, Any]:
    ops = d.authorized_operations
    return {"group_id": d.group_id, "state": d.state.name if d.state is not None else None,
            "members": [{"member_id": m.member_id, "client_id": m.client_id, "host": m.host,
                         "assignment": ([[tp.topic, tp.partition]
                                         for tp in m.assignment.topic_partitions]
                                        if m.assignment is not None else None)}
                        for m in d.members or []],
            "authorized_operations": [op.name for op in ops] if ops is not None else None}


def _description(answer: dict[str, Any]) -> GroupDescription:
    from confluent_kafka import ConsumerGroupState, TopicPartition
    from confluent_kafka.admin import AclOperation

    ops = answer.get("authorized_operations")
    return GroupDescription(
        group_id=answer["group_id"],
        state=ConsumerGroupState[answer["state"]] if answer.get("state") else None,
        members=[GroupMember(m["member_id"], m["client_id"], m["host"],
                             GroupAssignment([TopicPartition(t, p) for t, p in m["assignment"]])
                             if m.get("assignment") is not None else None)
                 for m in answer.get("members", [])],
        authorized_operations=[AclOperation[op] for op in ops] if ops is not None else None)


def _describe_child() -> None:
    """The child of :func:`describe_group_isolated`: ``<group> <timeout_s>`` as arguments,
    the librdkafka config on stdin. librdkafka's own reports are kept, not printed; it
    exits with ``os._exit`` (the client is not destroyed: nothing to wait for)."""
    group, timeout_s = sys.argv[1], float(sys.argv[2])
    reports = _Reports()
    conf: dict[str, Any] = {**json.load(sys.stdin), "error_cb": reports.error, "logger": reports}
    admin = AdminClient(conf)
    try:
        futures = admin.describe_consumer_groups(
            [group], include_authorized_operations=True, request_timeout=timeout_s)
        answer, code = _description_json(futures[group].result()), CHILD_ANSWERED
    except KafkaException as exc:
        err = exc.args[0] if exc.args else None
        if err is not None and hasattr(err, "code"):
            answer = {"code": err.code(), "reason": err.str()}
            code = CHILD_REFUSED if is_refusal(err) else CHILD_FAILED
        else:
            answer, code = {"code": -196, "reason": str(exc)}, CHILD_FAILED  # _FAIL
    sys.stdout.write(json.dumps(answer) + "\n")
    sys.stdout.flush()
    os._exit(code)


def _child_env() -> dict[str, str]:
    """The child's environment: this process's, with the project on its path (the
    worker may run from anywhere)."""
    root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def _describe_once(conf: dict[str, Any], group: str, wait: float,
                   command: Sequence[str]) -> GroupDescription:
    """One child, one description; anything but an answer raises KafkaException (a child
    that died or hung as an error of its own: for :func:`retry_until`, not a verdict)."""
    from confluent_kafka import KafkaError as CKafkaError

    request_s = max(0.5, wait - 2 * CHILD_START_S)  # its start, and its answer's way back
    try:
        done = subprocess.run([*command, group, f"{request_s:.3f}"], input=json.dumps(conf),
                              capture_output=True, text=True, env=_child_env(),
                              timeout=max(wait, request_s + CHILD_START_S) + CHILD_KILL_AFTER_S)
    except subprocess.TimeoutExpired:
        raise KafkaException(CKafkaError(
            CKafkaError._TIMED_OUT, f"the describing process did not end within "
                                    f"{wait + CHILD_KILL_AFTER_S:.1f} s (killed)")) from None
    answer: Any = None
    with contextlib.suppress(ValueError):
        answer = json.loads(done.stdout.strip().splitlines()[-1]) if done.stdout.strip() else None
    if done.returncode == CHILD_ANSWERED and isinstance(answer, dict) and "group_id" in answer:
        return _description(answer)
    if done.returncode in (CHILD_REFUSED, CHILD_FAILED) and isinstance(answer, dict) \
            and "code" in answer:
        raise KafkaException(CKafkaError(int(answer["code"]), str(answer["reason"])))
    rc = done.returncode
    how = (f"was killed by {signal.Signals(-rc).name}" if rc < 0 and -rc in signal.valid_signals()
           else f"exited {rc} without an answer")
    said = done.stderr.strip().splitlines()[-1][:300] if done.stderr.strip() else ""
    raise KafkaException(CKafkaError(CKafkaError._FAIL, f"the describing process {how}"
                                                        + (f" ({said})" if said else "")))


def describe_group_isolated(settings: KafkaSettings | KafkaConnection, group: str,
                            timeout_s: float = 30.0, *,
                            command: Sequence[str] | None = None) -> GroupDescription:
    """``group``'s description with what this principal may do with it (KIP-430), asked by
    a short-lived child process (about 0.3 s each) so that librdkafka#4605's abort ends the
    child, not this process. Retried with a backoff (:func:`retry_until`) for ``timeout_s``
    of running time: a child that aborted, hung or failed is logged as ``describing the
    group <group>: <error>; trying again``. A refusal raises :class:`KafkaAccessError`
    (:func:`~common.connection.refusal_message`), the last failure a retryable KafkaError
    ``cannot describe the group <group>: <error>``. ``command``: the child (tests)."""
    conn = settings if isinstance(settings, KafkaConnection) \
        else KafkaConnection.from_settings(settings)
    conf, child = conn.librdkafka(), tuple(command or DESCRIBE_CHILD)
    return retry_until(
        RunningDeadline(timeout_s), lambda wait: _describe_once(conf, group, wait, child),
        doing=f"describing the group {group}", failure=f"cannot describe the group {group}",
        refused=lambda err: refusal_message(conn, f"describe the group {group}", err))


def check_group_access(settings: KafkaSettings, group: str, *, timeout: float = 30.0) -> None:
    """Raise :class:`KafkaAccessError` unless this principal may join ``group`` (READ).

    A consumer refused its group never hears of it from aiokafka until it has partitions
    (the coordinator keeps the error for a ``getmany`` that faust does not call before an
    assignment): the worker waited for ever, without a line. The broker's description of
    the group lists what this principal may do with it (KIP-430); a broker without an
    authorizer allows everything and lists every operation the group supports (READ
    among them), so nothing is refused. A description without the list (empty or None:
    a broker too old to answer it) says nothing either way and passes. The description is
    asked in a child process (:func:`describe_group_isolated`, decision 0008)."""
    from confluent_kafka.admin import AclOperation

    conn = KafkaConnection.from_settings(settings)
    allowed = describe_group_isolated(conn, group, timeout).authorized_operations
    if allowed and not {AclOperation.READ, AclOperation.ALL} & set(allowed):
        raise KafkaAccessError(refusal_message(
            conn, f"join the group {group}",
            f"Group authorization failed (its ACLs allow only "
            f"{', '.join(sorted(op.name for op in allowed))})"))
