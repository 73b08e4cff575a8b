"""The session broker (tests/conftest.py) is stopped when pytest is told to stop: by SIGTERM (a
cancelled CI job, `timeout`), which killed pytest without its teardown and left the JVM (in
a session of its own) running, and during the broker's start, which was outside the
fixture's try/finally. Checked on a pytest run of the suite's conftest with a stand-in
broker, so no JVM is needed."""

from __future__ import annotations

import contextlib
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
import subprocess
import time
from pathlib import Path

import ops.kafka_local as kafka_local

MARKS = Path(os.environ["SFPROV_TEST_MARKS"])


def mark(what):
    with MARKS.open("a") as out:
        out.write(what + "\\n")


class StandInBroker:
    """A process group of its own, as the JVM's (a ``sleep``)."""

    def __init__(self, home, **kwargs):
        self.bootstrap = "127.0.0.1:1"
        self.proc = None

    def start(self, *, timeout):
        mark("starting")
        if os.environ["SFPROV_TEST_WHEN"] == "start":
            time.sleep(60)
        self.proc = subprocess.Popen(["sleep", "600"], start_new_session=True)
        mark(f"pid={self.proc.pid}")
        mark(f"owner={os.getpid()}")
        return self

    def running_pid(self):
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def stop(self):
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait()
        mark("stopped")


kafka_local.LocalBroker = StandInBroker


def test_runs_long(kafka_bootstrap):
    mark("running")
    time.sleep(60)
'''


def _inner_run(tmp_path: Path, when: str, workers: list[str]) -> tuple[subprocess.Popen[bytes], Path]:
    """The inner pytest run (its marks file): ``workers`` ``["-n", "2"]`` runs it under
    pytest-xdist, as ``make test`` does."""
    (tmp_path / "test_inner.py").write_text(INNER)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    marks = tmp_path / "marks"
    env = {k: v for k, v in os.environ.items()  # (the outer run's xdist worker's too)
           if k not in ("KAFKA_TEST_BOOTSTRAP", "SFPROV_TEST_DOCKER", "CI",
                        "PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT")}
    env.update(PYTHONPATH=str(ROOT), SFPROV_TEST_MARKS=str(marks), SFPROV_TEST_WHEN=when)
    ignore_sigint = "sigint-ignored" in workers  # as in a background job (`cmd &`)
    workers = [w for w in workers if w != "sigint-ignored"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.conftest",
         "-c", str(tmp_path / "pytest.ini"), *workers, str(tmp_path / "test_inner.py")],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if ignore_sigint
        else None)
    return proc, marks


def _wait_for_mark(proc: subprocess.Popen[bytes], marks: Path, waits_for: str) -> list[str]:
    deadline = time.monotonic() + 60
    while not (marks.exists() and waits_for in marks.read_text().split()):
        assert proc.poll() is None, proc.communicate()[0].decode()
        assert time.monotonic() < deadline, f"the inner run never got to {waits_for}"
        time.sleep(0.05)
    return marks.read_text().split()


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


WORKERS = pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["serial", "xdist"])


@pytest.mark.parametrize("workers", [[], ["-n", "2"], ["-n", "2", "sigint-ignored"]],
                         ids=["serial", "xdist", "xdist-sigint-ignored"])
@pytest.mark.parametrize("when,waits_for", [("start", "starting"), ("test", "running")])
def test_sigterm_stops_the_session_broker(tmp_path, when, waits_for, workers):
    proc, marks = _inner_run(tmp_path, when, workers)
    try:
        _wait_for_mark(proc, marks, waits_for)
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=30)[0].decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert marks.read_text().split()[-1] == "stopped", output
    assert proc.returncode == pytest.ExitCode.INTERRUPTED, output


@WORKERS
def test_a_session_killed_without_its_teardown_leaves_no_broker(tmp_path, workers):
    """SIGKILL of the process that started the broker (pytest, or the xdist worker whose
    teardown the controller cut short): no teardown runs, and the broker's group — a
    session of its own — is stopped by the watcher (ops.owner_watch.stop_with_owner)."""
    proc, marks = _inner_run(tmp_path, "test", workers)
    broker = None
    try:
        seen = _wait_for_mark(proc, marks, "running")
        broker = int(next(m for m in seen if m.startswith("pid="))[4:])
        owner = int(next(m for m in seen if m.startswith("owner="))[6:])
        assert _running(broker)
        os.kill(owner, signal.SIGKILL)
        deadline = time.monotonic() + 15
        while _running(broker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _running(broker), "the broker outlived the session that started it"
        assert "stopped" not in marks.read_text().split(), "a teardown ran: not the case meant"
    finally:
        with contextlib.suppress(ProcessLookupError):
            if broker is not None:
                os.killpg(broker, signal.SIGKILL)
        proc.kill()  # the controller, when the owner was an xdist worker
        proc.wait()


def test_a_process_name_that_is_not_utf8_does_not_stop_the_hand_on():
    """The controller finds its processes in ``/proc``; a name of any bytes (here
    ``\\xff\\xfe``) anywhere on the box raised UnicodeDecodeError inside the SIGTERM
    handler, and no process was told."""
    from tests.conftest import _children

    code = ("import ctypes, time\n"
            "ctypes.CDLL(None).prctl(15, ctypes.c_char_p(b'\\xff\\xfe'), 0, 0, 0)\n"
            "print('named', flush=True)\n"
            "time.sleep(60)\n")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None and child.stdout.readline() == b"named\n"
        assert Path(f"/proc/{child.pid}/comm").read_bytes() == b"\xff\xfe\n"
        assert child.pid in _children()
    finally:
        child.kill()
        child.wait()
