"""The bad-input corpus (issue 9): every kind of bad input ends as an outcome or a dead letter
with a reason, and nothing else is disturbed.

One pipeline run for the whole module (real broker, both sandboxes, the connector, worker
and sink as processes). Phase A injects every stage's bad input at once — hand-made
Pub/Sub events, bad Salesforce data, WHMCS faults on single Orders, records written
straight to the requests and outcomes topics — together with good control Orders; phase B
then breaks Salesforce for everyone, one fault at a time, each with its own controls. Each
case of :data:`tests.corpus.cases.CASES` is then one test; the tests after them check that
the controls ended ``Provisioned`` exactly once, that no record ended anywhere unexplained,
and that every process is still the one that started.

Run: ``.venv/bin/python -m pytest tests/corpus -q``.
"""

from __future__ import annotations

import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.corpus.cases import CASES, Case, Ending, outcome, request
from tests.corpus.harness import Corpus, Found, Subject

pytestmark = [pytest.mark.broker, pytest.mark.e2e]

PHASE_A_TIMEOUT_S = 60


@dataclass
class Run:
    corpus: Corpus
    subjects: dict[str, list[Subject]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)  # injection failures by case id
    controls: list[Subject] = field(default_factory=list)
    found: dict[Subject, Found] = field(default_factory=dict)
    outcomes: list[dict[str, Any]] = field(default_factory=list)
    letters: list[dict[str, str]] = field(default_factory=list)
    durations: dict[str, float] = field(default_factory=dict)

    def refresh(self) -> None:
        c = self.corpus
        c.collect()
        self.outcomes, self.letters = c.outcomes(), c.dead_letters()
        everything = [s for subjects in self.subjects.values() for s in subjects]
        everything += self.controls + c.sink_controls
        self.found = c.endings(everything, self.outcomes, self.letters)


def reached(found: Found, expect: Ending) -> bool:
    """The ending is there (it may still be wrong: the case's test says how)."""
    if len(found.outcomes) < len(expect.outcomes):
        return False
    if expect.dead_letter and not found.dead_letters:
        return False
    status = (found.salesforce or {}).get("Activation_Status__c")
    return not expect.salesforce or status == expect.salesforce


def inject(run: Run, case: Case) -> None:
    try:
        run.subjects[case.id] = case.inject(run.corpus)
    except Exception:  # noqa: BLE001 - reported by the case's own test
        run.errors[case.id] = traceback.format_exc()


