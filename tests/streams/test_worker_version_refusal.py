"""Another aiokafka (or faust-streaming, mode-streaming) than the verified one is refused
before anything of the seam is imported: exit 64 and one line naming the version needed
(``common.process``: the supervisor does not restart it). The seam imports private names of
the libraries at module level; a release that renamed one (aiokafka's ``BatchBuilder``
here) made the import fail first, an ImportError and exit 1 — restarted for ever."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from common.envparse import ROOT
from common.process import EXIT_CONFIG
from tests.streams.test_worker_late_signal import _env

# streams.__main__.main, with the installed aiokafka made to look like a release that
# renamed a private name the seam imports (streams/faust_seam/writer.py)
OTHER_AIOKAFKA = textwrap.dedent("""
    import sys
    from importlib import metadata
    real = metadata.version
    metadata.version = lambda d: "0.15.0" if d == "aiokafka" else real(d)
    import aiokafka.producer.message_accumulator as accumulator
    del accumulator.BatchBuilder  # renamed upstream
    import streams.__main__ as worker_main
    from common.kafka import EnsureReport
    worker_main.ensure_topics = lambda *a, **k: EnsureReport()
    worker_main.check_group_access = lambda *a, **k: None
    sys.exit(worker_main.main(["worker"]))
""")


def test_another_aiokafka_is_refused_before_the_seam_is_imported(tmp_path):
    env = _env(tmp_path, "127.0.0.1:1", LOG_FORMAT="TEXT")
    done = subprocess.run([sys.executable, "-c", OTHER_AIOKAFKA], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert done.returncode == EXIT_CONFIG, "\n".join(lines[-20:])
    assert len(lines) == 1, lines
    assert "aiokafka 0.15.0 (needs 0.14.0)" in lines[0], lines
