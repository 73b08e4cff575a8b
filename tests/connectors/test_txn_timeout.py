"""A connector paused past its transaction timeout, on the real broker (issue #14, item 5).

A real process is SIGSTOPped with a transaction open until the broker has aborted that
transaction for its age (seen from outside: the partitions' last stable offset catches up
with their end, while the process cannot have committed), then SIGCONTed. Its late records
must stay invisible to ``read_committed`` readers, its error must be told from a fence by a
newer instance by the transaction's age, and the writer — the helper's, then the whole
connector's — must go on from the committed position with every event exactly once and
without an operator. Nothing here measures how long anything took.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import requests
from confluent_kafka import Consumer, TopicPartition

from common.settings import KafkaSettings
from connectors.offsets import OffsetCodec, load_position
from connectors.writer import TransactionalWriter, transactional_id
from tests.conftest import open_transactions, wait_markers_written
from tests.connectors.conftest import read_requests, wait_until
from tests.connectors.test_integration import assert_exactly_once, sandbox_uuids
from tests.connectors.txn_pause_helper import CHANNEL, batch

pytestmark = pytest.mark.broker

ROOT = Path(__file__).resolve().parents[2]
# CONNECTOR_TRANSACTION_TIMEOUT_S of every process here: short, so the tests are quick, but
# far longer than a transaction of a few records takes on a loaded machine
TIMEOUT_S = 4.0


# -- what the broker holds ------------------------------------------------------------------

def values(bootstrap: str, topic: str, partitions: int, isolation: str) -> list[bytes]:
    """Every record value of ``topic`` a reader with ``isolation.level`` sees, to the end."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "t-txn-timeout",
                         "isolation.level": isolation, "enable.auto.commit": False,
                         "enable.partition.eof": True})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    out: list[bytes] = []
    eof: set[int] = set()
    try:
        while len(eof) < partitions:
            msg = consumer.poll(10)
            assert msg is not None, f"no answer reading {topic}"
            if msg.error():
                eof.add(msg.partition() or 0)
                continue
            out.append(msg.value() or b"")
    finally:
        consumer.close()
    return out


def stopped(pid: int) -> bool:
    """The process is in state T (stopped by a signal)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"


def txn_topics(kafka: KafkaSettings) -> dict[str, int]:
    return {kafka.requests: kafka.partitions, kafka.connector_offsets: 1}


# -- the helper process (tests/connectors/txn_pause_helper.py) ---------------------------------

class Helper:
    def __init__(self, kafka: KafkaSettings, mode: str, timeout_s: float = TIMEOUT_S) -> None:
        env = dict(os.environ, KAFKA_BOOTSTRAP_SERVERS=kafka.bootstrap_servers,
                   KAFKA_TOPIC_PREFIX=kafka.topic_prefix, KAFKA_PARTITIONS=str(kafka.partitions),
                   CONNECTOR_TRANSACTION_TIMEOUT_S=str(timeout_s),
                   PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.connectors.txn_pause_helper",
                                      mode], env=env, cwd=ROOT, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)

    def expect(self, key: str, value: Any = None, timeout: float = 90) -> dict[str, Any]:
        """The next JSON line holding ``key`` (equal to ``value`` if given); librdkafka's own
        log lines in between are kept in ``seen``."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"helper never said {key}={value}: {self.seen}") from None
            self.seen.append(line.rstrip())
            if line.startswith("{"):
                msg = json.loads(line)
                if key in msg and (value is None or msg[key] == value):
                    return msg

    def pause(self) -> None:
        self.proc.send_signal(signal.SIGSTOP)
        wait_until(lambda: stopped(self.proc.pid), 30, "the helper to stop")

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)


@pytest.fixture
def helper(kafka_settings: KafkaSettings):
    started: list[Helper] = []

    def start(mode: str, **kw: Any) -> Helper:
        started.append(Helper(kafka_settings, mode, **kw))
        return started[-1]

    yield start
    for h in started:
        h.close()


def events(raw: list[bytes]) -> list[str]:
    return [v.decode() for v in raw if v.startswith(b"event-")]


