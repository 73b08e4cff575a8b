"""`make install` makes a virtualenv without pip again.

A half-made ``.venv`` (``python -m venv`` interrupted, or python3-venv missing: its python
there, pip not) passed the Makefile's Python check, and every target after it failed at
``pip install`` with "No module named pip" until the user removed it by hand. The real
Makefile runs on a copy in a temporary directory, with a stub project and no package index:
the project's own install fails there, after the virtualenv step this is about.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.skipif(shutil.which("make") is None, reason="needs make"),
    pytest.mark.skipif(importlib.util.find_spec("ensurepip") is None, reason="needs ensurepip"),
]


def make_install(checkout: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(checkout.parent / "home"),
           "PYTHON": sys.executable, "PIP_NO_INDEX": "1", "PIP_NO_CACHE_DIR": "1",
           "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    return subprocess.run(["make", "--no-print-directory", "install"], cwd=checkout, env=env,
                          capture_output=True, text=True, timeout=120)


def has_pip(checkout: Path) -> bool:
    return subprocess.run([str(checkout / ".venv" / "bin" / "python"), "-m", "pip", "--version"],
                          capture_output=True).returncode == 0


def test_a_virtualenv_without_pip_is_made_again_and_one_with_pip_kept(tmp_path):
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    shutil.copy(ROOT / "Makefile", checkout / "Makefile")
    (checkout / "pyproject.toml").write_text('[project]\nname = "stub"\nversion = "0"\n')
    (checkout / "requirements.lock").write_text("")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(checkout / ".venv")],
                   check=True)
    assert not has_pip(checkout)

    result = make_install(checkout)
    assert "No module named pip" not in result.stderr, result.stderr
    assert has_pip(checkout)

    kept = checkout / ".venv" / "kept"
    kept.write_text("")
    result = make_install(checkout)
    assert "No module named pip" not in result.stderr, result.stderr
    assert kept.exists(), "a virtualenv with pip was made again"
