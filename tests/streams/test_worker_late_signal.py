"""A SIGTERM/SIGINT that reaches the worker late in its start-up — after ``main``'s
``boot.stopping`` check, before faust (mode) installs its own handlers (the health server,
``ops.start``, ``faust.Worker(...)``, ``gc.collect()``/``gc.freeze()``) — stops it: exit 0
within seconds, before faust's app starts. It was kept by :class:`common.process.Startup`
and never acted on: the worker joined the group and called WHMCS until the supervisor's
SIGKILL after its grace, possibly mid-provision.

The real ``main``, faust worker and app (tests/streams/late_signal_worker.py); the "broker"
accepts connections and never answers, so a faust app that starts waits on it: a worker that
did not stop runs on, as it would with a broker.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from common.envparse import ROOT

STOPPED_WITHIN_S = 10.0  # of the signal; mode's own shutdown of the loop takes ~1-2 s


def _env(tmp_path: Path, bootstrap: str, *,
         drop: tuple[str, ...] = ("KAFKA_", "WORKER_", "SF_", "WHMCS_"),
         **extra: str) -> dict[str, str]:
    """A worker's environment: this one's without the variables starting with one of
    ``drop``, a fresh Salesforce key in ``tmp_path``, ``extra`` last. (Also the connector's
    and the sink's in tests/foundation/test_stop_during_start.py.)"""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = tmp_path / "sf.pem"
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update({
        "PYTHONPATH": str(ROOT), "SFPROV_ENV_FILE": os.devnull,
        "SFPROV_STATE_DIR": str(tmp_path / "state"), "LOG_LEVEL": "INFO",
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "WORKER_HTTP_PORT": "0", "WORKER_STORE": "memory://",
        "WHMCS_API_URL": "http://127.0.0.1:1/includes/api.php",
        "WHMCS_API_IDENTIFIER": "i", "WHMCS_API_SECRET": "s",
        "SF_LOGIN_URL": "https://127.0.0.1:1", "SF_CLIENT_ID": "c", "SF_USERNAME": "u",
        "SF_PRIVATE_KEY_PATH": str(pem)})
    env.update(extra)
    return env


def _wait_for(path: Path, needle: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if needle in path.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    pytest.fail(f"no {needle!r} (exit {proc.poll()}):\n{path.read_text()[-3000:]}")


@pytest.mark.parametrize(("signame", "loop"), [
    ("SIGTERM", "UVLOOP"), ("SIGTERM", "ASYNCIO"), ("SIGINT", "UVLOOP")])
def test_a_signal_late_in_start_up_stops_the_worker(tmp_path, signame, loop):
    log = tmp_path / "worker.log"
    silent = socket.create_server(("127.0.0.1", 0), backlog=128)  # connects, never answers
    env = _env(tmp_path, f"127.0.0.1:{silent.getsockname()[1]}", LATE_SIGNAL=signame,
               WORKER_EVENT_LOOP=loop)
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "tests.streams.late_signal_worker"],
                                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_for(log, f"LATE SIGNAL {signame}", proc, timeout=60)
        try:
            code = proc.wait(STOPPED_WITHIN_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running {STOPPED_WITHIN_S:.0f} s after {signame} "
                        f"(kept while starting, never acted on):\n{log.read_text()[-3000:]}")
        text = log.read_text()
        assert code == 0, text[-3000:]
        assert "APP STARTING" not in text, "faust's app started after the signal"
        assert "Traceback" not in text, text[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        silent.close()


def test_mode_takes_the_signals_over_in_the_workers_first_start():
    """The boundary faust_worker relies on: once faust's ``on_first_start`` has returned,
    SIGTERM and SIGINT are mode's (the loop's handlers), so nothing more is kept by
    ``Startup`` after faust_worker's look at it; a signal kept before stops the worker there
    (``should_stop``: mode's start then breaks off before the app)."""
    import asyncio
    import signal

    import faust

    from streams.__main__ import faust_worker

    class Boot:
        process = "worker"

        def __init__(self, *signalled: int) -> None:
            self.signalled = list(signalled)

        @property
        def stopping(self) -> bool:
            return bool(self.signalled)

    handled = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)
    for boot, stops in ((Boot(), False), (Boot(signal.SIGTERM), True)):
        before = {s: signal.getsignal(s) for s in handled}
        loop = asyncio.new_event_loop()
        try:
            app = faust.App("late-signal", autodiscover=False, web_enabled=False, loop=loop)
            runner = faust_worker(boot)(app, quiet=True, redirect_stdouts=False,
                                        override_logging=False, loop=loop)
            loop.run_until_complete(runner.on_first_start())
            for signum in (signal.SIGTERM, signal.SIGINT):
                assert signal.getsignal(signum) is not before[signum], signum
            assert runner.should_stop is stops
        finally:
            for signum in handled:
                loop.remove_signal_handler(signum)
                signal.signal(signum, before[signum])
            loop.close()
