"""common.metrics.GcMonitor: every collection is timed; long pauses are logged."""

from __future__ import annotations

import gc
import logging

import pytest
from prometheus_client import REGISTRY

from common import metrics


def pauses(generation: int) -> float:
    return REGISTRY.get_sample_value("sfprov_gc_pause_seconds_count",
                                     {"generation": str(generation)}) or 0.0


def test_collections_are_timed_and_long_pauses_logged(monkeypatch: pytest.MonkeyPatch,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    monitor = metrics.GcMonitor().install()
    try:
        before = pauses(2)
        monkeypatch.setattr(metrics, "GC_LOG_PAUSE_S", 0.0)  # every pause counts as long
        with caplog.at_level(logging.WARNING, logger="common.metrics"):
            gc.collect(2)
        assert pauses(2) == before + 1
        [record] = [r for r in caplog.records if "garbage collection" in r.getMessage()]
        assert "generation 2" in record.getMessage() and record.duration_ms >= 0
        monkeypatch.setattr(metrics, "GC_LOG_PAUSE_S", 60.0)
        caplog.clear()
        gc.collect(2)
        assert pauses(2) == before + 2 and not caplog.records  # short pauses: metric only
    finally:
        monitor.uninstall()
    gc.collect(2)
    assert pauses(2) == before + 2  # uninstalled
