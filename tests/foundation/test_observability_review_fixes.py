"""Observability defects found in review, each pinned by a test that failed before its fix.

* SfprovCompensations (a page) used ``increase()`` alone: a replacement worker (a new
  instance) that compensated before its first scrape is first seen at 1 and paged nobody.
* The worker's ``fenced: …`` line passes its stage in ``extra``; ``stage`` was not a context
  field, so both log formats dropped it.
* A replay id refused while the connector subscribed with a preset counted two reconnects,
  the second with the undocumented, unprimed cause ``SalesforceError``.
* The GC-timing callback called ``GC_PAUSE.labels()``, which takes the histogram's lock — the
  one a scrape holds while it copies the children: a collection triggered there deadlocked
  the scraping thread (every later /metrics hung, automatic GC stopped for good).
"""

from __future__ import annotations

import gc
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from prometheus_client import REGISTRY

from common import metrics
from common.errors import ReplayIdInvalidError
from common.log import JsonFormatter, TextFormatter
from connectors.offsets import EVENT, Position

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "ops" / "monitoring" / "alerts.yml"


# -- alerts: every event rule counts a series first seen at a value --------------------------

def _rules() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"]
            for rule in group["rules"]]


def test_every_event_rule_counts_a_series_first_seen_at_a_value():
    """A rule that fires at once (no ``for``) on any growth of a counter (``> 0``) is an event
    rule: it must add the whole value of a series not seen at the window's start
    (``X unless last_over_time(X…)``), as the file's header says each one does."""
    checked = []
    for rule in _rules():
        expr = rule["expr"]
        counters = set(re.findall(r"increase\((\w+)", expr))
        if not counters or "for" in rule or not re.search(r">\s*0\s*$", expr.strip()):
            continue
        for counter in counters:
            assert re.search(rf"\b{counter}(?:\{{[^}}]*\}})? unless last_over_time\({counter}\[",
                             expr), (rule["alert"], counter)
        checked.append(rule["alert"])
    assert "SfprovCompensations" in checked


def _promtool() -> str:
    from tests.foundation.test_monitoring import _promtool as find
    return find()