def assert_events_once(kafka: KafkaSettings, last: int) -> None:
    # the last commit returned before its markers were written: wait for them, or the
    # read_committed reader's end comes before that commit's events
    wait_markers_written(kafka.bootstrap_servers, txn_topics(kafka))
    committed = events(values(kafka.bootstrap_servers, kafka.requests, kafka.partitions,
                              "read_committed"))
    assert sorted(committed) == sorted(f"event-{i}" for i in range(1, last + 1)), committed
    pos = load_position(kafka.bootstrap_servers, kafka.connector_offsets,
                        OffsetCodec("pause-test", CHANNEL))
    assert pos is not None and pos.replay_id == bytes([last])


# -- the writer, in a helper process ---------------------------------------------------------

@pytest.mark.parametrize("mode", ["in-txn", "mid-batch"])
def test_paused_past_the_timeout_its_records_are_aborted_and_the_writer_recovers(
        kafka_settings: KafkaSettings, helper, mode: str) -> None:
    kafka, boot = kafka_settings, kafka_settings.bootstrap_servers
    h = helper(mode)
    h.expect("state", "paused_in_txn")
    assert open_transactions(boot, txn_topics(kafka)), "the batch should be in an open transaction"
    h.pause()
    # The process is stopped and cannot commit or abort: an end to the open transaction can
    # only be the broker's transaction timeout.
    wait_until(lambda: not open_transactions(boot, txn_topics(kafka)), 120,
               "the broker to abort the stopped process's transaction")
    late = events(values(boot, kafka.requests, kafka.partitions, "read_uncommitted"))
    assert "event-4" in late                                            # written, ...
    assert sorted(events(values(boot, kafka.requests, kafka.partitions, "read_committed"))) \
        == ["event-1", "event-2", "event-3"]                            # ... never visible
    pos = load_position(boot, kafka.connector_offsets, OffsetCodec("pause-test", CHANNEL))
    assert pos is not None and pos.replay_id == bytes([3])

    h.resume()
    err = h.expect("error")
    # librdkafka says what it says when a newer instance fenced it; the age tells them apart
    assert err["error"] == "TransactionTimedOutError" and err["code"] == "_FENCED", err
    assert err["age_s"] >= TIMEOUT_S
    if mode == "in-txn":     # commit_transaction: "Failed to end transaction: ... fenced ..."
        assert err["first"] is None and "Failed to end transaction" in err["message"], err
    else:                    # produce() refused (_FATAL) because a record already failed
        assert err["first"] == "_FATAL" and "ProduceRequest" in err["message"], err
    done = h.expect("state", "done")
    assert h.proc.wait(60) == 0, h.seen
    assert done["position"] == 9
    assert_events_once(kafka, 9)
    # the aborted late copy is still in the log, next to the committed one
    again = Counter(events(values(boot, kafka.requests, kafka.partitions, "read_uncommitted")))
    assert again["event-4"] == 2 and again["event-1"] == 1


def test_paused_between_transactions_past_the_timeout_nothing_happens(
        kafka_settings: KafkaSettings, helper) -> None:
    h = helper("between")
    h.expect("state", "paused_between")
    # batch 1–3's commit returned just before; its markers come after (well within the
    # timeout: a transaction left open would still be open then)
    wait_markers_written(kafka_settings.bootstrap_servers, txn_topics(kafka_settings),
                         timeout=TIMEOUT_S / 2)
    h.pause()
    # Nothing is open, so there is nothing to watch the broker do: just stay stopped for
    # longer than the timeout (a lower bound only; a slow machine makes it longer).
    time.sleep(2 * TIMEOUT_S)
    h.resume()
    assert h.expect("committed") == {"committed": "4-6"}
    h.expect("state", "done")
    assert h.proc.wait(60) == 0, h.seen
    assert_events_once(kafka_settings, 9)


def test_fenced_by_a_newer_instance_inside_a_young_transaction_is_a_plain_fence(
        kafka_settings: KafkaSettings, helper) -> None:
    """The same broker error, but the transaction is younger than its timeout: not ours."""
    kafka = kafka_settings
    h = helper("in-txn", timeout_s=120.0)
    h.expect("state", "paused_in_txn")
    h.pause()
    newer = TransactionalWriter(kafka, transactional_id(kafka, "pause-test", CHANNEL),
                                transaction_timeout_s=120.0)
    newer.start()                    # fences the stopped helper, aborts its open transaction
    newer.write(batch(kafka, OffsetCodec("pause-test", CHANNEL), range(4, 7)))
    h.resume()
    err = h.expect("error")
    assert err["error"] == "ProducerFencedError" and err["code"] == "_FENCED", err
    assert h.proc.wait(60) == 3, h.seen
    newer.write(batch(kafka, OffsetCodec("pause-test", CHANNEL), range(7, 10)))
    assert_events_once(kafka, 9)


