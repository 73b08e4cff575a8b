"""The shipped alert rules and Grafana dashboard (ops/monitoring) are well formed and name only
metrics the code registers. tests/e2e/test_operations.py checks the same names against what
the running processes really expose on /metrics.

Prometheus's own checker validates the rules too when ``promtool`` is installed (Debian's
``prometheus`` package); without it that one test is skipped — the structure and the metric
names are always checked here.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from prometheus_client import REGISTRY, generate_latest

from ops.kafka_local import DEFAULT_STATE

ROOT = Path(__file__).resolve().parents[2]
#: The Makefile's $(STATE): SFPROV_STATE_DIR as the Python side reads it (the environment over
#: .env, else .state); make runs in ROOT, so a relative one is relative to ROOT.
STATE = DEFAULT_STATE if DEFAULT_STATE.is_absolute() else ROOT / DEFAULT_STATE
MONITORING = ROOT / "ops" / "monitoring"
RULES = MONITORING / "alerts.yml"
DASHBOARD = MONITORING / "grafana" / "dashboards" / "sfprov.json"
#: names Prometheus itself makes (not exposed by a process)
SYNTHETIC = {"up"}
METRIC = re.compile(r"\b((?:sfprov|process|python)_[a-z0-9_]+|up)\b(?!\s*\()")
#: the modules that define every process's metrics
METRIC_MODULES = ("common.metrics", "common.lagmetrics", "connectors.metrics",
                  "connectors.reconciler", "streams.metrics", "streams.observability",
                  "sinks.metrics")
ISSUE_ALERTS = {"stream stalled": "SfprovWorkerStalled", "lag growing": "SfprovConsumerLagGrowing",
                "oldest event age": "SfprovOldestEventTooOld",
                "dead-letter rate": "SfprovDeadLetters",
                "WHMCS access refused": "SfprovWhmcsAccessRefused",
                "fenced writes": "SfprovFencedWrites", "compensations": "SfprovCompensations",
                "replay gap recorded": "SfprovReplayGapRecorded",
                "Salesforce limit pause": "SfprovSalesforceLimitPause",
                "process restarts": "SfprovProcessRestarting"}


def rules() -> list[dict]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]


def referenced_metrics() -> set[str]:
    """Every metric name the rules and the dashboard use (label values and functions aside)."""
    names: set[str] = set()
    for expr in [r["expr"] for r in rules()] + dashboard_exprs():
        without_strings = re.sub(r'"[^"]*"', '""', expr)
        names |= set(METRIC.findall(without_strings))
    return names - SYNTHETIC


def exposed_names(text: str) -> set[str]:
    """Names a /metrics page exposes, with each family's sample suffixes."""
    names: set[str] = set()
    for line in text.splitlines():
        m = re.match(r"# (?:HELP|TYPE) (\S+)", line) or re.match(r"([a-zA-Z_:][\w:]*)[{ ]", line)
        if m:
            base = m.group(1)
            names |= {base, f"{base}_bucket", f"{base}_sum", f"{base}_count", f"{base}_total",
                      f"{base}_created"}
    return names


def test_rules_are_well_formed_and_cover_the_issue():
    found = rules()
    names = [r["alert"] for r in found]
    assert len(names) == len(set(names))
    for rule in found:
        assert rule["expr"].strip() and rule["labels"]["severity"] in ("page", "warn"), rule
        assert rule["annotations"]["summary"], rule
    for what, alert in ISSUE_ALERTS.items():
        assert alert in names, what


def _minutes(duration: str) -> int:
    return int(duration[:-1]) * {"m": 1, "h": 60}[duration[-1]]


def test_event_rules_look_for_a_series_inside_their_increase_window():
    """``increase(X[W]) and last_over_time(X[5m] offset O)``: a sample the "seen before" look
    finds must be in increase()'s window too (O + 5m <= W). With O = W a series back at 1
    after a restart, its predecessor last seen 15–20 minutes earlier, counted as old while
    increase() held only the new samples: the event was never counted."""
    checked = 0
    for rule in rules():
        windows = {_minutes(w) for w in re.findall(r"increase\(\w+(?:\{[^}]*\})?\[(\d+[mh])\]",
                                                    rule["expr"])}
        looks = re.findall(r"last_over_time\(\w+\[(\d+[mh])\] offset (\d+[mh])\)", rule["expr"])
        for span, offset in looks:
            assert len(windows) == 1, rule["alert"]
            (window,) = windows
            assert _minutes(offset) + _minutes(span) <= window, (rule["alert"], offset, window)
            checked += 1
    assert checked >= 20  # the seven event rules


