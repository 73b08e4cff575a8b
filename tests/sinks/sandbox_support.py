"""The sink as a subprocess against the Salesforce sandbox, and what Salesforce should hold."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from common.settings import KafkaSettings
from sinks.mapping import RecordKey, updates_for

REPO = Path(__file__).resolve().parents[2]


def sink_env(kafka: KafkaSettings, sf_env: dict[str, str], **extra: Any) -> dict[str, str]:
    env = dict(os.environ)
    env.update(sf_env)
    env.update({"KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
                "KAFKA_TOPIC_PREFIX": kafka.topic_prefix, "LOG_FORMAT": "TEXT",
                "SINK_HTTP_PORT": "0", "SINK_LINGER_S": "0.1", "SINK_RETRY_BACKOFF_S": "0.1",
                "SINK_LIMIT_BACKOFF_S": "0.5", "SINK_SESSION_TIMEOUT_MS": "6000",
                "SFPROV_ENV_FILE": os.devnull, "PYTHONPATH": str(REPO)})
    env.update({k: str(v) for k, v in extra.items()})
    return env


def start_sink(env: dict[str, str], log: Path, *args: str) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "sinks", "run", *args], cwd=REPO,
                                env=env, stdout=out, stderr=subprocess.STDOUT)


def expected_state(outcomes: list[dict[str, Any]]) -> dict[RecordKey, dict[str, Any]]:
    """What applying the outcomes one after another leaves on each record."""
    state: dict[RecordKey, dict[str, Any]] = {}
    for outcome in outcomes:
        for update in updates_for(outcome):
            state.setdefault(update.key, {}).update(update.fields)
    return state


def _same(want: Any, have: Any) -> bool:
    if want is None or have is None:
        return want is None and have is None
    if isinstance(want, int | float):
        return float(want) == float(have)
    if isinstance(want, str) and want.endswith("Z") and "T" in want:
        parse = lambda s: dt.datetime.fromisoformat(s.replace("Z", "+00:00")  # noqa: E731
                                                    .replace("+0000", "+00:00"))
        return parse(want) == parse(have)
    return want == have


def mismatches(sandbox: Any, state: dict[RecordKey, dict[str, Any]]) -> list[str]:
    """Records whose stored fields differ from ``state`` (read via the admin query)."""
    out = []
    for sobject in ("Order", "Opportunity"):
        ids = [k.record_id for k in state if k.sobject == sobject]
        fields = sorted({f for k, v in state.items() if k.sobject == sobject for f in v})
        for start in range(0, len(ids), 200):
            chunk = ids[start:start + 200]
            quoted = ",".join(f"'{i}'" for i in chunk)
            rows = sandbox.query(f"SELECT Id, {', '.join(fields)} FROM {sobject} "
                                 f"WHERE Id IN ({quoted})")["records"]
            by_id = {r["Id"]: r for r in rows}
            for record_id in chunk:
                row = by_id.get(record_id, {})
                for name, want in state[RecordKey(sobject, record_id)].items():
                    if not _same(want, row.get(name)):
                        out.append(f"{sobject} {record_id} {name}: want {want!r}, "
                                   f"have {row.get(name)!r}")
    return out