def test_compensations_page_for_a_new_worker_first_seen_at_one(tmp_path: Path):
    """A replacement worker (a new instance label) compensates within its first seconds: its
    counter is first scraped at 1. The page fires, as SfprovFencedWrites does on the same
    shape; counted whole for 55 minutes (the rules' W-5m), then quiet; a primed counter
    pages at its step and is quiet an hour later."""
    promtool = _promtool()
    page = [{"exp_labels": {"severity": "page"}, "exp_annotations": {
        "summary": "A Salesforce Order had two WHMCS orders; the extra one was cancelled",
        "description": "A fence was crossed: look at the worker logs around the time."}}]
    fenced = [{"exp_labels": {"severity": "warn"}, "exp_annotations": {
        "summary": "A worker lost its Orders' partitions mid-work (1 fenced in 15 minutes)",
        "description": "Expected after a pause or network cut; frequent fencing means "
                       "workers stall."}}]
    new_worker = 'instance="worker-b:9102"'
    tests = [
        {"interval": "1m", "input_series": [
            {"series": f'sfprov_worker_compensations_total{{job="sfprov",{new_worker}}}',
             "values": "_x5 1x120"},
            {"series": f'sfprov_worker_fenced_total{{job="sfprov",{new_worker},stage="AddOrder"}}',
             "values": "_x5 1x120"}],
         "alert_rule_test": [
             {"eval_time": "4m", "alertname": "SfprovCompensations", "exp_alerts": []},
             {"eval_time": "10m", "alertname": "SfprovCompensations", "exp_alerts": page},
             {"eval_time": "10m", "alertname": "SfprovFencedWrites", "exp_alerts": fenced},
             {"eval_time": "55m", "alertname": "SfprovCompensations", "exp_alerts": page},
             {"eval_time": "70m", "alertname": "SfprovCompensations", "exp_alerts": []}]},
        {"interval": "1m", "input_series": [
            {"series": 'sfprov_worker_compensations_total{job="sfprov",instance="worker:9102"}',
             "values": "0x10 1x100"}],
         "alert_rule_test": [
             {"eval_time": "5m", "alertname": "SfprovCompensations", "exp_alerts": []},
             {"eval_time": "12m", "alertname": "SfprovCompensations", "exp_alerts": page},
             {"eval_time": "100m", "alertname": "SfprovCompensations", "exp_alerts": []}]},
    ]
    test = tmp_path / "comp.test.yml"
    test.write_text(yaml.safe_dump({"rule_files": [str(RULES)], "evaluation_interval": "1m",
                                    "tests": tests}))
    result = subprocess.run([promtool, "test", "rules", str(test)], capture_output=True,
                            text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


# -- logs: the fenced line's stage -------------------------------------------------------------

def _fenced_record() -> logging.LogRecord:
    return logging.makeLogRecord({
        "name": "streams.handler", "levelno": logging.WARNING, "levelname": "WARNING",
        "msg": "fenced: %s; the Order is left to the partition's new owner",
        "args": ("partition 3 is not assigned to this worker",),
        "order_id": "801xx0000000001", "partition": 3, "offset": 42, "stage": "AddOrder"})


def test_the_fenced_lines_stage_is_rendered_in_json():
    import json
    out = json.loads(JsonFormatter("worker").format(_fenced_record()))
    assert out["stage"] == "AddOrder" and out["partition"] == 3


def test_the_fenced_lines_stage_is_rendered_in_text():
    line = TextFormatter("worker").format(_fenced_record())
    assert "stage=AddOrder" in line and "partition=3" in line


# -- the connector: one reconnect counted for a refused replay id ------------------------------

def _reconnects() -> dict[str, float]:
    counts: dict[str, float] = {}
    for family in REGISTRY.collect():
        if family.name == "sfprov_connector_reconnects":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    counts[sample.labels["cause"]] = sample.value
    return counts


@pytest.mark.parametrize("preset_override", [None, "EARLIEST"])
def test_a_replay_id_refused_under_a_preset_counts_one_reconnect(preset_override):
    """Subscribed with a preset (no stored position, or a gap's policy armed): the refusal is
    transient. It counts one reconnect, with the documented cause ``replay_invalid``."""
    from tests.connectors.test_source_loop import make

    conn = make()
    if preset_override is not None:
        conn._set_position(Position(b"\x00\x10", EVENT, 1_700_000_000_000, "u-a"))
        conn.preset_override = preset_override
    conn._stop.set()  # _recover's back-off wait returns at once
    before = _reconnects()
    assert conn._replay_invalid(ReplayIdInvalidError(
        "replay id too old", error_code="replayid.corrupted")) is None
    after = _reconnects()
    grown = {cause: after[cause] - before.get(cause, 0.0) for cause in after
             if after[cause] != before.get(cause, 0.0)}
    assert grown == {"replay_invalid": 1.0}
    assert conn.health.cause == "replay_invalid"


# -- GC timing: no lock a scrape may hold ------------------------------------------------------

def test_the_gc_callback_takes_no_lock_of_the_histogram_family(monkeypatch):
    """The callback observes into children made by install(); it never calls labels()."""
    monitor = metrics.GcMonitor().install()
    try:
        def refuse(*_a, **_kw):
            raise AssertionError("labels() in the GC callback: it takes the family's lock")
        monkeypatch.setattr(metrics.GC_PAUSE, "labels", refuse)
        before = REGISTRY.get_sample_value("sfprov_gc_pause_seconds_count",
                                           {"generation": "0"}) or 0.0
        monitor._callback("start", {"generation": 0})
        monitor._callback("stop", {"generation": 0, "collected": 0})
        assert REGISTRY.get_sample_value("sfprov_gc_pause_seconds_count",
                                         {"generation": "0"}) == before + 1
    finally:
        monitor.uninstall()
    gc.collect()


DEADLOCK = """\
import gc, threading
from common.metrics import GcMonitor, GC_PAUSE
GcMonitor().install(); gc.collect()
class D(dict):
    def copy(self):
        keep = [{} for _ in range(200)]   # the dict free list now empty
        gc.set_threshold(1)
        return dict.copy(self)            # allocates a new dict object -> young collection
GC_PAUSE._metrics = D(GC_PAUSE._metrics)
done = threading.Event()
threading.Thread(target=lambda: (list(GC_PAUSE.collect()), done.set()), daemon=True).start()
print("scrape finished:", done.wait(10))
"""


def test_a_collection_during_a_scrape_does_not_deadlock_it():
    """A young collection triggered while the scrape holds the histogram's lock (copying its
    children): the callback ran in that thread and blocked on the same lock forever."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    try:
        result = subprocess.run([sys.executable, "-c", DEADLOCK], cwd=ROOT, env=env,
                                capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:  # pragma: no cover - the process hung on exit
        pytest.fail("the scraping process hung", pytrace=False)
    assert result.returncode == 0, result.stderr
    assert "scrape finished: True" in result.stdout, result.stdout + result.stderr
