"""`make clean` removes SFPROV_STATE_DIR exactly as Python reads it, and nothing else.

The Makefile takes the state path from Python (common.settings) and used it unquoted: with
``SFPROV_STATE_DIR=/mnt/c/Users/John Smith/sfprov`` `make clean` ran ``rm -rf
/mnt/c/Users/John Smith/sfprov`` (two other paths), and with ``~/sfprov`` (which Python
keeps literal: ``<checkout>/~/sfprov``) the shell removed ``$HOME/sfprov``. Each test runs
the real Makefile on a copy (with ``common/`` for its STATE line) in a temporary directory:
no virtualenv there, so the ``down`` prerequisite only says "nothing to stop".
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    co = tmp_path / "checkout"
    co.mkdir()
    shutil.copy(ROOT / "Makefile", co / "Makefile")
    shutil.copytree(ROOT / "common", co / "common",
                    ignore=shutil.ignore_patterns("__pycache__"))
    return co


def make(checkout: Path, state: str | None, *args: str,
         home: Path | None = None) -> subprocess.CompletedProcess[str]:
    home = home or checkout.parent / "home"
    home.mkdir(exist_ok=True)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "PYTHON": sys.executable}
    if state is not None:
        env["SFPROV_STATE_DIR"] = state
    return subprocess.run(["make", "--no-print-directory", "clean", *args], cwd=checkout,
                          env=env, capture_output=True, text=True, timeout=60)


def sentinel(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "sentinel").write_text("keep")
    return path / "sentinel"


def test_a_state_path_with_a_space_is_removed_as_one_path(checkout):
    tmp = checkout.parent
    first_word = sentinel(tmp / "a")          # /mnt/c/Users/John
    second_word = sentinel(checkout / "b")    # ./Smith/sfprov
    state = tmp / "a b"
    sentinel(state / "kafka")
    result = make(checkout, str(state))
    assert result.returncode == 0, result.stderr
    assert first_word.exists() and second_word.exists()
    assert not state.exists()


def test_a_tilde_stays_literal_as_python_reads_it(checkout):
    home = checkout.parent / "home"
    in_home = sentinel(home / "x")            # $HOME/x: not the state directory
    literal = checkout / "~" / "x"            # what common.settings uses for "~/x"
    sentinel(literal)
    result = make(checkout, "~/x", home=home)
    assert result.returncode == 0, result.stderr
    assert in_home.exists()
    assert not literal.exists()


def test_a_blank_state_path_is_the_default_as_python_reads_it(checkout):
    """``SFPROV_STATE_DIR="  "`` is unset for the processes (``.state``): `make` took it as
    the directory ``./  /`` and left the worker's tables in ``.state``."""
    blank_dir = sentinel(checkout / "  ")
    default = sentinel(checkout / ".state" / "kafka")
    result = make(checkout, "  ")
    assert result.returncode == 0, result.stderr
    assert blank_dir.exists()
    assert not default.exists()


@pytest.mark.parametrize("state", ["HOME", "/", "CHECKOUT", "EMPTY"])
def test_clean_refuses_paths_that_are_not_a_state_directory(checkout, state):
    home = checkout.parent / "home"
    kept = sentinel(home)
    kept_here = sentinel(checkout / "data")
    if state == "EMPTY":   # Python never yields an empty path; a `STATE=` override does
        result = make(checkout, None, "STATE=", home=home)
    else:
        # "/" through a link to it: the guard resolves links (cd -P), and should it ever
        # fail, `rm -rf -- LINK` removes the link, never the root (GNU rm's --preserve-root
        # was the only other guard; busybox rm has none)
        root = checkout.parent / "root"
        root.symlink_to("/")
        path = {"HOME": str(home), "/": str(root), "CHECKOUT": str(checkout)}[state]
        result = make(checkout, path, home=home)
    assert result.returncode != 0
    # an empty STATE (only an override gives one) stops at the check that Python read it
    assert ("refusing to remove" if state != "EMPTY" else "nothing done") in result.stderr
    assert kept.exists() and kept_here.exists()


@pytest.mark.parametrize("which", ["checkout's parent", "home's parent", "relative .."])
def test_clean_refuses_a_directory_that_holds_the_checkout_or_home(checkout, which):
    """``SFPROV_STATE_DIR=..`` (or ``~/work``) removed the checkout and all beside it: the
    guard compared only with the checkout and $HOME themselves (ops review)."""
    home = checkout.parent / "users" / "me"
    beside = sentinel(checkout.parent / "keep")
    mine = sentinel(home / "notes")
    path = {"checkout's parent": str(checkout.parent), "home's parent": str(home.parent),
            "relative ..": ".."}[which]
    result = make(checkout, path, home=home)
    assert result.returncode != 0
    assert "refusing to remove" in result.stderr
    assert beside.exists() and mine.exists() and (checkout / "Makefile").exists()


@pytest.mark.parametrize("target", ["clean", "logs", "promtool"])
def test_a_state_path_python_cannot_read_stops_the_target(checkout, target):
    """An unreadable SFPROV_ENV_FILE (or a Python too old to import the settings): the
    Makefile used ./.state without a word — `make clean` removed it and `make logs` followed
    files nothing writes — while the processes refuse the file (ops review)."""
    default = sentinel(checkout / ".state" / "kafka")
    home = checkout.parent / "home"
    home.mkdir(exist_ok=True)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "PYTHON": sys.executable,
           "SFPROV_ENV_FILE": str(checkout / "missing.env")}
    result = subprocess.run(["make", "--no-print-directory", target], cwd=checkout, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "missing.env" in result.stderr and "nothing done" in result.stderr
    assert default.exists()


def test_a_virtualenv_whose_python_is_gone_falls_back_to_python3(checkout):
    """A .venv/bin/python left dangling (Python upgraded under it): the Makefile read the
    state path with it, failed, and refused clean/logs (regression review)."""
    (checkout / ".venv" / "bin").mkdir(parents=True)
    (checkout / ".venv" / "bin" / "python").symlink_to("/nonexistent/python3.11")
    state = sentinel(checkout / "mystate" / "kafka")
    result = make(checkout, "mystate")
    assert result.returncode == 0, result.stderr
    assert not state.exists()