# -- the connector process -------------------------------------------------------------------

PAUSING = {"CONNECTOR_TRANSACTION_TIMEOUT_S": str(TIMEOUT_S), "PAUSE_AT_BATCH": "3",
           "CONNECTOR_MAX_BATCH": "5", "SF_PUBSUB_NUM_REQUESTED": "5"}
PAUSER = "tests.connectors.pausing_connector"


def stop_past_the_timeout(proc: Any, kafka: KafkaSettings) -> float:
    """Wait for the connector to have stopped itself inside a transaction; when it did."""
    wait_until(lambda: "PAUSING in transaction" in proc.text(), 60, "the pause point")
    wait_until(lambda: stopped(proc.proc.pid), 30, "the connector to stop")
    return time.monotonic()


def timeouts(proc: Any) -> list[str]:
    """The connector's lines for its transaction timeouts (each with the transaction's age)."""
    return [line for line in proc.text().splitlines() if "transaction timed out" in line]


def test_connector_paused_in_a_transaction_recovers_by_itself_exactly_once(
        sf, connector, kafka_settings: KafkaSettings) -> None:
    kafka, boot = kafka_settings, kafka_settings.bootstrap_servers
    sf.seed(accounts=10, orders=80, broken_every=0)
    sf.approve(30)
    # no keepalive transactions: the only ones are the event batches, so an idle connector
    # has none open
    proc = connector(module=PAUSER, SF_PUBSUB_KEEPALIVE_COMMIT_S="3600", **PAUSING)
    stop_past_the_timeout(proc, kafka)
    sf.approve(30)              # Salesforce goes on publishing while the connector is stopped
    wait_until(lambda: not open_transactions(boot, txn_topics(kafka)), 120,
               "the broker to abort the stopped connector's transaction")
    committed = {r["event_uuid"] for r in read_requests(kafka)}
    late = values(boot, kafka.requests, kafka.partitions, "read_uncommitted")
    assert len(late) > len(committed) and len(committed) < 30   # the third batch: aborted

    proc.proc.send_signal(signal.SIGCONT)
    wait_until(lambda: len(read_requests(kafka)) >= 60, 120, "all 60 events committed")
    assert proc.proc.poll() is None, proc.text()[-3000:]   # no exit: no operator, no restart
    text = proc.text()
    assert "transaction timed out" in text and "producer re-initialised" in text, text[-3000:]
    # Exactly one, here and after the idle pause below: the pause is counted once (no
    # second count, no recovery that times out again), and the idle pause adds none — what
    # that half of the test is for. Another count would take one of the other transactions
    # (milliseconds each) staying open for TIMEOUT_S: a record the broker is that slow to
    # take fails at message.timeout.ms (0.4 s sooner) and the writer aborts it itself, so
    # only a multi-second freeze of the connector or the broker mid-transaction could; each
    # count's line names the age of its transaction.
    assert proc.metric("sfprov_connector_transaction_timeouts_total") == 1, timeouts(proc)

    # Stopped again while idle — between transactions — past the timeout: it just goes on.
    proc.proc.send_signal(signal.SIGSTOP)
    wait_until(lambda: stopped(proc.proc.pid), 30, "the connector to stop")
    sf.approve(20)
    time.sleep(2 * TIMEOUT_S)   # nothing open, nothing to watch: a lower bound on the pause
    proc.proc.send_signal(signal.SIGCONT)
    try:
        wait_until(lambda: len(read_requests(kafka)) >= 80, 120, "all 80 events committed")
    except AssertionError as exc:  # what the connector said, with the failure
        raise AssertionError(f"{exc}; connector log:\n{proc.text()[-6000:]}") from None
    assert proc.metric("sfprov_connector_transaction_timeouts_total") == 1, timeouts(proc)
    assert requests.get(f"http://127.0.0.1:{proc.port}/healthz", timeout=5).status_code == 200
    # keepalives came (every second here) and, with SF_PUBSUB_KEEPALIVE_COMMIT_S=3600, none
    # was committed: an idle connector has no transaction open (the first keepalive commit
    # once came at once, on a machine up longer than the interval, and could be the one
    # open at the idle pause)
    # (Salesforce sends one only while events are requested: the idle connector's are)
    wait_until(lambda: proc.metric("sfprov_connector_keepalives_total") > 0, 30,
               "a keepalive of the idle stream")
    assert proc.metric('sfprov_connector_transactions_total{kind="keepalive"') == 0
    assert proc.terminate() == 0, proc.text()[-3000:]
    assert_exactly_once(read_requests(kafka), sandbox_uuids(sf), 80)


