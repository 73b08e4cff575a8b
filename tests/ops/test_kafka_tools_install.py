"""``ensure_tools`` while another process runs a wrapper or installs the same ones (the test
suite's two pytest-xdist processes do both): no run sees a half-written script. Rewriting
every wrapper in place each time emptied a script under a running shell — "Text file busy"
on either side, or a run that did nothing."""

from __future__ import annotations

import hashlib
import os
import subprocess
import threading
import time

from ops.kafka_tools import POM, bin_dir, ensure_tools, tools_dir


def _installed(state):
    """A state dir whose tool jars are already resolved (no Maven), and a ``java`` that
    says it ran."""
    jars = tools_dir(state)
    jars.mkdir(parents=True)
    (jars / "kafka-tools-3.9.1.jar").write_bytes(b"")
    (jars / ".pom-sha256").write_text(hashlib.sha256(POM.read_bytes()).hexdigest())
    fake = state / "fakebin"
    fake.mkdir()
    (fake / "java").write_text("#!/bin/sh\necho ran-java\n")
    os.chmod(fake / "java", 0o755)
    return {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}"}


def test_a_wrapper_runs_whole_while_the_tools_are_installed_again(tmp_path):
    env = _installed(tmp_path)
    wrapper = ensure_tools(tmp_path) / "kafka-topics"
    errors: list[BaseException] = []
    stop = threading.Event()

    def install_again() -> None:
        while not stop.is_set():
            try:
                ensure_tools(tmp_path)
            except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
                errors.append(exc)

    thread = threading.Thread(target=install_again)
    thread.start()
    runs, bad = 0, []
    try:
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            result = subprocess.run([str(wrapper), "--help"], capture_output=True, text=True,
                                    env=env)
            runs += 1
            if result.returncode != 0 or "ran-java" not in result.stdout:
                bad.append((result.returncode, result.stdout, result.stderr))
    finally:
        stop.set()
        thread.join()
    assert runs > 20
    assert not errors, errors[:3]
    assert not bad, f"{len(bad)} of {runs} runs: {bad[:3]}"


def test_an_unchanged_wrapper_is_left_alone_and_a_changed_one_replaced(tmp_path):
    _installed(tmp_path)
    out = ensure_tools(tmp_path)
    wrapper = out / "kafka-topics"
    before = wrapper.stat()
    ensure_tools(tmp_path)
    assert wrapper.stat().st_ino == before.st_ino and wrapper.stat().st_mtime_ns == \
        before.st_mtime_ns
    wrapper.write_text("#!/bin/sh\nexit 3\n")
    os.chmod(wrapper, 0o700)
    ensure_tools(tmp_path)
    assert "exec java" in wrapper.read_text()
    assert wrapper.stat().st_mode & 0o777 == 0o755
    assert not [p.name for p in bin_dir(tmp_path).iterdir() if p.name.startswith(".")], \
        "a temporary file left behind"
