"""Every benchmark and tool under ``bench/`` answers ``--help`` with its usage and starts
nothing: ``python -m bench.commit_gate --help`` took no options and started a broker and
wrote 50,000 records (the README lists it beside tools whose ``--help`` prints usage)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOOLS = sorted(p.stem for p in (ROOT / "bench").glob("*.py")
               if 'if __name__ == "__main__"' in p.read_text())


def test_the_tools_are_found():
    assert "commit_gate" in TOOLS and "chaos" in TOOLS


@pytest.mark.parametrize("tool", TOOLS)
def test_help_prints_usage_and_starts_nothing(tool, tmp_path):
    done = subprocess.run([sys.executable, "-m", f"bench.{tool}", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
                               "TMPDIR": str(tmp_path)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage:" in done.stdout
    assert not any(tmp_path.glob("sfprov-*")), "it started something"
