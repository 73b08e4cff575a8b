"""A test that starts a real broker carries the ``broker`` marker, so ``make test-fast``
("no broker") never starts a JVM (or downloads the Kafka jars) for it.

Found by an audit: decorators left above a test inserted between them and the 3-node
cluster test marked the new pure test ``broker`` and left the cluster test unmarked. The
rule read from the source: a test function that calls ``.start(`` on a ``LocalCluster`` or
``LocalBroker`` it made (or ``LocalBroker``/``LocalCluster(...).start``) and does not
replace ``start`` (its own or ``ClusterNode``'s) with ``monkeypatch.setattr`` must be marked ``broker`` itself or by its
module's ``pytestmark``.
"""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
BROKERS = ("LocalCluster", "LocalBroker")


def _marks(node: ast.AST) -> set[str]:
    """The ``pytest.mark.X`` names in a decorator list or a ``pytestmark`` value."""
    return {n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)
            and isinstance(n.value, ast.Attribute) and n.value.attr == "mark"}


def _module_marks(tree: ast.Module) -> set[str]:
    found: set[str] = set()
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "pytestmark" for t in stmt.targets):
            found |= _marks(stmt.value)
    return found


def _starts_a_broker(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    src = ast.unparse(fn)
    if not any(f"{name}(" in src for name in BROKERS) or ".start(" not in src:
        return False
    # its start (or its nodes', ClusterNode.start) replaced by a stand-in: no JVM
    return not any(f"setattr({name}, 'start'" in src or f'setattr({name}, "start"' in src
                   for name in (*BROKERS, "ClusterNode"))


def offenders(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    module = _module_marks(tree)
    bad = []
    for fn in tree.body:
        if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef) and \
                fn.name.startswith("test") and _starts_a_broker(fn):
            marks = module | set().union(*(_marks(d) for d in fn.decorator_list))
            if "broker" not in marks:
                bad.append(f"{path.relative_to(TESTS)}::{fn.name}")
    return bad


def test_every_test_that_starts_a_broker_is_marked_broker():
    bad = [name for path in sorted(TESTS.rglob("test_*.py")) for name in offenders(path)]
    assert bad == []


def test_the_rule_sees_an_unmarked_cluster_test(tmp_path):
    sample = tmp_path / "test_sample.py"
    sample.write_text(
        "import pytest\n"
        "@pytest.mark.broker\n"
        "def test_by_hand(monkeypatch):\n"
        "    monkeypatch.setattr(LocalCluster, 'start', lambda self: self)\n"
        "    LocalCluster('x').start()\n"
        "def test_real(tmp_path):\n"
        "    cluster = LocalCluster(tmp_path, nodes=3)\n"
        "    cluster.start(timeout=120)\n"
        "@pytest.mark.broker\n"
        "def test_marked(tmp_path):\n"
        "    LocalBroker(tmp_path).start()\n")
    global TESTS
    saved, TESTS = TESTS, tmp_path
    try:
        assert offenders(sample) == ["test_sample.py::test_real"]
    finally:
        TESTS = saved


MOCK_CLUSTER = "test.mock." + "num.brokers"  # split: this file is not an offender itself


def test_no_test_runs_against_librdkafkas_mock_cluster_instead_of_the_broker():
    """Tests run against the real broker, never a mock of Kafka: the sink's pause across a
    rebalance was checked on librdkafka's in-process mock cluster (which also could not
    answer the sink's default start, an offset by time), unmarked, in the fast suite."""
    bad = [str(path.relative_to(TESTS)) for path in sorted(TESTS.rglob("*.py"))
           if MOCK_CLUSTER in path.read_text()]
    assert bad == []