def test_paused_connector_and_a_newer_instance_do_not_fight(
        sf, connector, kafka_settings: KafkaSettings) -> None:
    """A is stopped inside a transaction; B starts meanwhile (fencing A) and writes; A wakes
    up past its timeout, takes the stream back; B, fenced in a young transaction, exits 3 and
    is not restarted — one writer left, every event exactly once."""
    kafka = kafka_settings
    sf.seed(accounts=10, orders=60, broken_every=0)
    sf.approve(30)
    sf.set_faults(grpc_latency_ms=50)   # B is often still writing when A wakes up ...
    keepalive = {"SF_PUBSUB_KEEPALIVE_COMMIT_S": "1"}   # ... idle, it learns of the fence here
    a = connector(module=PAUSER, **PAUSING, **keepalive)
    paused_at = stop_past_the_timeout(a, kafka)
    sf.approve(30)
    b = connector(**{k: v for k, v in PAUSING.items() if k != "PAUSE_AT_BATCH"}, **keepalive)
    wait_until(lambda: '"event written"' in b.text(), 60, "the newer instance writing")
    time.sleep(max(0.0, paused_at + TIMEOUT_S - time.monotonic()))  # A stopped past its timeout
    a.proc.send_signal(signal.SIGCONT)
    assert b.wait(90) == 3, b.text()[-3000:]
    assert "FENCED" in b.text()
    sf.set_faults(grpc_latency_ms=0)
    wait_until(lambda: len(read_requests(kafka)) >= 60, 120, "all 60 events committed")
    assert a.proc.poll() is None, a.text()[-3000:]
    # its init_transactions fenced B (B's exit 3 above); the line comes once A has read its
    # position back, which B's 60 events committed first may precede (CI, on 688df92)
    wait_until(lambda: "producer re-initialised" in a.text(), 60, "A's producer re-initialised")
    assert a.terminate() == 0, a.text()[-3000:]
    assert_exactly_once(read_requests(kafka), sandbox_uuids(sf), 60)


def test_a_producer_failed_without_a_fence_is_replaced_in_process_exactly_once(
        sf, connector, kafka_settings: KafkaSettings) -> None:
    """A chaos run (two of three broker nodes paused) saw the connector's records time out
    inside a transaction and the abort answered with librdkafka's fatal ``INVALID_TXN_STATE``;
    the connector exited 1. Here that transaction's producer fails so (``FAIL_AT_BATCH``):
    the connector must start a new producer in process — whose ``init_transactions`` aborts
    the failed one's open transaction — read its position again and go on, every event
    exactly once, no exit."""
    kafka, boot = kafka_settings, kafka_settings.bootstrap_servers
    sf.seed(accounts=10, orders=60, broken_every=0)
    sf.approve(30)
    proc = connector(module=PAUSER, FAIL_AT_BATCH="3", CONNECTOR_MAX_BATCH="5",
                     SF_PUBSUB_NUM_REQUESTED="5", SF_PUBSUB_KEEPALIVE_COMMIT_S="3600")
    wait_until(lambda: "FAILING in transaction" in proc.text(), 60, "the failure point")
    sf.approve(30)
    try:
        wait_until(lambda: proc.proc.poll() is not None or len(read_requests(kafka)) >= 60,
                   120, "all 60 events committed")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; connector log:\n{proc.text()[-6000:]}") from None
    assert proc.proc.poll() is None, proc.text()[-3000:]   # no exit, no restart
    text = proc.text()
    assert "producer re-initialised" in text, text[-3000:]
    assert proc.metric('sfprov_connector_reconnects_total{cause="producer_failed"}') == 1
    # the failed one was aborted (left open, it would stay so for the default 60 s timeout);
    # the last batch's markers may still be on their way
    wait_markers_written(boot, txn_topics(kafka), timeout=10)
    # its records are in the log, never visible to read_committed readers
    assert len(values(boot, kafka.requests, kafka.partitions, "read_uncommitted")) > 60
    assert proc.terminate() == 0, proc.text()[-3000:]
    assert_exactly_once(read_requests(kafka), sandbox_uuids(sf), 60)