@pytest.fixture(scope="module")
def run(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Any:
    started = time.monotonic()
    with Corpus(tmp_path_factory.mktemp("corpus"), kafka_bootstrap) as corpus:
        r = Run(corpus)
        r.durations["start"] = time.monotonic() - started
        # Phase A: good controls first and last, every stage's bad input in between.
        c = corpus
        r.controls += c.approve(*(c.pending_order() for _ in range(4)))
        lost = c.activating_without_event(c.pending_order())
        r.controls.append(c.produce_request(request(lost)))  # a good record, written directly
        for case in CASES:
            if case.phase == "A":
                inject(r, case)
        r.controls += c.approve(*(c.pending_order() for _ in range(4)))
        # a good outcome written directly to the outcomes topic
        c.sink_controls.append(c.produce_outcome(outcome(c.pending_order())))
        expected = {case.id: case.expect for case in CASES}
        phase_a = time.monotonic()

        def phase_a_done() -> bool:
            r.refresh()
            pending = [s for cid, subjects in r.subjects.items() if cid in expected
                       for s in subjects if not reached(r.found[s], expected[cid])]
            return not pending and all(reached(r.found[s], CONTROL) for s in r.controls) \
                and all(reached(r.found[s], SINK_CONTROL) for s in c.sink_controls)

        deadline = time.monotonic() + PHASE_A_TIMEOUT_S
        while not phase_a_done() and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(1.0)  # anything arriving late (a second outcome?) is caught below
        r.durations["phase A"] = time.monotonic() - phase_a
        # Phase B: Salesforce fails for everyone, one fault at a time.
        for case in sorted((k for k in CASES if k.phase != "A"), key=lambda k: k.phase):
            began = time.monotonic()
            inject(r, case)
            r.durations[case.phase] = time.monotonic() - began
        r.refresh()
        r.durations["total"] = time.monotonic() - started
        print(f"\ncorpus durations (s): { {k: round(v, 1) for k, v in r.durations.items()} }")
        yield r


CONTROL = Ending(outcomes=("Provisioned",), salesforce="Provisioned", whmcs_orders=1)
SINK_CONTROL = Ending(salesforce="Failed", sf_error="CORPUS_TEST: written by")


def decisions(outcomes: list[dict[str, Any]], where: str) -> list[dict[str, Any]]:
    """The outcomes deduplicated as the README tells analysts to: on (order_id, idem_key,
    event_uuid). A redelivery may repeat a decision, but only identically."""
    by_key: dict[tuple[Any, ...], dict[str, Any]] = {}
    for o in outcomes:
        key = (o["order_id"], o["idem_key"], o["event_uuid"])
        record = {k: v for k, v in o.items() if not k.startswith("_")}
        if key in by_key:
            assert by_key[key] == record, f"{where}: contradicting outcomes {by_key[key]} {o}"
        by_key[key] = record
    return list(by_key.values())


def check(found: Found, expect: Ending, where: str) -> None:
    outcomes = decisions(found.outcomes, where)
    statuses = sorted(o["status"] for o in outcomes)
    assert statuses == sorted(expect.outcomes), f"{where}: outcomes {outcomes}"
    for o in outcomes:
        if o["status"] != "Provisioned":  # every non-success carries its reason
            assert o["error_code"] and o["error_message"], f"{where}: no reason in {o}"
            if expect.code:
                assert o["error_code"] == expect.code, f"{where}: {o}"
            assert expect.text in o["error_message"], f"{where}: {o['error_message']!r}"
        elif expect.recovered is not None:
            assert o["recovered"] is expect.recovered, f"{where}: {o}"
    if expect.dead_letter:
        assert len(found.dead_letters) == 1, f"{where}: dead letters {found.dead_letters}"
        dl = found.dead_letters[0]
        assert dl["stage"] == expect.dead_letter, f"{where}: {dl}"
        assert dl["reason"] and dl["error_class"], f"{where}: dead letter without reason {dl}"
        if expect.dl_code:
            assert dl["error_code"] == expect.dl_code, f"{where}: {dl}"
        assert expect.dl_text in dl["reason"], f"{where}: {dl['reason'][:300]!r}"
    else:
        assert not found.dead_letters, f"{where}: unexpected dead letters {found.dead_letters}"
    if expect.salesforce:
        row = found.salesforce or {}
        assert row.get("Activation_Status__c") == expect.salesforce, f"{where}: {row}"
        error = row.get("Activation_Error__c") or ""
        assert expect.sf_error in error and len(error) <= 255, f"{where}: {row}"
    if expect.whmcs_orders is not None:
        assert found.whmcs_orders == expect.whmcs_orders, f"{where}: WHMCS orders"


def _param(case: Case) -> Any:
    marks = [pytest.mark.xfail(strict=True, reason=case.xfail)] if case.xfail else []
    return pytest.param(case, id=case.id, marks=marks)


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_bad_input_ends_with_a_reason(run: Run, case: Case) -> None:
    assert case.id not in run.errors, f"injection failed:\n{run.errors[case.id]}"
    subjects = run.subjects[case.id]
    assert subjects, "the case produced nothing to follow"
    for subject in subjects:
        check(run.found[subject], case.expect, f"{case.id} {subject}")


def test_good_controls_provisioned_exactly_once(run: Run) -> None:
    assert len(run.controls) == 9
    for subject in run.controls:
        check(run.found[subject], CONTROL, f"control {subject}")
    assert len(run.corpus.sink_controls) == 4  # phase A, and one per fault that reaches it
    for subject in run.corpus.sink_controls:
        check(run.found[subject], SINK_CONTROL, f"control {subject}")
    duplicates = run.corpus.whmcs.counters()["duplicates"]
    assert duplicates == {}, f"Salesforce Orders with more than one WHMCS order: {duplicates}"


def test_nothing_ends_unexplained(run: Run) -> None:
    """Every outcome and dead letter belongs to exactly one case or control: no bad input
    spilled over onto other records (e.g. a whole batch dead-lettered as WORKER_ERROR)."""
    claims: Counter[int] = Counter()
    for found in run.found.values():
        claims.update(id(x) for x in [*found.outcomes, *found.dead_letters, *found.inputs])
    stray = [o for o in run.outcomes if not claims[id(o)]]
    assert not stray, f"{len(stray)} outcomes no case explains: {stray[:3]}"
    stray_letters = [d for d in run.letters if not claims[id(d)]]
    assert not stray_letters, f"dead letters no case explains: {stray_letters[:3]}"
    shared = [x for x in [*run.outcomes, *run.letters] if claims[id(x)] > 1]
    assert not shared, f"records claimed by two subjects: {shared[:3]}"


def test_processes_kept_running(run: Run) -> None:
    """No crash, no restart: the processes that started are the ones still serving."""
    c = run.corpus
    for name, proc in c.pipeline.procs.items():
        assert proc.poll() is None, f"{name} exited with {proc.returncode}"
        assert proc.pid == c.started[name], f"{name} was restarted"
        assert c.pipeline.log(name).read_text().count("=== start") == 1
    status, worker = c.health("worker")
    assert status == 200, worker
    assert worker["event_errors"] == 0, f"an event raised: {worker['last_error']}"
    assert "batch failed" not in c.pipeline.log("worker").read_text()
    status, sink = c.health("sink")
    assert status == 200 and sink["status"] == "running", sink
    status, connector = c.health("connector")
    assert status == 200 and connector["state"] == "subscribed", connector
