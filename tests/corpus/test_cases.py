"""The corpus's cases themselves (no broker: the run is in :mod:`tests.corpus.test_corpus`)."""

from __future__ import annotations

from tests.corpus.cases import CASES


def test_at_least_thirty_kinds() -> None:
    assert len({c.id for c in CASES}) == len(CASES) >= 30
