"""Two ways a process's start-up went wrong, for the connector, the worker and the sink.

* A SIGTERM while the start-up waits for Kafka (topics, the group's access, the producer's
  ``init_transactions``, the stored position — each retried for 30–60 s) was kept by
  :class:`common.process.Startup` and never looked at: with the broker away (``make down``,
  ``ops.stack pause``) the process went on retrying past its grace, was SIGKILLed, and
  under compose/Kubernetes exited 1 — the README promises 0. Now the waits end within one
  attempt of the signal (:class:`common.kafka.Stopped`) and the process exits 0.
* A probe port another process holds was a traceback (``OSError: [Errno 98] Address
  already in use``) and exit 1, restarted every 30 s for ever. Now it is one line naming
  the setting and exit 64, which the supervisor does not restart.

Real processes, nothing listening at the Kafka address; for the later start-up steps the
topics' check (and the worker's group check) is replaced by one that passes at once.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import KafkaError as CKafkaError
from confluent_kafka import KafkaException

from common import kafka as k
from common.envparse import ROOT
from common.process import EXIT_CONFIG, EXIT_OK
from tests.streams.test_worker_late_signal import _env as _worker_env

SIGNAL_AFTER_S = 4.0  # the start-up is waiting for Kafka by then
STOPPED_WITHIN_S = 12.0  # of the signal: one attempt (≤ 10 s) and the exit

MAINS = {"connector": ("connectors.__main__", ["run"], "CONNECTOR"),
         "worker": ("streams.__main__", ["worker"], "WORKER"),
         "sink": ("sinks.__main__", ["run"], "SINK")}

# the process's main; with ``PASS_TOPICS`` the topics' check passes at once (and, with
# ``PASS_GROUP``, the worker's group check), so the start-up goes on to its next wait
RUN = textwrap.dedent("""
    import importlib, os, sys
    from types import SimpleNamespace
    import common.group_describe, common.kafka
    if os.environ.get("PASS_TOPICS"):
        common.kafka.ensure_topics = lambda *a, **k: common.kafka.EnsureReport()
    if os.environ.get("PASS_GROUP"):
        common.group_describe.check_group_access = lambda *a, **k: None
    sys.exit(importlib.import_module(sys.argv[1]).main(sys.argv[2:]))
""")


def _env(tmp_path: Path, bootstrap: str, **extra: str) -> dict[str, str]:
    """The worker's environment of tests/streams/test_worker_late_signal.py, made for the
    connector and the sink too: none of the three's settings inherited, logs in text."""
    return _worker_env(tmp_path, bootstrap,
                       drop=("KAFKA_", "WORKER_", "SF_", "WHMCS_", "CONNECTOR_", "SINK_",
                             "LOG_", "PASS_"),
                       **{"LOG_FORMAT": "TEXT", "CONNECTOR_HTTP_PORT": "0",
                          "SINK_HTTP_PORT": "0", **extra})


def _nobody_listens() -> str:
    """An address on this host where nothing listens (connections are refused)."""
    with socket.create_server(("127.0.0.1", 0)) as probe:
        return f"127.0.0.1:{probe.getsockname()[1]}"


def _popen(tmp_path: Path, process: str, env: dict[str, str], log: Path) -> subprocess.Popen:
    module, args, _ = MAINS[process]
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-c", RUN, module, *args], cwd=ROOT,
                                env=env, stdout=out, stderr=subprocess.STDOUT)


@pytest.mark.parametrize(("process", "waiting_on"), [
    ("connector", "topics"), ("connector", "producer"),
    ("worker", "topics"), ("worker", "group"),
    ("sink", "topics")])
