"""Transactional writes to Kafka: events, dead letters and the position, all or nothing.

One confluent-kafka producer with a fixed ``transactional.id`` (derived from the topic
prefix, the connector name and the channel). ``start()`` calls ``init_transactions``, which
bumps the producer epoch: an older instance with the same id is **fenced** — its open
transaction is aborted and its next write fails with ``ProducerFencedError``. Two
connectors with one name therefore never both write.

A transaction open longer than ``transaction.timeout.ms`` (``CONNECTOR_TRANSACTION_TIMEOUT_S``;
the process was paused — SIGSTOP, a frozen VM, a long GC — or the broker was away) is
aborted by the broker's transaction coordinator, which also bumps the producer epoch. What
the paused producer sees when it resumes was measured on Kafka 3.9.1 with librdkafka 2.16:
``commit_transaction`` fails with the fatal ``_FENCED`` ("Failed to end transaction: Local:
This instance has been fenced by a newer instance"; the broker answered EndTxn with
``INVALID_PRODUCER_EPOCH``), a record produced after the pause fails the same way when
it is delivered ("ProduceRequest … failed: Broker: Producer attempted an operation with an
old epoch … (_FENCED)"), and a ``produce()`` once the producer is in that state raises a
bare ``_FATAL`` ("Unable to produce message: Local: Fatal error"), whose cause
:meth:`write` asks the producer for. The records written before the pause stay in the log, aborted: a
``read_committed`` reader never sees them. Exactly the same errors, with the same broker
code, arrive when a newer instance's ``init_transactions`` fenced us. The one thing that
tells them apart is the transaction's age: the coordinator can only have timed out a
transaction open longer than the timeout. So a fence of an older transaction is raised as
:class:`TransactionTimedOutError` (perhaps only our own timeout; a new producer's
``init_transactions`` decides, see ``connectors.source``), a fence of a younger one as
``ProducerFencedError`` (a newer instance, as far as the age can tell). A pause *between*
transactions changes nothing: no transaction was open, so none timed out, and the next one
commits.

The age cannot tell when the pause stopped this host's clocks too (a hypervisor freeze:
no local clock sees it), and a transaction the broker timed out reads as young. So, given
``owner`` (the connector's), every ``init_transactions`` of :meth:`start` and :meth:`reopen`
is followed by a transaction of its own committing the owner record
(:mod:`connectors.offsets`: this process's instance), before anything else is written and
before the caller reads the position. A young fence is a newer instance's only if that
instance's owner record came after ours: the connector reads the last one before it exits 3,
and a last record of its own means no other instance has claimed the stream since its last
init — its own transaction timed out while its clocks stood still (``connectors.source``).
No two instances take turns: a newer one commits its owner record right after its init, and
the older one, reading after its backoff, finds it and exits 3; had it read before that
record landed, its own new init fences the newer one (aborting that owner transaction, were
it still open), whose owner record is then not the last, and the newer one exits 3.

Any other fatal error is raised as :class:`ProducerFailedError`: librdkafka's fatal state is
final for the producer, and only a new one (:meth:`reopen`) goes on. A chaos run with two of
three broker nodes paused saw one: records timed out inside a transaction and the broker
answered the abort with ``INVALID_TXN_STATE`` (fatal), so an abort that fails fatally raises
it too.

Order of a batch (the commit-after-effect rule): produce every record of the batch, then
the position record, then ``commit_transaction``. Only after the commit returns does the
caller move its in-memory position and ask Salesforce for more. A failed commit is retried
when librdkafka says it is retriable (the call resumes where it was), otherwise the
transaction is aborted and the caller resubscribes from the last committed position (the
aborted records are invisible to ``read_committed`` readers). A commit still failing
retriably after its five attempts (each timed out: a broker away for minutes) is raised as
:class:`ProducerFailedError`, not aborted: librdkafka keeps a timed-out
``commit_transaction`` as the call in progress, so its abort is refused (``_CONFLICT``) and
no other call can end the transaction. A new producer's ``init_transactions`` settles it
(the coordinator completes or aborts it) and the position read after that says whether the
batch committed: nothing is lost or written twice.

An abort that fails is no different: the transaction is not settled, so it raises
:class:`ProducerFailedError` too (after retrying a retriable one, the call resuming, for
``timeout_s`` of running time). Kafka cut off for longer than ~85 s while events flow: the
records time out (the commit fails at the message timeout) and the abort times out as well,
leaving librdkafka in ABORTING_TRANSACTION. Given up and the producer kept, the next
``begin_transaction`` was refused (``_STATE``, and the connector exited 1), or, the cut
healed, the resumed abort met the broker's fence of the *old* transaction, judged by the
new write's age: exit 3, another instance blamed. So a fence is judged by the age of the
oldest transaction the producer has not settled, and a refused ``begin_transaction`` asks
for a new producer as well. That age is read on the lease clock (:mod:`common.clock`,
CLOCK_BOOTTIME), which counts a host suspend as the broker's timeout of the transaction
does: on ``time.monotonic`` a transaction the broker timed out while the host slept looked
young, and its fence ended the connector (exit 3, not restarted) blaming another instance.

Partitioner ``murmur2_random``: Java/aiokafka-compatible key hashing, so the Faust worker's
tables keyed by order id live in the same partition numbers as the requests. Do not change.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError as CKafkaError
from confluent_kafka import KafkaException, Producer

from common.clock import lease_clock
from common.connection import is_refusal, kafka_config, refusal_message
from common.errors import (
    ConfigError,
    KafkaAccessError,
    KafkaError,
    ProducerFailedError,
    ProducerFencedError,
    TransactionTimedOutError,
)
from common.kafka import RunningDeadline, check_stop
from common.settings import KafkaSettings

log = logging.getLogger(__name__)

Record = tuple[str, bytes, bytes, list[tuple[str, bytes]]]  # topic, key, value, headers

_FENCED_CODES = {CKafkaError._FENCED, CKafkaError.PRODUCER_FENCED,
                 CKafkaError.INVALID_PRODUCER_EPOCH}


def transactional_id(kafka: KafkaSettings, connector: str, channel: str) -> str:
    return f"{kafka.topic_prefix}{connector}|{channel.strip('/').replace('/', '.')}"


def producer_config(kafka: KafkaSettings, txn_id: str,
                    transaction_timeout_s: float = 60.0) -> dict[str, Any]:
    txn_ms = int(transaction_timeout_s * 1000)
    return kafka_config(kafka, **{
        "transactional.id": txn_id,
        "enable.idempotence": True,
        "acks": "all",
        "partitioner": "murmur2_random",
        "linger.ms": 5,
        "compression.type": "lz4",
        "transaction.timeout.ms": txn_ms,
        # librdkafka requires it <= the transaction timeout; a little less, so an undeliverable
        # record fails the transaction before the broker would abort it for its age.
        "message.timeout.ms": txn_ms - min(5_000, txn_ms // 10),
    })


def translate(exc: KafkaException, what: str, txn_id: str, *, age_s: float | None = None,
              timeout_s: float | None = None) -> KafkaError:
    """Our error for a librdkafka one. ``age_s``: how long the failed transaction was open."""
    err = exc.args[0] if exc.args else None
    if isinstance(err, CKafkaError):
        if err.code() in _FENCED_CODES:
            if age_s is not None and timeout_s is not None and age_s >= timeout_s:
                return TransactionTimedOutError(
                    f"fenced after the transaction was open {age_s:.1f}s, longer than its "
                    f"{timeout_s:g}s timeout: the broker aborted it, or another instance with "
                    f"transactional.id {txn_id!r} took over ({err.str()})",
                    age_s=age_s, timeout_s=timeout_s)
            return ProducerFencedError(
                f"fenced: another connector instance with transactional.id {txn_id!r} "
                f"took over ({err.str()})")
        if is_refusal(err):
            return KafkaAccessError(refusal_message(
                "the connector's principal", f"{what} (transactional.id {txn_id!r})", err))
        if err.fatal():
            return ProducerFailedError(f"{what}: the producer failed: {err.str()}")
        return KafkaError(f"{what}: {err.str()}",
                          retryable=err.retriable() or err.txn_requires_abort())
    return KafkaError(f"{what}: {exc}", retryable=False)


#: how long one transactional call (commit, abort, init) may take: a stop waits for the one
#: under way (ops.supervisor.stop_grace gives the connector that much more)
CALL_TIMEOUT_S = 30.0


class TransactionalWriter:
    def __init__(self, kafka: KafkaSettings, txn_id: str, *, timeout_s: float = CALL_TIMEOUT_S,
                 transaction_timeout_s: float = 60.0,
                 extra_config: dict[str, Any] | None = None,
                 owner: Callable[[], Record] | None = None) -> None:
        self.txn_id = txn_id
        self.timeout_s = timeout_s
        self.transaction_timeout_s = transaction_timeout_s
        self._config = {**producer_config(kafka, txn_id, transaction_timeout_s),
                        **(extra_config or {})}
        self._producer = Producer(self._config)
        self.transactions = 0
        # when the oldest transaction this producer has not settled (committed or aborted)
        # began: a fence is judged by its age, not by the age of the write that met it
        self._unsettled_since: float | None = None
        # the owner record, committed after every init_transactions (the module's doc)
        self._owner = owner

    def start(self) -> None:
        """init_transactions: fences any older instance with this transactional.id. Then,
        given ``owner``, its record is committed in a transaction of its own (:meth:`write`,
        raising as it does; a fence there is a newer instance's init, come in between).

        A retriable failure (librdkafka's "Timed out …, retry call to resume") is retried
        — the call resumes where it was — for ``timeout_s`` of this process's running time
        (:class:`common.kafka.RunningDeadline`: time it spent stopped does not count). A chaos
        run saw the connector stopped 30 s while it started, then the broker stopped; its
        one 30 s call timed out and the process exited."""
        deadline = RunningDeadline(self.timeout_s)
        while True:
            wait = deadline.attempt(1.0, 5.0)
            try:
                self._producer.init_transactions(wait)
                break
            except KafkaException as exc:
                code = exc.args[0].code() if exc.args and isinstance(exc.args[0], CKafkaError) \
                    else None
                if code == CKafkaError.INVALID_TRANSACTION_TIMEOUT:  # a setting: exit 64
                    raise ConfigError(
                        f"CONNECTOR_TRANSACTION_TIMEOUT_S: the broker refuses a transaction "
                        f"timeout of {self.transaction_timeout_s:g} s (above its "
                        f"transaction.max.timeout.ms, 900 s by default)") from exc
                error = translate(exc, "init_transactions", self.txn_id)
                if deadline.failed() or not error.retryable \
                        or isinstance(error, ProducerFailedError):  # final for this producer
                    raise error from exc
                log.info("init_transactions not done yet (%s); retrying", exc)
        if self._owner is not None:
            self.write([self._owner()])

    def reopen(self) -> None:
        """Replace a fenced producer (librdkafka's fatal state is final) and start the new one.

        Its ``init_transactions`` bumps the epoch again: a newer instance, if there is one, is
        fenced in turn, and the owner record committed after it names this instance again.
        Read the position only after this returns (see ``connectors.offsets``).
        """
        old, self._producer = self._producer, Producer(self._config)
        self._unsettled_since = None  # the old one's: settled by the new init_transactions
        old.purge(in_queue=True, in_flight=True, blocking=False)  # never sent: fenced
        self.start()

    def write(self, records: list[Record]) -> None:
        """Write ``records`` in one transaction.

        Raises KafkaError; ProducerFencedError when fenced, TransactionTimedOutError when
        fenced after the transaction outlived its timeout, ProducerFailedError when the
        producer failed otherwise, its commit's retries ran out or its abort did not get
        through (for the last three only :meth:`reopen` helps).

        A fence is judged by the age of the oldest transaction this producer has not
        settled, which is this one unless an earlier write left its transaction open (its
        abort failed and the producer was not replaced): a fence of that older transaction
        is the broker's timeout of it, not a newer instance.
        """
        p = self._producer
        started = lease_clock()  # counts a host suspend, as the broker's timeout does
        try:
            p.begin_transaction()
        except KafkaException as exc:
            raise self._begin_failed(exc) from exc
        if self._unsettled_since is None:
            self._unsettled_since = started
        producing = True
        try:
            for topic, key, value, headers in records:
                self._produce(topic, key, value, headers)
            producing = False
            self._commit()
        except KafkaException as exc:
            cause = self._real_cause(exc, producing=producing)
            err = translate(cause, "transaction", self.txn_id, age_s=self._unsettled_age(),
                            timeout_s=self.transaction_timeout_s)
            if not isinstance(err, ProducerFencedError | ProducerFailedError):
                failed = self._abort()
                if failed is not None:  # the abort did not end the transaction
                    raise failed from cause
            raise err from cause
        self._unsettled_since = None
        self.transactions += 1

    def _unsettled_age(self) -> float | None:
        """How long the oldest transaction not settled has been open (None: none is)."""
        since = self._unsettled_since
        return None if since is None else lease_clock() - since

    def _begin_failed(self, exc: KafkaException) -> KafkaError:
        """The error for a refused ``begin_transaction``: a fence (fatal state) judged by the
        age of a transaction left open, else :class:`ProducerFailedError`. librdkafka begins
        only in its READY state; ``_STATE`` ("Operation not valid in state …", neither
        retriable nor fatal) means an earlier transaction is not settled — say an abort still
        in progress (ABORTING_TRANSACTION). Translated as it is, the connector exited 1;
        retrying cannot help, and a commit or abort here could end that earlier
        transaction. A new producer's ``init_transactions`` settles it."""
        err = translate(exc, "begin_transaction", self.txn_id, age_s=self._unsettled_age(),
                        timeout_s=self.transaction_timeout_s)
        if isinstance(err, ProducerFencedError | ProducerFailedError | KafkaAccessError):
            return err
        return ProducerFailedError(
            f"{err}: an earlier transaction of this producer is not settled; a new "
            "producer's init_transactions settles it")

    def _real_cause(self, exc: KafkaException, *, producing: bool) -> KafkaException:
        """The error behind one of librdkafka's bare ones, else ``exc``.

        ``_FATAL`` from ``produce()`` (the producer failed earlier, e.g. fenced while the
        batch was being produced): the error that made it fatal, from the abort.

        ``_STATE`` ("Erroneous state") from ``produce()`` inside our open transaction: the
        transaction failed abortably meanwhile (a record timed out; the broker refused a
        topic — a missing ACL), and librdkafka refuses every later record. Translated as it
        is, it is neither retriable nor fatal, and the connector exited 1 ("fatal Kafka
        error"; a missing ACL not named, not exit 64). ``commit_transaction`` in that state
        fails at once with the transaction's own error, which is translated instead (the
        caller then aborts). Not for a ``_STATE`` from ``begin_transaction``: a commit there
        could end a transaction left open by an earlier write."""
        err = exc.args[0] if exc.args else None
        if not isinstance(err, CKafkaError):
            return exc
        if err.code() == CKafkaError._FATAL:
            try:
                self._producer.abort_transaction(self.timeout_s)  # a fatal producer: at once
            except KafkaException as cause:
                cause.__context__ = exc  # keep _FATAL in the chain (confluent-kafka does not)
                return cause
        elif err.code() == CKafkaError._STATE and producing:
            try:
                self._producer.commit_transaction(self.timeout_s)
            except KafkaException as cause:
                cause.__context__ = exc
                return cause
            # not seen: librdkafka commits nothing in that state. Should it, the records
            # before the refused one are committed without the batch's position (always its
            # last record), so the resubscribe from the last position writes them again
            log.error("produce() failed (%s), yet the transaction committed: the records "
                      "before it are written again after the resubscribe", err.str())
            return KafkaException(CKafkaError(
                CKafkaError._STATE, f"{err.str()} (the transaction then committed without "
                "the rest of the batch)", retriable=True))
        return exc

    def _produce(self, topic: str, key: bytes, value: bytes,
                 headers: list[tuple[str, bytes]]) -> None:
        while True:
            try:
                self._producer.produce(topic, value=value, key=key,
                                       headers=headers)  # type: ignore[arg-type] # list invariance
                return
            except BufferError:
                self._producer.poll(0.05)

    _COMMIT_ATTEMPTS = 5

    def _commit(self) -> None:
        """``commit_transaction``, its retriable failures retried (the call resumes).

        Retries run out → :class:`ProducerFailedError` (raised past :meth:`write`'s abort):
        the timed-out commit stays librdkafka's call in progress, so an abort fails with
        ``_CONFLICT`` and this producer can end the transaction no more. Only a new one's
        ``init_transactions`` (:meth:`reopen`) settles it. A home-made ``_TIMED_OUT`` here was
        neither retriable nor fatal: the connector exited 1."""
        last: KafkaException | None = None
        reason = ""
        for _attempt in range(self._COMMIT_ATTEMPTS):
            try:
                self._producer.commit_transaction(self.timeout_s)
                return
            except KafkaException as exc:
                err = exc.args[0] if exc.args else None
                if isinstance(err, CKafkaError) and err.retriable() and not err.fatal() \
                        and not err.txn_requires_abort():
                    log.warning("commit_transaction retriable error, retrying: %s", err.str())
                    last, reason = exc, err.str()
                    # stopping (SIGTERM): no more attempts of up to timeout_s each, past the
                    # supervisor's grace; the transaction is left open, and settled by the
                    # next start's init_transactions (or the broker's transaction timeout):
                    # its events are fetched again from the committed position
                    check_stop()
                    continue
                raise
        raise ProducerFailedError(
            f"commit_transaction: still failing after {self._COMMIT_ATTEMPTS} attempts "
            f"({reason}); it stays this producer's call in progress: a new producer's "
            "init_transactions settles the transaction") from last

    def _abort(self) -> KafkaError | None:
        """Abort the open transaction: None once aborted, else the error to raise — the
        transaction is not settled, and only a new producer (:meth:`reopen`) goes on.

        A retriable failure (librdkafka: "retriable on timeout"; the broker cut off, the
        producer left in ABORTING_TRANSACTION) is retried — the call resumes — for
        ``timeout_s`` of this process's running time (:class:`RunningDeadline`), then raised
        as :class:`ProducerFailedError`: given up and the producer kept, the next write's
        ``begin_transaction`` was refused (``_STATE``: exit 1). A fatal failure is raised as
        :meth:`write` raises it: a fence judged by the age of the transaction (records timed
        out in a transaction the broker then timed out: the abort's epoch bump fails with
        the fence's error — a chaos run, a node killed under it; or an abort resumed once a
        long cut healed), else :class:`ProducerFailedError` (a chaos run: records timed out
        while two broker nodes were paused, then the broker answered the abort with
        ``INVALID_TXN_STATE``, fatal). Any other failure leaves the transaction open too:
        :class:`ProducerFailedError`."""
        deadline = RunningDeadline(self.timeout_s)
        while True:
            wait = deadline.attempt(1.0, 5.0)
            began = time.monotonic()
            try:
                self._producer.abort_transaction(wait)
                self._unsettled_since = None
                return None
            except KafkaException as exc:
                log.warning("abort_transaction failed: %s", exc)
                error = translate(exc, "abort_transaction", self.txn_id,
                                  age_s=self._unsettled_age(),
                                  timeout_s=self.transaction_timeout_s)
                if isinstance(error, ProducerFencedError | ProducerFailedError
                              | KafkaAccessError):  # a refusal: named, exit 64
                    return error
                err = exc.args[0] if exc.args else None
                if not (isinstance(err, CKafkaError) and err.retriable()):
                    return ProducerFailedError(
                        f"{error}: the transaction is not settled; a new producer's "
                        "init_transactions settles it")
                if deadline.failed():
                    return ProducerFailedError(
                        f"{error}: still failing after {self.timeout_s:g}s; the transaction "
                        "is not settled: a new producer's init_transactions settles it")
                if time.monotonic() - began < wait / 2:  # answered at once: not in a loop
                    deadline.sleep(0.5)

    def close(self) -> None:
        try:
            self._producer.flush(5)
        except KafkaException as exc:  # a fenced producer raises its fatal error here
            log.warning("closing the producer: %s", exc)
