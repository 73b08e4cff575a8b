"""The connector, made to freeze inside one of its transactions — for the timeout tests.

``python -m tests.connectors.pausing_connector run ...`` is ``python -m connectors run ...``
except that the ``PAUSE_AT_BATCH``-th transaction that carries events is flushed (its records
are in the log, uncommitted) and then the process sends itself SIGSTOP right before
``commit_transaction``: every thread stops, as in a frozen VM or a long GC, at a known point
(a test cannot land an outside SIGSTOP inside a transaction that lasts milliseconds). The
test SIGCONTs it; from there on it is the real connector. It logs ``PAUSING in transaction``
first. Never used by the product.
"""

from __future__ import annotations

import logging
import os
import signal
import sys

from common.settings import KafkaSettings
from connectors import writer as writer_module
from connectors.__main__ import main

log = logging.getLogger("pausing_connector")


def _install_pause(requests_topic: str, at_batch: int) -> None:
    cls = writer_module.TransactionalWriter
    original_write, original_commit = cls.write, cls._commit
    state = {"batches": 0, "armed": False}

    def write(self: writer_module.TransactionalWriter, records: list[writer_module.Record]) -> None:
        if any(topic == requests_topic for topic, *_ in records):
            state["batches"] += 1
            state["armed"] = state["batches"] == at_batch
        original_write(self, records)

    def commit(self: writer_module.TransactionalWriter) -> None:
        if state["armed"]:
            state["armed"] = False
            self._producer.flush(30)
            log.warning("PAUSING in transaction %d (SIGSTOP to self)", state["batches"])
            os.kill(os.getpid(), signal.SIGSTOP)
            log.warning("RESUMED in transaction %d", state["batches"])
        original_commit(self)

    cls.write = write  # type: ignore[method-assign]
    cls._commit = commit  # type: ignore[method-assign]


if __name__ == "__main__":
    _install_pause(KafkaSettings.load().requests, int(os.environ.get("PAUSE_AT_BATCH", "2")))
    sys.exit(main(sys.argv[1:] or ["run"]))
