"""Every series an alert rule selects on is exported from each process's start.

A labelled counter is exported only from its first ``labels(...).inc()``: Prometheus then
first sees it at 1 and ``increase()`` finds no event (one replay gap per start never paged).
Each process creates the series whose label values it knows at zero when it starts
(``prime()`` of its metrics modules, called by its ``__main__``). Here, in a fresh interpreter
per process (other tests' increments would hide a missing one), the rules' selectors
(ops/monitoring/alerts.yml) are matched against ``generate_latest()`` after that call.
Counters with open-ended labels (a dead letter's reason, a fence's stage) cannot be primed:
their rules must count a series that appears (``X unless X offset W``) instead.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "ops" / "monitoring" / "alerts.yml"
#: process → (its metric modules, the priming call its __main__ makes, with these arguments)
PROCESSES: dict[str, tuple[tuple[str, ...], str, tuple[object, ...]]] = {
    "connector": (("connectors.metrics", "connectors.reconciler"), "connectors.metrics",
                  ("EARLIEST",)),
    "worker": (("streams.metrics", "streams.observability", "common.lagmetrics"),
               "streams.metrics", (("idem", "intents"),)),
    "sink": (("sinks.metrics", "common.lagmetrics"), "sinks.metrics", ()),
}
PREFIX = {"sfprov_connector_": "connector", "sfprov_worker_": "worker", "sfprov_sink_": "sink"}
#: made by Prometheus (up), or a gauge the process sets while it runs (the lag reader's,
#: its read time from the publisher's start)
NOT_AT_START = {"up", "sfprov_consumer_lag_records", "sfprov_consumer_lag_read_timestamp_seconds"}
#: labels Prometheus adds to every series it scrapes
TARGET_LABELS = {"job", "instance"}
#: label values no process knows in advance: exported from the first event only
OPEN_ENDED = {"sfprov_connector_dead_letters_total", "sfprov_worker_dead_letters_total",
              "sfprov_sink_dead_letters_total", "sfprov_worker_fenced_total"}
SELECTOR = re.compile(r"\b(?P<name>(?:sfprov|process)_[a-z0-9_]+|up)\b(?!\s*\()"
                      r"(?:\{(?P<matchers>[^}]*)\})?")
MATCHER = re.compile(r'(?P<label>\w+)\s*(?P<op>=~|!~|!=|=)\s*"(?P<value>[^"]*)"')
SCRIPT = """
import importlib, sys
from prometheus_client import generate_latest
modules, primer, args = eval(sys.argv[1])
for name in modules:
    importlib.import_module(name)
prime = getattr(importlib.import_module(primer), "prime", None)
if prime is not None:  # missing: the series it should make are reported missing
    prime(*args)
sys.stdout.write(generate_latest().decode())
"""


def rule_selectors() -> list[tuple[str, str, list[tuple[str, str, str]]]]:
    """(alert, metric name, [(label, op, value)]) of every selector in the rules' exprs."""
    found = []
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            for m in SELECTOR.finditer(rule["expr"]):
                matchers = [(x["label"], x["op"], x["value"])
                            for x in MATCHER.finditer(m["matchers"] or "")
                            if x["label"] not in TARGET_LABELS]
                found.append((rule["alert"], m["name"], matchers))
    return found