def test_a_sigterm_while_start_up_waits_for_kafka_exits_0_promptly(tmp_path, process,
                                                                     waiting_on):
    passed = {"producer": {"PASS_TOPICS": "1"},  # init_transactions, then the position
              "group": {"PASS_TOPICS": "1"}}.get(waiting_on, {})
    log = tmp_path / f"{process}.log"
    proc = _popen(tmp_path, process, _env(tmp_path, _nobody_listens(), **passed), log)
    try:
        time.sleep(SIGNAL_AFTER_S)
        assert proc.poll() is None, f"exited {proc.returncode} early:\n{log.read_text()[-3000:]}"
        proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        try:
            code = proc.wait(STOPPED_WITHIN_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{process} still running {STOPPED_WITHIN_S:.0f} s after SIGTERM "
                        f"(waiting on {waiting_on}):\n{log.read_text()[-3000:]}")
        took = time.monotonic() - signalled
        text = log.read_text()
        assert code == EXIT_OK, f"exit {code} after {took:.1f} s:\n{text[-3000:]}"
        assert "Traceback" not in text, text[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("process", sorted(MAINS))
def test_a_probe_port_in_use_is_one_line_naming_it_and_exit_64(tmp_path, process):
    prefix = MAINS[process][2]
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        env = _env(tmp_path, _nobody_listens(), PASS_TOPICS="1", PASS_GROUP="1",
                   **{f"{prefix}_HTTP_PORT": str(port)})
        module, args, _ = MAINS[process]
        done = subprocess.run([sys.executable, "-c", RUN, module, *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120)
    output = done.stdout + done.stderr
    assert "Traceback" not in output, output[-3000:]
    assert done.returncode == EXIT_CONFIG, output[-3000:]
    named = [line for line in output.splitlines() if f"{prefix}_HTTP_PORT" in line]
    assert len(named) == 1, output[-3000:]
    assert named[0].startswith(f"configuration error: {prefix}_HTTP_PORT: 127.0.0.1:{port} "
                               "is already in use"), named


# -- the waits themselves ----------------------------------------------------------------

@pytest.fixture
def stop_asked() -> Iterator[None]:
    k.stop_waits()
    try:
        yield
    finally:
        k.stop_waits(False)


def _timed_out(wait: float) -> None:
    raise KafkaException(CKafkaError(CKafkaError._TIMED_OUT, "timed out"))


def test_a_stop_ends_the_retries_after_the_attempt_under_way(stop_asked):
    attempts: list[float] = []
    started = time.monotonic()
    with pytest.raises(k.Stopped):
        k.retry_until(k.RunningDeadline(30.0), lambda wait: attempts.append(wait) or
                      _timed_out(wait), doing="d", failure="f", refused=str)
    assert len(attempts) == 1 and time.monotonic() - started < 1.0
    # an attempt that answers is not affected
    assert k.retry_until(k.RunningDeadline(30.0), lambda wait: "answer", doing="d",
                         failure="f", refused=str) == "answer"


def test_a_stop_ends_a_wait_between_attempts(stop_asked):
    k.stop_waits(False)
    deadline = k.RunningDeadline(30.0)
    threading.Timer(0.3, k.stop_waits).start()
    started = time.monotonic()
    with pytest.raises(k.Stopped):
        deadline.sleep(5.0)
    assert time.monotonic() - started < 2.5  # about 0.5 s; not the 5 s sleep


class _NotController:
    """An admin client of a forming cluster: every create answers NOT_CONTROLLER; its
    metadata never shows a leader."""

    def __init__(self) -> None:
        self.creates = 0

    def create_topics(self, new: list, **kwargs: object) -> dict:
        from concurrent.futures import Future
        self.creates += 1
        out = {}
        for t in new:
            fut: Future = Future()
            fut.set_exception(KafkaException(CKafkaError(CKafkaError.NOT_CONTROLLER, "nc")))
            out[t.topic] = fut
        return out

    def list_topics(self, timeout: float = 0) -> object:
        import types
        return types.SimpleNamespace(topics={})


def test_a_stop_ends_topic_creation_within_one_attempt(stop_asked):
    """A SIGTERM while a forming cluster refused the creates was held for 4 attempts and
    their waits, then ended as a KafkaError (exit 1), not a stop (exit 0)."""
    admin = _NotController()
    started = time.monotonic()
    with pytest.raises(k.Stopped):
        k.create_topics(admin, [k.TopicSpec("t", 1, 1)], timeout=30)  # type: ignore[arg-type]
    assert admin.creates <= 1 and time.monotonic() - started < 1.0


def test_a_stop_ends_the_wait_for_new_topics_leaders(stop_asked):
    k.stop_waits(False)
    threading.Timer(0.3, k.stop_waits).start()
    started = time.monotonic()
    with pytest.raises(k.Stopped):
        k._until_led(_NotController(), ["t"], _NotController().list_topics(), 30.0)  # type: ignore[arg-type]
    assert time.monotonic() - started < 0.3 + 2 * k.STOP_CHECK_S + 1.0


def test_other_threads_are_not_stopped(stop_asked):
    seen: list[object] = []

    def wait() -> None:
        deadline = k.RunningDeadline(0.0)
        deadline.attempt(0.0, 0.0)
        deadline.sleep(0.01)
        seen.append(deadline.failed())
    thread = threading.Thread(target=wait)
    thread.start()
    thread.join(5)
    assert seen == [True]  # gave up at its deadline, as before: its owner stops it


def test_a_second_startup_in_one_process_does_not_start_stopped(tmp_path, monkeypatch,
                                                                stop_asked):
    """The stop is process-wide: a SIGTERM kept by one Startup (a test's, an embedding's)
    must not end the next Startup's waits for the brokers before they begin."""
    from common import process

    monkeypatch.setattr(process, "limit_malloc_arenas", lambda: False)
    monkeypatch.setenv("SFPROV_ENV_FILE", os.devnull)
    monkeypatch.setenv("SFPROV_STATE_DIR", str(tmp_path))
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        k.stop_waits(False)
        first = process.Startup("connector")
        first._on_signal(signal.SIGTERM, None)  # as the signal would
        with pytest.raises(k.Stopped):
            k.RunningDeadline(30.0).sleep(0.01)
        second = process.Startup("connector")
        assert not second.stopping
        attempts: list[float] = []

        def once_timed_out(wait: float) -> str:
            attempts.append(wait)
            if len(attempts) == 1:
                _timed_out(wait)
            return "answer"
        assert k.retry_until(k.RunningDeadline(30.0), once_timed_out, doing="d", failure="f",
                             refused=str) == "answer"
        assert len(attempts) == 2  # retried, not Stopped after the first
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
