"""A connector frozen inside a transaction *with its clocks*, on the real broker.

A hypervisor freeze stops the guest's clocks too: on resuming, the transaction the broker
timed out meanwhile reads as young, which is what a newer instance's fence looks like. The
owner record (``connectors.offsets``) tells them apart: alone, the connector must take the
stream back (before it, exit 3 with no other instance, intake stopped until an operator
acted); fenced by a real newer instance, it must still exit 3.

``python -m tests.connectors.test_owner_frozen_clock run ...`` is the connector of
``tests.connectors.pausing_connector`` (it stops itself with SIGSTOP in its
``PAUSE_AT_BATCH``-th transaction that carries events, logging ``PAUSING in transaction``)
whose lease clock — what the writer dates a transaction on — does not advance while it is
stopped. Never used by the product.
"""

from __future__ import annotations

import logging
import os
import signal
import sys

import pytest

from common.settings import KafkaSettings
from connectors import writer as writer_module
from tests.conftest import open_transactions
from tests.connectors.conftest import read_requests, wait_until
from tests.connectors.test_integration import assert_exactly_once, sandbox_uuids
from tests.connectors.test_txn_timeout import PAUSING, stop_past_the_timeout, txn_topics

pytestmark = pytest.mark.broker

FROZEN = "tests.connectors.test_owner_frozen_clock"
#: no keepalive transactions: the only ones are the event batches (and owner records)
QUIET = {"SF_PUBSUB_KEEPALIVE_COMMIT_S": "3600"}

log = logging.getLogger("frozen_connector")


def test_a_connector_frozen_with_its_clocks_in_a_transaction_takes_the_stream_back(
        sf, connector, kafka_settings: KafkaSettings) -> None:
    kafka, boot = kafka_settings, kafka_settings.bootstrap_servers
    sf.seed(accounts=10, orders=60, broken_every=0)
    sf.approve(30)
    proc = connector(module=FROZEN, **PAUSING, **QUIET)
    stop_past_the_timeout(proc, kafka)
    sf.approve(30)
    wait_until(lambda: not open_transactions(boot, txn_topics(kafka)), 120,
               "the broker to abort the frozen connector's transaction")
    proc.proc.send_signal(signal.SIGCONT)
    try:
        wait_until(lambda: proc.proc.poll() is not None or len(read_requests(kafka)) >= 60,
                   120, "all 60 events committed")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; connector log:\n{proc.text()[-6000:]}") from None
    assert proc.proc.poll() is None, proc.text()[-3000:]   # no exit 3: no other instance
    text = proc.text()
    # the transaction read as young (its clock frozen), and its owner record was its own
    assert "yet the last owner record" in text and "producer re-initialised" in text, \
        text[-3000:]
    assert proc.metric("sfprov_connector_transaction_timeouts_total") == 1
    assert proc.terminate() == 0, proc.text()[-3000:]
    assert_exactly_once(read_requests(kafka), sandbox_uuids(sf), 60)


def test_a_connector_frozen_with_its_clocks_still_exits_3_for_a_newer_instance(
        sf, connector, kafka_settings: KafkaSettings) -> None:
    """A frozen (its clock too) inside a transaction; B starts meanwhile, fences A, commits
    its owner record and writes. A resumes: a young fence, the last owner record B's →
    exit 3; B goes on, every event exactly once."""
    kafka = kafka_settings
    sf.seed(accounts=10, orders=60, broken_every=0)
    sf.approve(30)
    a = connector(module=FROZEN, **PAUSING, **QUIET)
    stop_past_the_timeout(a, kafka)
    sf.approve(30)
    b = connector(**{k: v for k, v in PAUSING.items() if k != "PAUSE_AT_BATCH"}, **QUIET)
    wait_until(lambda: '"event written"' in b.text(), 60, "the newer instance writing")
    a.proc.send_signal(signal.SIGCONT)
    assert a.wait(90) == 3, a.text()[-3000:]
    assert "the last owner record" in a.text() and "FENCED" in a.text(), a.text()[-3000:]
    wait_until(lambda: len(read_requests(kafka)) >= 60, 120, "all 60 events committed")
    assert b.proc.poll() is None, b.text()[-3000:]
    assert "FENCED" not in b.text() and "transaction timed out" not in b.text()
    assert b.terminate() == 0, b.text()[-3000:]
    assert_exactly_once(read_requests(kafka), sandbox_uuids(sf), 60)


# -- the frozen connector process -------------------------------------------------------------

def _install_frozen_pause(requests_topic: str, at_batch: int) -> None:
    """pausing_connector's pause, with the writer's lease clock not advancing meanwhile."""
    from tests.connectors.pausing_connector import _arm_at

    cls = writer_module.TransactionalWriter
    original_commit = cls._commit
    state = _arm_at(requests_topic, at_batch)
    real_clock = writer_module.lease_clock
    stood_still = [0.0]  # seconds the process was stopped: its clock did not see them

    def frozen_clock() -> float:
        return real_clock() - stood_still[0]

    def commit(self: writer_module.TransactionalWriter) -> None:
        if state["armed"]:
            state["armed"] = False
            self._producer.flush(30)
            log.warning("PAUSING in transaction %d (SIGSTOP to self, its clock frozen)",
                        state["batches"])
            stopped_at = real_clock()
            os.kill(os.getpid(), signal.SIGSTOP)
            stood_still[0] += real_clock() - stopped_at
            log.warning("RESUMED in transaction %d", state["batches"])
        original_commit(self)

    writer_module.lease_clock = frozen_clock  # type: ignore[assignment]
    cls._commit = commit  # type: ignore[method-assign]


if __name__ == "__main__":
    from connectors.__main__ import main

    _install_frozen_pause(KafkaSettings.load().requests,
                          int(os.environ.get("PAUSE_AT_BATCH", "2")))
    sys.exit(main(sys.argv[1:] or ["run"]))
