"""The worker with faust's record drop made to happen on purpose — for the commit-gate tests.

faust-streaming sometimes drops records that aiokafka has already handed over (a partition
not active at that instant, a generation change mid-fetch, ...) and then commits past them as
a "gap" (see :mod:`streams.checkpoint`). That needs a rebalance at the wrong instant; this
module makes it deterministic: faust's ``Consumer.getmany`` skips, the first time it is
fetched, every requests record whose offset is ``DROP_MOD`` modulo ``DROP_EVERY`` — exactly
what faust's own drop looks like to the rest of the consumer. ``CHECKPOINT_LOG_CHECK=off``
runs without the checkpoint's check against the log (step 2 of
:meth:`streams.checkpoint.Checkpoint.commit`), ``DROP_REWIND=off`` without the seek back over
dropped records (:class:`streams.faust_seam.ConsumerSeam`); with neither, the events are lost.
Never used by the product.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from faust.transport import consumer as faust_consumer

from common.settings import KafkaSettings
from streams import checkpoint, faust_seam
from streams.__main__ import main

log = logging.getLogger("dropping_worker")


def _install_drop(topic: str, every: int, mod: int) -> None:
    original = faust_consumer.Consumer.getmany
    dropped: set[tuple[int, int]] = set()

    async def getmany(self: Any, timeout: float) -> Any:
        async for tp, message in original(self, timeout):
            key = (tp.partition, message.offset)
            if tp.topic == topic and message.offset % every == mod and key not in dropped:
                dropped.add(key)
                log.warning("DROPPED partition=%d offset=%d", *key)
                continue
            yield tp, message

    faust_consumer.Consumer.getmany = getmany  # type: ignore[method-assign]


if __name__ == "__main__":
    requests = KafkaSettings.load().requests
    _install_drop(requests, int(os.environ.get("DROP_EVERY", "7")),
                  int(os.environ.get("DROP_MOD", "3")))
    if os.environ.get("CHECKPOINT_LOG_CHECK") == "off":  # every record counts as finished
        checkpoint.safe_commit = lambda base, wanted, records, finished: wanted
    if os.environ.get("DROP_REWIND") == "off":
        faust_seam.ConsumerSeam._note_dropped = lambda self, yielded: None  # type: ignore
    sys.exit(main(sys.argv[1:] or ["worker"]))