def test_stall_rules_do_not_select_the_lag_by_topic_name():
    """KAFKA_TOPIC_REQUESTS / KAFKA_TOPIC_OUTCOMES rename the topics: the stall rules pick the
    lag by the process publishing it, never by a topic's name."""
    for rule in rules():
        if rule["alert"] in ("SfprovWorkerStalled", "SfprovSinkStalled"):
            assert "topic=" not in rule["expr"].replace(" ", ""), rule["alert"]
            assert "and on(job, instance)" in rule["expr"], rule["alert"]


def test_dashboard_is_well_formed():
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] == "sfprov" and dash["panels"]
    for panel in dash["panels"]:
        assert panel["title"] and panel["targets"], panel
        assert panel["datasource"]["uid"] == "sfprov-prometheus"
    provisioned = yaml.safe_load((MONITORING / "grafana" / "provisioning" / "datasources"
                                  / "prometheus.yml").read_text())
    assert provisioned["datasources"][0]["uid"] == "sfprov-prometheus"


def test_rules_and_dashboard_name_only_registered_metrics():
    for module in METRIC_MODULES:
        importlib.import_module(module)
    registered = exposed_names(generate_latest(REGISTRY).decode())
    missing = referenced_metrics() - registered
    assert not missing, f"named in ops/monitoring but registered by no module: {missing}"
    assert "sfprov_consumer_lag_records" in referenced_metrics()


def test_compose_monitoring_profile_mounts_the_shipped_files():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    for name in ("prometheus", "grafana"):
        service = compose["services"][name]
        assert service["profiles"] == ["monitoring"]
        for volume in service["volumes"]:
            assert (ROOT / volume.split(":")[0]).exists(), volume
    scrape = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    assert scrape["scrape_configs"][0]["job_name"] == "sfprov"  # the rules select job="sfprov"


def _promtool() -> str:
    """``make promtool``'s copy ($(STATE)/tools/bin/promtool), else one on PATH. Missing:
    skipped on a developer's machine, a failure in CI (``make test`` fetches it there)."""
    fetched = STATE / "tools" / "bin" / "promtool"
    found = str(fetched) if os.access(fetched, os.X_OK) else shutil.which("promtool")
    if found is None:
        message = "promtool not found (make promtool, or apt-get install prometheus)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return found


def test_promtool_is_looked_for_where_make_fetches_it(tmp_path):
    """``SFPROV_STATE_DIR`` in .env moves `make promtool`'s copy; the test looked only in
    ROOT/.state and, without promtool on PATH, failed in CI although make had fetched it."""
    fake = tmp_path / "state" / "tools" / "bin" / "promtool"
    fake.parent.mkdir(parents=True)
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    env_file = tmp_path / ".env"
    env_file.write_text(f"SFPROV_STATE_DIR={tmp_path / 'state'}\n")
    env = {k: v for k, v in os.environ.items() if k not in ("SFPROV_STATE_DIR", "CI")}
    env.update(SFPROV_ENV_FILE=str(env_file), PYTHONPATH=str(ROOT), PATH=str(tmp_path))
    result = subprocess.run(
        [sys.executable, "-c", "from tests.foundation.test_monitoring import _promtool; "
         "print(_promtool())"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(fake)]


def test_promtool_accepts_the_rules_and_their_unit_tests():
    promtool = _promtool()
    result = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules())} rules found" in result.stdout
    tested = subprocess.run([promtool, "test", "rules", str(MONITORING / "alerts.test.yml")],
                            capture_output=True, text=True, timeout=60, cwd=MONITORING)
    assert tested.returncode == 0, tested.stdout + tested.stderr
