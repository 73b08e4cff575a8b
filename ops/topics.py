"""``python -m ops.topics``: create the project's missing topics, report config drift.

Idempotent: existing topics are never changed; a drifted config is reported (exit 2) so an
operator decides. Exit 0 when everything matches the declaration in ``common.kafka``.
"""

from __future__ import annotations

import sys

from common.errors import PipelineError
from common.kafka import declared_topics, ensure_topics
from common.settings import KafkaSettings


def main() -> int:
    try:
        settings = KafkaSettings.load()
        report = ensure_topics(settings)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for spec in declared_topics(settings):
        state = "created" if spec.name in report.created else "exists"
        print(f"  {spec.name:<45} {spec.partitions:>2} partitions  {state:<8} {spec.purpose}")
    for line in report.drift:
        print(f"  drift: {line}")
    return 0 if report.ok else 2


if __name__ == "__main__":
    sys.exit(main())
