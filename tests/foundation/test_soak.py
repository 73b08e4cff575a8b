"""bench.soak's verdict and plot: the growth the memory target judges, and a PNG whose
pipeline panel is on the pipeline's own scale."""

from __future__ import annotations

import itertools
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest

from bench.soak import growth, plot, status, thread_changes, verdict


def _samples(worker: list[float], sandbox: list[float],
             connector_threads: list[int] | None = None) -> list[dict[str, object]]:
    threads = connector_threads or [12] * len(worker)
    return [{"t_s": 10.0 * i, "orders": 50_000 * i, "connector": 89.0 + 4 * (t - threads[0]),
             "worker": w, "sink": 73.0, "salesforce_sandbox": s,
             "threads": {"connector": t, "worker": 20, "sink": 9}}
            for i, (w, s, t) in enumerate(zip(worker, sandbox, threads, strict=True))]


def test_growth_is_measured_from_the_first_sample_past_after_averaging_three_at_each_end(
) -> None:
    # before 100,000 Orders (samples 0 and 1) the worker warms up by 40 MB: not counted
    worker = [120.0, 160.0, 161.0, 162.0, 163.0, 170.0, 171.0, 172.0]
    samples = _samples(worker, [100.0 * (i + 1) for i in range(len(worker))])
    grown = growth(samples, after=100_000)
    head, tail = worker[2:5], worker[-3:]
    assert grown["worker"] == round(sum(tail) / 3 - sum(head) / 3, 1)  # 9.7, not 52
    assert grown["connector"] == 0.0 and grown["sink"] == 0.0
    assert grown["salesforce_sandbox"] > 100  # reported too (not judged: bench.soak.main)


def test_growth_needs_four_samples_past_after() -> None:
    assert growth(_samples([1.0, 2.0], [1.0, 2.0]), after=100_000) == {}
    # samples 0 and 1 are before 100,000 Orders; 3 after it: too few to measure
    assert growth(_samples([140.0, 145.0, 150.0, 170.0, 190.0], [1.0] * 5),
                  after=100_000) == {}


def test_a_short_run_that_grows_20_mb_a_sample_does_not_pass() -> None:
    """3 samples after --after (150, 170, 190 MB): the ends must not overlap (averaging
    all three at each end measured 0 MB) — too few samples is a failure, not a pass."""
    grown = growth(_samples([140.0, 145.0, 150.0, 170.0, 190.0], [1.0] * 5), after=100_000)
    code, line = verdict(grown, {"duplicates": 0, "missing": 0}, 100_000)
    assert code == 1
    assert "fewer than four samples after 100000 Orders" in line


@pytest.mark.parametrize(("after_samples", "measured"), [
    ([150.0, 170.0, 190.0, 210.0], 40.0),  # 2 at each end: 200 - 160
    ([150.0, 170.0, 190.0, 210.0, 230.0], 60.0),  # 2 at each end, the middle left out
    ([150.0, 170.0, 190.0, 210.0, 230.0, 250.0], 60.0),  # 3 at each end: 230 - 170
    ([150.0, 170.0, 190.0, 210.0, 230.0, 250.0, 270.0], 80.0)])
def test_the_two_ends_of_the_growth_never_share_a_sample(after_samples: list[float],
                                                          measured: float) -> None:
    worker = [140.0, 145.0, *after_samples]
    grown = growth(_samples(worker, [1.0] * len(worker)), after=100_000)
    assert grown["worker"] == measured
    assert verdict(grown, {"duplicates": 0, "missing": 0}, 100_000)[0] == 1


