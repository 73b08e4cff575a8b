"""Both sandboxes for the worker's integration tests (one of each per module)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def whmcs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    from sandbox.whmcs.harness import whmcs_sandbox

    # seeded: the rate-based faults of the tests using it misbehave the same way each run
    with whmcs_sandbox(Path(tmp_path_factory.mktemp("whmcs")), accounts=200,
                       fault_seed=2026) as wh:
        yield wh


@pytest.fixture(scope="module")
def salesforce(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    from sandbox.salesforce.harness import running_sandbox

    with running_sandbox(Path(tmp_path_factory.mktemp("sf"))) as sf:
        yield sf


@pytest.fixture(autouse=True)
def _close_readers() -> Iterator[None]:
    """Close the topic readers a test left open (tests.streams.support.Reader)."""
    yield
    from tests.streams.support import Reader

    for reader in list(Reader.unclosed):
        reader.close()
