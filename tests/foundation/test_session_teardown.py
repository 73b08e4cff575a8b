"""The session broker (tests/conftest.py) is stopped when pytest is told to stop: by SIGTERM (a
cancelled CI job, `timeout`), which killed pytest without its teardown and left the JVM (in
a session of its own) running, and during the broker's start, which was outside the
fixture's try/finally. Checked on a pytest run of the suite's conftest with a stand-in
broker, so no JVM is needed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

INNER = '''
import os
import time
from pathlib import Path

import ops.kafka_local as kafka_local

MARKS = Path(os.environ["SFPROV_TEST_MARKS"])


def mark(what):
    with MARKS.open("a") as out:
        out.write(what + "\\n")


class StandInBroker:
    def __init__(self, home, **kwargs):
        self.bootstrap = "127.0.0.1:1"

    def start(self, *, timeout):
        mark("starting")
        if os.environ["SFPROV_TEST_WHEN"] == "start":
            time.sleep(60)
        return self

    def stop(self):
        mark("stopped")


kafka_local.LocalBroker = StandInBroker


def test_runs_long(kafka_bootstrap):
    mark("running")
    time.sleep(60)
'''


@pytest.mark.parametrize("when,waits_for", [("start", "starting"), ("test", "running")])
def test_sigterm_stops_the_session_broker(tmp_path, when, waits_for):
    (tmp_path / "test_inner.py").write_text(INNER)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    marks = tmp_path / "marks"
    env = {k: v for k, v in os.environ.items()
           if k not in ("KAFKA_TEST_BOOTSTRAP", "SFPROV_TEST_DOCKER", "CI")}
    env.update(PYTHONPATH=str(ROOT), SFPROV_TEST_MARKS=str(marks), SFPROV_TEST_WHEN=when)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.conftest",
         "-c", str(tmp_path / "pytest.ini"), str(tmp_path / "test_inner.py")],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not (marks.exists() and waits_for in marks.read_text().split()):
            assert proc.poll() is None, proc.communicate()[0].decode()
            assert time.monotonic() < deadline, f"the inner run never got to {waits_for}"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=30)[0].decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert marks.read_text().split()[-1] == "stopped", output
    assert proc.returncode == pytest.ExitCode.INTERRUPTED, output
