"""``SFPROV_STATE_DIR`` set in ``.env`` moves all local state: the stack's (broker data, logs,
sandbox databases), the Kafka jars' and the Makefile's, as it moves the worker's tables."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_state_dir_from_the_env_file_moves_every_part(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(f"SFPROV_STATE_DIR={tmp_path / 'state'}\n")
    env = {k: v for k, v in os.environ.items() if k != "SFPROV_STATE_DIR"}
    env.update(SFPROV_ENV_FILE=str(env_file), PYTHONPATH=str(ROOT))
    out = subprocess.run(
        [sys.executable, "-c", "import ops.stack, ops.kafka_local, common.settings as s; "
         "print(ops.stack.STATE, ops.kafka_local.DEFAULT_STATE, "
         "s.CommonSettings.load().state_dir)"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=True).stdout
    assert out.split() == [str(tmp_path / "state")] * 3

    (tmp_path / "Makefile").symlink_to(ROOT / "Makefile")  # make reads ./.env, as in ROOT
    printed = subprocess.run(["make", "-n", "logs"], cwd=tmp_path, capture_output=True,
                             text=True, timeout=60, env=env, check=True).stdout
    assert f"{tmp_path / 'state'}/logs" in printed
