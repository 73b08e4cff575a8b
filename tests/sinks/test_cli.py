"""``python -m sinks``: a bad setting exits 64 (EX_CONFIG, as every process) naming the variable, before touching Kafka."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.sinks.sandbox_support import REPO


def test_missing_salesforce_setting_exits_64_naming_it() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SF_", "SINK_"))}
    env.update({"SFPROV_ENV_FILE": os.devnull, "PYTHONPATH": str(REPO)})
    proc = subprocess.run([sys.executable, "-m", "sinks", "run", "--timeout", "1"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 64
    assert "SF_CLIENT_ID" in proc.stderr


def test_bad_batch_size_is_refused() -> None:
    env = dict(os.environ, SFPROV_ENV_FILE=os.devnull, PYTHONPATH=str(REPO),
               SINK_BATCH_SIZE="500")
    proc = subprocess.run([sys.executable, "-m", "sinks", "run"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 64 and "SINK_BATCH_SIZE" in proc.stderr