def test_the_plot_puts_the_pipeline_on_its_own_panel(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures: list[object] = []
    original = plt.subplots

    def keep(*args: object, **kwargs: object) -> object:
        made = original(*args, **kwargs)
        figures.append(made)
        return made

    monkeypatch.setattr(plt, "subplots", keep)
    samples = _samples([150.0, 160.0, 161.0, 162.0], [200.0, 1200.0, 2200.0, 3200.0])
    plot(samples, tmp_path / "soak.png", after=100_000)
    assert (tmp_path / "soak.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    _fig, (top, bottom) = figures[0]  # type: ignore[misc]
    assert {line.get_label() for line in top.get_lines()} >= {"connector", "worker", "sink"}
    assert "salesforce_sandbox" not in {line.get_label() for line in top.get_lines()}
    assert "salesforce_sandbox" in {line.get_label() for line in bottom.get_lines()}
    low, high = top.get_ylim()
    assert high < 1000  # the pipeline's scale, not the sandbox's 3,200 MB


def test_a_thread_count_change_is_reported_with_the_rss_around_it() -> None:
    samples = _samples([150.0] * 5, [1.0] * 5, connector_threads=[12, 12, 13, 13, 12])
    assert thread_changes(samples) == [
        {"orders": 100_000, "process": "connector", "threads": [12, 13],
         "rss_mb": [89.0, 93.0]},
        {"orders": 200_000, "process": "connector", "threads": [13, 12],
         "rss_mb": [93.0, 89.0]}]
    assert thread_changes(_samples([150.0] * 3, [1.0] * 3)) == []


def test_status_reads_this_process_and_nothing_for_one_that_is_gone() -> None:
    import os
    import threading

    rss, threads = status(os.getpid())
    assert rss is not None and rss > 1
    assert threads is not None and threads >= threading.active_count()
    assert status(None) == (None, None)
    assert status(2 ** 22 + 12345) == (None, None)  # above pid_max's default: no such pid


def test_the_verdict_needs_every_pipeline_process_measured_within_10_mb_and_no_duplicate(
) -> None:
    fine = {"connector": 4.3, "worker": -1.4, "sink": 0.3, "salesforce_sandbox": 3774.2}
    assert verdict(fine, {"duplicates": 0}, 100_000)[0] == 0
    assert "4.3 MB" in verdict(fine, {"duplicates": 0}, 100_000)[1]
    assert verdict({**fine, "worker": 10.1}, {"duplicates": 0}, 100_000)[0] == 1
    code, line = verdict(fine, {"duplicates": 2}, 100_000)
    assert code == 1 and "2 WHMCS orders duplicated" in line
    # Orders written back Failed (none is seeded to fail) settle quick: not a pass
    code, line = verdict(fine, {"duplicates": 0, "written_back": 1000, "created": 990},
                         100_000)
    assert code == 1 and "10 Orders written back without a WHMCS order (Failed)" in line
    assert verdict(fine, {"duplicates": 0, "written_back": 1000, "created": 1000},
                   100_000)[0] == 0
    # too short a run measures nothing: not a pass
    code, line = verdict({}, {"duplicates": 0}, 100_000)
    assert code == 1 and "no growth measured for connector, worker, sink" in line


# -- bench.soak.soak against a fake pipeline (also tests/foundation/test_bench_review_fixes.py)


class SoakSf:
    """bench.soak's Salesforce, faked: ``seed`` adds Orders to approve, ``approve`` hands out
    fresh Order ids for up to ``n`` of them. A test's subclass watches around
    ``super().approve``."""

    def __init__(self) -> None:
        self.unapproved = 0
        self.pool = (f"801{i:015d}" for i in itertools.count())

    def seed(self, accounts: int, orders: int, broken_every: int) -> None:
        self.unapproved += orders

    def approve(self, n: int) -> list[str]:
        k = min(n, self.unapproved)
        self.unapproved -= k
        return [next(self.pool) for _ in range(k)]


class SoakPipeline:
    """bench.soak's Pipeline, faked: a ``sf_class`` seeded with the first chunk, a WHMCS
    that counts nothing; a test's subclass says what ``wait_settled`` finds."""

    sf_class: type[SoakSf] = SoakSf

    def __init__(self, *args: object, **kwargs: int) -> None:
        self.sf = self.sf_class()
        self.sf.seed(0, kwargs["orders"], 0)
        self.whmcs = SimpleNamespace(counters=lambda: {})

    def __enter__(self) -> SoakPipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def wait_settled(self, ids: list[str], timeout: float,
                     poll: float) -> dict[str, dict[str, str]]:
        raise NotImplementedError


class SoakSampler:
    """bench.soak's Sampler, faked: it samples nothing."""

    def __init__(self, *args: object) -> None:
        self.t0 = 0.0
        self.samples: list[dict[str, Any]] = []
        self.halt = SimpleNamespace(set=lambda: None)

    def start(self) -> None:
        pass

    def join(self) -> None:
        pass


def fake_soak(monkeypatch: pytest.MonkeyPatch, pipeline: type[SoakPipeline],
              clock: list[float] | None = None) -> ModuleType:
    """bench.soak with ``pipeline`` and :class:`SoakSampler`; with ``clock``, its time is
    ``clock[0]`` seconds, which its sleeps move on."""
    import bench.soak as soak_module

    monkeypatch.setattr(soak_module, "Pipeline", pipeline)
    monkeypatch.setattr(soak_module, "Sampler", SoakSampler)
    if clock is not None:
        def sleep(s: float) -> None:
            clock[0] += s

        monkeypatch.setattr(soak_module, "time", SimpleNamespace(monotonic=lambda: clock[0],
                                                                 sleep=sleep))
    return soak_module


def test_an_order_that_never_settles_ends_the_soak_as_missing_and_fails_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An Order still unsettled when the wait times out was dropped, and once the seeded
    Orders ran out the loop approved nothing and waited for nothing, forever."""
    stuck: set[str] = set()
    approvals = itertools.count()

    class Sf(SoakSf):
        def approve(self, n: int) -> list[str]:
            assert next(approvals) < 20, "the soak is still approving after 20 rounds"
            ids = super().approve(n)
            if ids and not stuck:
                stuck.add(ids[0])  # one Order of the first chunk never settles
            return ids

    class P(SoakPipeline):
        sf_class = Sf

        def wait_settled(self, ids: list[str], timeout: float,
                         poll: float) -> dict[str, dict[str, str]]:
            return {oid: {"Activation_Status__c": "Activating" if oid in stuck
                          else "Provisioned"} for oid in ids}

    soak_module = fake_soak(monkeypatch, P)
    result = soak_module.soak(Path("unused"), orders=20, chunk=10, every_s=10, next_at=1.0)
    assert result["invariants"]["missing"] == 1
    assert result["invariants"]["missing_orders"] == sorted(stuck)
    assert result["orders"] == 9
    fine = {"connector": 1.0, "worker": 1.0, "sink": 1.0}
    code, line = verdict(fine, result["invariants"], 0)
    assert code == 1 and "1 Orders not written back" in line


def test_a_soak_whose_orders_all_end_failed_with_a_whmcs_order_each_fails(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An AcceptOrder refused for every Order: each ended Failed with a Pending WHMCS order,
    so written back = created, no duplicate — and the soak passed, its memory figures the
    failure path's."""
    class P(SoakPipeline):
        def __init__(self, *args: object, **kwargs: int) -> None:
            super().__init__(*args, **kwargs)
            self.made: list[str] = []
            self.whmcs = SimpleNamespace(counters=lambda: {
                "orders_by_marker": {oid: 1 for oid in self.made}})

        def wait_settled(self, ids: list[str], timeout: float,
                         poll: float) -> dict[str, dict[str, str]]:
            self.made += [oid for oid in ids if oid not in self.made]
            return {oid: {"Activation_Status__c": "Failed"} for oid in ids}

    soak_module = fake_soak(monkeypatch, P)
    result = soak_module.soak(Path("unused"), orders=20, chunk=10, every_s=10, next_at=1.0)
    assert result["invariants"]["written_back"] == result["invariants"]["created"] == 20
    assert result["invariants"]["failed"] == 20
    fine = {"connector": 1.0, "worker": 1.0, "sink": 1.0}
    code, line = verdict(fine, result["invariants"], 0)
    assert code == 1 and "20 Orders written back Failed" in line
