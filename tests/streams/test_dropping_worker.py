"""The checkpoint's check against the log and the drop rewinder in a real worker, on the real
broker: faust's record drop, made to happen (tests/streams/dropping_worker.py), loses events
with neither and none with either of them."""

from __future__ import annotations

import re
import time
from collections import Counter
from pathlib import Path

import pytest
from confluent_kafka import Consumer

from common.lag import group_lag, group_reader
from tests.streams.support import (
    REQUEST,
    Reader,
    outcomes,
    produce,
    request,
    worker_env,
    worker_process,
)

pytestmark = [pytest.mark.broker, pytest.mark.e2e, pytest.mark.slow]
MODULE = "tests.streams.dropping_worker"


def _run(kafka_settings, salesforce, whmcs, tmp_path: Path, gate: str, rewind: str = "off",
         count: int = 45):
    ids = [o["order_id"] for o in salesforce.seed(accounts=5, orders=count)["orders"]]
    salesforce.approve(ids=ids)
    events = [request(order_id) for order_id in ids]
    produce(kafka_settings.bootstrap_servers, kafka_settings.requests, events)
    env = worker_env(bootstrap=kafka_settings.bootstrap_servers,
                     prefix=kafka_settings.topic_prefix, state_dir=tmp_path,
                     sf_env=salesforce.env(), wh_env=whmcs.env(), CHECKPOINT_LOG_CHECK=gate,
                     DROP_REWIND=rewind,
                     DROP_EVERY="7", DROP_MOD="3", WORKER_MAX_IN_FLIGHT="5",
                     # a dropped record with none after it is not committed past: the
                     # watchdog's re-seek (at half of this) brings it back
                     WORKER_STALL_TIMEOUT_S="20")
    log_path = tmp_path / "worker.log"
    reader = Reader(kafka_settings.bootstrap_servers, kafka_settings.outcomes)
    lag_reader = Consumer({"bootstrap.servers": kafka_settings.bootstrap_servers,
                           "group.id": "gate-test-lag", "enable.auto.commit": False,
                           "isolation.level": "read_committed"})
    group = kafka_settings.topic(env.get("WORKER_APP_ID", "sfprov-worker"))
    offsets = group_reader(kafka_settings.bootstrap_servers, group)
    with worker_process(env, log_path, module=MODULE) as proc:
        # until every event has an outcome, or faust has committed every partition to its end
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            reader.poll_until(lambda r: len(r) >= len(events), timeout=2)
            if len(reader.records) >= len(events):
                break
            try:
                rows = group_lag(offsets, lag_reader, kafka_settings.requests)
            except Exception:  # noqa: BLE001 - the group may not exist yet
                continue
            if rows and all(committed >= end for _, committed, end in rows):
                reader.poll_until(lambda r: False, timeout=3)  # late outcomes
                break
        assert proc.poll() is None, log_path.read_text()[-3000:]
    lag_reader.close()
    offsets.close()
    got = Counter(o["event_uuid"] for o in outcomes(reader.records))
    text = log_path.read_text(errors="replace")
    dropped = {tuple(int(v) for v in m.groups())
               for m in re.finditer(r"DROPPED partition=(\d+) offset=(\d+)", text)}
    return events, got, text, dropped, _positions(kafka_settings, len(events))


def _positions(kafka_settings, count: int) -> dict[tuple[int, int], str]:
    """(partition, offset) → event uuid, as written to the requests topic."""
    reader = Reader(kafka_settings.bootstrap_servers, kafka_settings.requests)
    reader.poll_until(lambda r: len(r) >= count, timeout=30)
    reader.close()
    return {(m.partition(), m.offset()): REQUEST.decode(m.value())["event_uuid"]
            for m in reader.records}


def test_without_log_check_or_rewind_dropped_events_are_committed_past_and_lost(kafka_settings, salesforce,
                                                                  whmcs, tmp_path):
    """The control: shows the drop is faust's bug, and that the other test can fail."""
    events, got, log_text, dropped, at = _run(kafka_settings, salesforce, whmcs, tmp_path,
                                              gate="off")
    assert len(dropped) >= 3, log_text[-3000:]
    last = {p: max(o for q, o in at if q == p) for p, _ in at}
    # every dropped event with a later one in its partition is committed past and lost
    lost = {at[(p, o)] for p, o in dropped if o < last[p]}
    assert lost
    assert {e["event_uuid"] for e in events} - set(got) == lost


def test_the_log_check_alone_brings_dropped_events_back(kafka_settings, salesforce, whmcs,
                                                  tmp_path):
    events, got, log_text, dropped, _ = _run(kafka_settings, salesforce, whmcs, tmp_path,
                                             gate="on", rewind="off")
    assert len(dropped) >= 3, log_text[-3000:]
    assert "checkpoint: partition" in log_text and "never finished" in log_text
    assert set(got) == {e["event_uuid"] for e in events}, log_text[-3000:]
    assert max(got.values()) == 1
    assert whmcs.duplicates() == {}


def test_the_rewind_alone_brings_dropped_events_back(kafka_settings, salesforce, whmcs,
                                                    tmp_path):
    """The seek back over dropped records, without the log check: nothing is committed past them
    because they are fetched again before the next fetch."""
    events, got, log_text, dropped, _ = _run(kafka_settings, salesforce, whmcs, tmp_path,
                                             gate="off", rewind="on")
    assert len(dropped) >= 3, log_text[-3000:]
    # one seek back per partition and fetch covers every record dropped from that fetch
    assert log_text.count("faust dropped fetched records of") >= len({p for p, _ in dropped})
    assert set(got) == {e["event_uuid"] for e in events}, log_text[-3000:]
    assert max(got.values()) == 1