def exported_at_start(process: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    modules, primer, args = PROCESSES[process]
    result = subprocess.run([sys.executable, "-c", SCRIPT, repr((modules, primer, args))],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(result.stdout):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def _wanted(matchers: list[tuple[str, str, str]]) -> list[list[tuple[str, str, str]]]:
    """The label sets that must each be exported: one per literal of an alternation
    (``cause=~"auth|refused"`` wants both), one for any other matcher list."""
    for i, (label, op, value) in enumerate(matchers):
        if op == "=~" and re.fullmatch(r"[\w|]+", value):
            return [matchers[:i] + [(label, "=", alt)] + matchers[i + 1:]
                    for alt in value.split("|")]
    return [matchers]


def _matches(labels: dict[str, str], matchers: list[tuple[str, str, str]]) -> bool:
    for label, op, value in matchers:
        have = labels.get(label, "")
        ok = {"=": have == value, "!=": have != value,
              "=~": re.fullmatch(value, have) is not None,
              "!~": re.fullmatch(value, have) is None}[op]
        if not ok:
            return False
    return True


@pytest.mark.parametrize("process", sorted(PROCESSES))
def test_every_series_a_rule_selects_is_exported_at_zero_from_the_start(process):
    samples = exported_at_start(process)
    missing, not_zero = [], []
    for alert, name, matchers in rule_selectors():
        owner = next((p for prefix, p in PREFIX.items() if name.startswith(prefix)), None)
        if name in NOT_AT_START or name in OPEN_ENDED or owner not in (process, None):
            continue
        for wanted in _wanted(matchers):
            found = [(labels, value) for labels, value in samples.get(name, [])
                     if _matches(labels, wanted)]
            shown = name + "{" + ",".join(f'{a}{op}"{v}"' for a, op, v in wanted) + "}"
            if not found:
                missing.append(f"{alert}: {shown}")
            elif name.endswith("_total") and any(v != 0 for _, v in found):
                not_zero.append(f"{alert}: {shown}")
    assert not missing, f"not exported when the {process} starts: {sorted(set(missing))}"
    assert not not_zero, f"counters not at zero when the {process} starts: {not_zero}"


def test_rules_on_open_ended_counters_count_a_series_that_appears():
    """A counter no process can prime is first seen at 1: each rule reading it must also
    count series absent a window ago (``X unless last_over_time(X[5m] offset W)``: over a
    range, so a staleness marker left by one failed scrape does not make it look new)."""
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            for name in OPEN_ENDED:
                if re.search(rf"\b{name}\b", rule["expr"]):
                    assert re.search(rf"\b{name}\s+unless\s+last_over_time\({name}\[5m\]\s+"
                                     r"offset\b", rule["expr"]), \
                        (rule["alert"], name)


@pytest.mark.parametrize("process", sorted(PROCESSES))
def test_each_process_primes_its_series_before_it_serves_metrics(process):
    """``main()`` calls the metrics module's ``prime()`` before its HealthServer starts."""
    package = PROCESSES[process][1].split(".")[0]
    tree = ast.parse((ROOT / package / "__main__.py").read_text())
    main = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main")
    calls = [n for n in ast.walk(main) if isinstance(n, ast.Call)]

    def line_of(name: str) -> int | None:
        lines = [c.lineno for c in calls if isinstance(c.func, ast.Attribute | ast.Name)
                 and (c.func.attr if isinstance(c.func, ast.Attribute) else c.func.id) == name]
        return min(lines) if lines else None

    primed, served = line_of("prime"), line_of("HealthServer")
    assert primed is not None, f"{package}/__main__.py: main() never calls prime()"
    assert served is not None and primed < served, f"{package}: prime() after HealthServer"


DASHBOARD = ROOT / "ops" / "monitoring" / "grafana" / "dashboards" / "sfprov.json"
#: counters a dashboard panel reads whose label values are open-ended (the status and code of
#: a decision, a WHMCS call's result, an exception's class): their first event is counted from
#: their second scrape on, as the README says
DASHBOARD_OPEN_ENDED = OPEN_ENDED - {"sfprov_connector_dead_letters_total"} | {
    "sfprov_worker_decisions_total", "sfprov_worker_whmcs_calls_total",
    "sfprov_worker_event_errors_total"}


def dashboard_counters() -> set[str]:
    """The counters (``…_total``) the dashboard's panels read."""
    import json

    def panels(items: list[dict]) -> Iterator[dict]:
        for item in items:
            yield item
            yield from panels(item.get("panels", []))

    names = set()
    for panel in panels(json.loads(DASHBOARD.read_text())["panels"]):
        for target in panel.get("targets", []):
            names.update(m["name"] for m in SELECTOR.finditer(target.get("expr", ""))
                         if m["name"].endswith("_total"))
    return names


@pytest.mark.parametrize("process", sorted(PROCESSES))
def test_every_counter_a_dashboard_panel_reads_is_exported_from_the_start(process):
    """A panel's ``rate()``/``increase()`` of a series born at 1 shows 0 for its first
    event: the first dead letter, held commit, late changelog record or superseded write of
    a process's life — the common case for rare events (monitoring review)."""
    samples = exported_at_start(process)
    missing = sorted(name for name in dashboard_counters() - DASHBOARD_OPEN_ENDED
                     if PREFIX.get(name[:name.index("_", 7) + 1]) == process
                     and name not in samples)
    assert not missing, f"not exported when the {process} starts: {missing}"


def test_the_connectors_dead_letter_codes_are_the_ones_it_writes():
    from connectors.decode import DEAD_LETTER_CODES

    source = (ROOT / "connectors" / "decode.py").read_text()
    written = set(re.findall(r'self\.dead_letter\(\s*event,\s*"(\w+)"', source))
    assert written == set(DEAD_LETTER_CODES)
